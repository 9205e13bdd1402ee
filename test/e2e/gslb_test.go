package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/gslb"
)

// loopbackRange is what GSLB tests give flotilla server --gslb-allow-cidr:
// their health endpoints listen on loopback addresses, which the server
// probes only when a range allows them.
const loopbackRange = "127.0.0.0/8"

// entryPoint is a real HTTP health endpoint on one loopback address.
type entryPoint struct {
	addr string // ip:port
	srv  *http.Server
}

func startEntryPoint(t *testing.T, addr string) *entryPoint {
	t.Helper()
	return startEntryPointFor(t, addr, "shop.apps.example.com")
}

func startEntryPointFor(t *testing.T, addr, host string) *entryPoint {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &entryPoint{addr: ln.Addr().String(), srv: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Host != host {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "ok")
	})}}
	go func() { _ = e.srv.Serve(ln) }()
	t.Cleanup(func() { _ = e.srv.Close() })
	return e
}

// twoEntryPoints starts health endpoints for host on <prefix>.1 and
// <prefix>.2 (loopback addresses) on one port (a health check names one
// port), and returns them with the port.
func twoEntryPoints(t *testing.T, prefix, host string) (*entryPoint, *entryPoint, string) {
	t.Helper()
	for range 20 {
		a := startEntryPointFor(t, prefix+".1:0", host)
		_, port, _ := net.SplitHostPort(a.addr)
		ln, err := net.Listen("tcp", prefix+".2:"+port)
		if err != nil {
			_ = a.srv.Close()
			continue
		}
		ln.Close()
		return a, startEntryPointFor(t, prefix+".2:"+port, host), port
	}
	t.Fatalf("no port free on both %s.1 and %s.2", prefix, prefix)
	return nil, nil, ""
}

// checkedRecordSet is record set shop of workspace shop, publishing host
// with entry points <prefix>.1 (c1) and <prefix>.2 (c2), checked on port
// every 200 ms, out after 2 failures.
func checkedRecordSet(host, prefix, port string, ttl int) string {
	return fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: shop, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: %s
  ttl: %d
  entryPoints:
  - {cluster: c1, address: %s.1}
  - {cluster: c2, address: %s.2}
  healthCheck: {path: /healthz, port: %s, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2}
`, host, ttl, prefix, prefix, port)
}

// shopTenancy is organization acme, tenant fintech and its workspace shop,
// the start of the GSLB tests' intent.
const shopTenancy = `apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: fintech, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: shop, organization: acme, tenant: fintech}
spec:
  namespaceSelector: {names: ["*/shop"]}
---
`

// lookup asks the DNS server at addr for name's A records.
func lookup(addr, name string) ([]string, int, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return nil, 0, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out, r.Rcode, nil
}

var gslbIntent = shopTenancy + `apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: media, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: web, organization: acme, tenant: media}
spec:
  namespaceSelector: {names: ["*/web"]}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c2, organization: acme}
spec: {region: region-2}
---
apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: apps, organization: acme}
spec:
  zone: apps.example.com
  provider: BUILTIN
---
` + checkedRecordSet("shop.apps.example.com", "127.0.20", "PORT", 5)

// A hostname published from two clusters is answered by the built-in DNS
// server with both entry points; an entry point whose health endpoint dies
// leaves the answers within the check's detection time and comes back when
// it is healthy again. Bad GSLB intent is refused at apply time.
func TestTheBuiltInDNSAnswersWithHealthyEntryPoints(t *testing.T) {
	dir := t.TempDir()
	dnsAddr := freePort(t)
	s := startServer(t, dir, "--dns-listen", dnsAddr, "--gslb-allow-cidr", loopbackRange)
	c1, c2, port := twoEntryPoints(t, "127.0.20", "shop.apps.example.com")
	if r := s.flotilla(strings.ReplaceAll(gslbIntent, "PORT", port), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	both := []string{"127.0.20.1", "127.0.20.2"}
	answers := func(want []string) error {
		got, rcode, err := lookup(dnsAddr, "shop.apps.example.com")
		if err != nil {
			return err
		}
		if rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			return fmt.Errorf("answers %v (rcode %s), want %v", got, dns.RcodeToString[rcode], want)
		}
		return nil
	}
	eventually(t, 10*time.Second, "both entry points in the answers", func() error { return answers(both) })

	// Names outside the zones are refused; unknown names in a zone do not exist.
	if _, rcode, err := lookup(dnsAddr, "example.org"); err != nil || rcode != dns.RcodeRefused {
		t.Fatalf("a name outside every zone: rcode %s, %v", dns.RcodeToString[rcode], err)
	}
	if _, rcode, err := lookup(dnsAddr, "nope.apps.example.com"); err != nil || rcode != dns.RcodeNameError {
		t.Fatalf("an unpublished name in the zone: rcode %s, %v", dns.RcodeToString[rcode], err)
	}

	// c2's health endpoint dies: 2 failed probes 200 ms apart (each with a
	// 200 ms timeout) take it out; the bound leaves room for a loaded machine.
	_ = c2.srv.Close()
	killed := time.Now()
	eventually(t, 5*time.Second, "c2 out of the answers", func() error { return answers([]string{"127.0.20.1"}) })
	t.Logf("c2 left the answers %v after its health endpoint died", time.Since(killed).Round(10*time.Millisecond))
	// The record set's status shows each entry point's health.
	agg, rows := s.status("dnsrecordset", "shop")
	if agg != "FAILED" || rows["c2"].State != "Failed" || !strings.Contains(rows["c2"].Message, "127.0.20.2: out of the DNS answers") ||
		rows["c1"].State != "Applied" || !strings.Contains(rows["c1"].Message, "healthy") {
		t.Fatalf("status %s %+v", agg, rows)
	}
	c2 = startEntryPoint(t, c2.addr)
	eventually(t, 5*time.Second, "c2 back in the answers", func() error { return answers(both) })
	if agg, rows := s.status("dnsrecordset", "shop"); agg != "READY" || rows["c2"].State != "Applied" {
		t.Fatalf("status after c2 came back: %s %+v", agg, rows)
	}

	// Draining c2 takes it out of the answers although it is healthy; the
	// drain keeps the cluster's spec, shows in status and in the audit, and
	// undrain brings c2 back.
	out := s.must("cluster", "drain", "c2", "--wait", "--timeout", "30s")
	if !strings.Contains(out, "no DNS answer points at c2") {
		t.Fatalf("drain --wait:\n%s", out)
	}
	if err := answers([]string{"127.0.20.1"}); err != nil {
		t.Fatalf("after drain: %v", err)
	}
	if _, rows := s.status("dnsrecordset", "shop"); !strings.Contains(rows["c2"].Message, "drained (cluster c2)") {
		t.Fatalf("status after drain: %+v", rows)
	}
	if out := s.must("get", "cluster", "c2", "-o", "yaml"); !strings.Contains(out, "drained: true") || !strings.Contains(out, "region: region-2") {
		t.Fatalf("cluster after drain:\n%s", out)
	}
	s.must("cluster", "undrain", "c2")
	eventually(t, 5*time.Second, "c2 back after undrain", func() error { return answers(both) })
	if out := s.must("audit", "--since", "1h"); strings.Count(out, "organizations/acme/clusters/c2") < 3 || !strings.Contains(out, "drained") {
		t.Fatalf("the audit lacks the drain and the undrain:\n%s", out)
	}

	// When every entry point fails, the name still answers with all of them.
	_ = c1.srv.Close()
	_ = c2.srv.Close()
	eventually(t, 5*time.Second, "both entry points out (their status rows Failed)", func() error {
		if _, rows := s.status("dnsrecordset", "shop"); rows["c1"].State != "Failed" || rows["c2"].State != "Failed" {
			return fmt.Errorf("rows %+v", rows)
		}
		return nil
	})
	if err := answers(both); err != nil {
		t.Fatalf("with every entry point failing: %v", err)
	}

	// Bad input is refused with the field and the reason, and nothing is stored.
	bad := []struct{ name, doc, want string }{
		{"a TTL of 0", `hostname: a.apps.example.com
  ttl: 0
  entryPoints: [{cluster: c1, address: 127.0.20.1}]`, "spec.ttl: is 0 or missing"},
		{"a health check without a target", `hostname: b.apps.example.com
  ttl: 30
  entryPoints: [{cluster: c1, address: 127.0.20.1}]
  healthCheck: {interval: 2s}`, "spec.healthCheck: has no target"},
		{"a zone Flotilla may not manage", `hostname: shop.example.org
  ttl: 30
  entryPoints: [{cluster: c1, address: 127.0.20.1}]`, `"shop.example.org" is in no zone Flotilla may manage`},
	}
	for _, c := range bad {
		doc := "apiVersion: flotilla.io/v1alpha1\nkind: DNSRecordSet\nmetadata: {name: bad, organization: acme, tenant: fintech, workspace: shop}\nspec:\n  " + c.doc + "\n"
		if r := s.flotilla(doc, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Fatalf("%s: exit %d, stderr %q; want a refusal saying %q", c.name, r.code, r.stderr, c.want)
		}
	}
	// A weighted record set: each answer holds one address, 3:1 over a
	// bounded number of queries to the real server.
	weighted := "apiVersion: flotilla.io/v1alpha1\nkind: DNSRecordSet\nmetadata: {name: weighted, organization: acme, tenant: fintech, workspace: shop}\nspec:\n  hostname: w.apps.example.com\n  ttl: 5\n  entryPoints: [{cluster: c1, address: 127.0.20.1, weight: 3}, {cluster: c2, address: 127.0.20.2, weight: 1}]\n"
	if r := s.flotilla(weighted, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply weighted: %+v", r)
	}
	eventually(t, 10*time.Second, "the weighted name answers", func() error {
		_, rcode, err := lookup(dnsAddr, "w.apps.example.com")
		if err == nil && rcode != dns.RcodeSuccess {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[rcode])
		}
		return err
	})
	counts := map[string]int{}
	for range 400 {
		got, _, err := lookup(dnsAddr, "w.apps.example.com")
		if err != nil || len(got) != 1 {
			t.Fatalf("a weighted answer: %v %v", got, err)
		}
		counts[got[0]]++
	}
	if counts["127.0.20.1"] < 240 || counts["127.0.20.1"] > 360 || counts["127.0.20.1"]+counts["127.0.20.2"] != 400 {
		t.Fatalf("weighted answers %v, want about 300:100", counts)
	}
	if r := s.flotilla(strings.Replace(weighted, "weight: 1}", "weight: 256}", 1), "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "spec.entryPoints[1].weight: 256 is out of range") {
		t.Fatalf("weight 256: %+v", r)
	}

	claimed := "apiVersion: flotilla.io/v1alpha1\nkind: DNSRecordSet\nmetadata: {name: mine, organization: acme, tenant: media, workspace: web}\nspec:\n  hostname: shop.apps.example.com\n  ttl: 30\n  entryPoints: [{cluster: c1, address: 127.0.20.9}]\n"
	if r := s.flotilla(claimed, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "is already published by another tenant's record set") || strings.Contains(r.stderr, "fintech") {
		t.Fatalf("a hostname claimed by a second tenant: %+v", r)
	}
	if out := s.must("get", "dnsrecordsets", "--org", "acme"); strings.Contains(out, "bad") || strings.Contains(out, "mine") {
		t.Fatalf("a refused record set was stored:\n%s", out)
	}

	// The health changes are in the metrics.
	resp, err := s.authGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `flotilla_gslb_health_changes_total{address="127.0.20.2",healthy="false",record="organizations/acme/tenants/fintech/workspaces/shop/dnsrecordsets/shop"}`) {
		t.Fatalf("metrics lack c2's health change:\n%s", grepLines(string(body), "flotilla_gslb"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// installCRD creates the CRD in file (under bin/) in the cluster unless it
// is there, and waits until it is served.
func (c *kcluster) installCRD(t *testing.T, file string, gvr schema.GroupVersionResource) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "bin", file))
	if err != nil {
		t.Fatalf("%v (make test builds it)", err)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := c.dyn.Resource(crds).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, gvr.Resource+" served", func() error {
		_, err := c.dyn.Resource(gvr).Namespace("default").List(context.Background(), metav1.ListOptions{})
		return err
	})
}

// EXTERNAL_DNS: the server keeps one DNSEndpoint per hostname in the chosen
// cluster (a real API server holding external-dns's CRD), with the healthy
// entry points as targets, deletes it with the record set, and leaves a
// DNSEndpoint that is not its own alone.
func TestExternalDNSEndpointsFollowTheHealthChecks(t *testing.T) {
	c := clusters(t)[0]
	c.installCRD(t, "externaldns-crd.yaml", gslb.DNSEndpointGVR)
	c.reset(t, "external-dns")
	ctx := context.Background()
	eps := c.dyn.Resource(gslb.DNSEndpointGVR).Namespace("external-dns")
	_ = eps.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	theirs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
		"metadata": map[string]any{"name": gslb.EndpointName("other.apps.example.io."), "namespace": "external-dns"},
		"spec":     map[string]any{"endpoints": []any{map[string]any{"dnsName": "other.apps.example.io", "recordType": "A", "targets": []any{"127.0.0.99"}}}},
	}}
	made, err := eps.Create(ctx, theirs, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, t.TempDir(), "--dns-kubeconfig", "dns="+c.kubeconfig, "--gslb-allow-cidr", loopbackRange)
	_, c2, port := twoEntryPoints(t, "127.0.23", "shop.apps.example.io")
	intent := shopTenancy + `apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: apps, organization: acme}
spec:
  zone: apps.example.io
  provider: EXTERNAL_DNS
  externalDns: {kubeconfig: dns, namespace: external-dns}
---
` + checkedRecordSet("shop.apps.example.io", "127.0.23", port, 30) + `---
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: other, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: other.apps.example.io
  ttl: 30
  entryPoints: [{cluster: c1, address: 127.0.23.1}]
`
	if r := s.flotilla(intent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	targets := func(want ...string) error {
		o, err := eps.Get(ctx, gslb.EndpointName("shop.apps.example.io."), metav1.GetOptions{})
		if err != nil {
			return err
		}
		list, _, _ := unstructured.NestedSlice(o.Object, "spec", "endpoints")
		if len(list) != 1 {
			return fmt.Errorf("endpoints %v", list)
		}
		ep := list[0].(map[string]any)
		got := fmt.Sprint(ep["targets"])
		if ep["dnsName"] != "shop.apps.example.io" || ep["recordType"] != "A" || fmt.Sprint(ep["recordTTL"]) != "30" || got != fmt.Sprint(want) {
			return fmt.Errorf("endpoint %v, want targets %v", ep, want)
		}
		if o.GetLabels()["app.kubernetes.io/managed-by"] != "flotilla" {
			return fmt.Errorf("labels %v", o.GetLabels())
		}
		return nil
	}
	eventually(t, 20*time.Second, "the DNSEndpoint with both entry points", func() error { return targets("127.0.23.1", "127.0.23.2") })
	_ = c2.srv.Close()
	eventually(t, 20*time.Second, "c2 out of the DNSEndpoint", func() error { return targets("127.0.23.1") })
	c2 = startEntryPointFor(t, c2.addr, "shop.apps.example.io")
	eventually(t, 20*time.Second, "c2 back in the DNSEndpoint", func() error { return targets("127.0.23.1", "127.0.23.2") })

	// Someone else's DNSEndpoint for other stays as it was; the status says why.
	eventually(t, 20*time.Second, "the conflict in other's status", func() error {
		_, rows := s.status("dnsrecordset", "other")
		if row := rows["external-dns dns/external-dns"]; row.State != "Failed" || !strings.Contains(row.Message, "not Flotilla's") {
			return fmt.Errorf("rows %+v", rows)
		}
		return nil
	})
	if got, err := eps.Get(ctx, made.GetName(), metav1.GetOptions{}); err != nil || got.GetResourceVersion() != made.GetResourceVersion() {
		t.Fatalf("the DNSEndpoint that is not Flotilla's was touched: %v", err)
	}
	s.must("delete", "dnsrecordset", "shop", "--org", "acme")
	eventually(t, 20*time.Second, "shop's DNSEndpoint deleted", func() error {
		if _, err := eps.Get(ctx, gslb.EndpointName("shop.apps.example.io."), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
}

// orgIntent is organization org with tenant t and workspace w, a BUILTIN
// DNSZone for zone and a record set publishing host at address (no
// health check).
func orgIntent(org, zone, host, address string) string {
	return fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: %[1]s}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: t, organization: %[1]s}
---
apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: w, organization: %[1]s, tenant: t}
spec:
  namespaceSelector: {names: ["*/%[1]s-web"]}
---
apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: example, organization: %[1]s}
spec:
  zone: %[2]s
  provider: BUILTIN
---
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: shop, organization: %[1]s, tenant: t, workspace: w}
spec:
  hostname: %[3]s
  ttl: 5
  entryPoints: [{cluster: c1, address: %[4]s}]
`, org, zone, host, address)
}

// Organization acme publishes shop.example.com; organization zzz (whose
// name sorts after acme's) tries to take example.com, a zone inside it and
// the hostname itself. Each apply is refused without naming acme, nothing
// of it is stored, and the built-in DNS server keeps answering with
// acme's address.
func TestASecondOrganizationCannotTakeAnotherOnesHostname(t *testing.T) {
	dnsAddr := freePort(t)
	s := startServer(t, t.TempDir(), "--dns-listen", dnsAddr)
	if r := s.flotilla(orgIntent("acme", "example.com", "shop.example.com", "127.0.30.1"), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply acme: %+v", r)
	}
	answersAcme := func() error {
		got, rcode, err := lookup(dnsAddr, "shop.example.com")
		if err == nil && (rcode != dns.RcodeSuccess || !slices.Equal(got, []string{"127.0.30.1"})) {
			err = fmt.Errorf("answers %v (rcode %s), want acme's [127.0.30.1]", got, dns.RcodeToString[rcode])
		}
		return err
	}
	eventually(t, 10*time.Second, "acme's answer", answersAcme)
	for _, tc := range []struct{ zone, host, want string }{
		{"example.com", "shop.example.com", "spec.zone: example.com is already managed by another organization"},
		{"Example.COM.", "shop.example.com", "spec.zone: example.com is already managed by another organization"},
		{"shop.example.com", "shop.example.com", "spec.zone: shop.example.com lies inside a zone another organization manages"},
		{"com", "shop.example.com", "spec.zone: com contains a zone another organization manages"},
	} {
		r := s.flotilla(orgIntent("zzz", tc.zone, tc.host, "127.0.30.2"), "apply", "-f", "-")
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "acme") {
			t.Fatalf("zzz's zone %s: exit %d, stderr %q; want a refusal saying %q and not naming acme", tc.zone, r.code, r.stderr, tc.want)
		}
	}
	// zzz's own zone works, and is all zzz has; the hostname in acme's
	// zone is still not its to publish.
	if r := s.flotilla(orgIntent("zzz", "example.org", "shop.example.org", "127.0.30.2"), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply zzz's own zone: %+v", r)
	}
	if out := s.must("get", "dnszones", "--org", "zzz", "-o", "yaml"); strings.Count(out, "zone: ") != 1 || !strings.Contains(out, "zone: example.org") {
		t.Fatalf("zzz's zones:\n%s", out)
	}
	steal := "apiVersion: flotilla.io/v1alpha1\nkind: DNSRecordSet\nmetadata: {name: steal, organization: zzz, tenant: t, workspace: w}\nspec:\n  hostname: shop.example.com\n  ttl: 5\n  entryPoints: [{cluster: c1, address: 127.0.30.2}]\n"
	if r := s.flotilla(steal, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, `spec.hostname: "shop.example.com" is in no zone Flotilla may manage for organization organizations/zzz`) {
		t.Fatalf("zzz's record set for acme's hostname: %+v", r)
	}
	eventually(t, 10*time.Second, "zzz's own name answered", func() error {
		got, _, err := lookup(dnsAddr, "shop.example.org")
		if err == nil && !slices.Equal(got, []string{"127.0.30.2"}) {
			err = fmt.Errorf("answers %v", got)
		}
		return err
	})
	if err := answersAcme(); err != nil {
		t.Fatal(err)
	}
}

// A health check of an entry point on 127.0.0.1 or 169.254.169.254 (cloud
// metadata) is refused at apply time by a server without
// --gslb-allow-cidr; a server with --gslb-allow-cidr 127.0.0.0/8 accepts
// the loopback one and probes it (the endpoint sees the request, and the
// status says healthy), and still refuses 169.254.169.254.
func TestHealthChecksReachLoopbackOnlyWhenTheServerAllowsIt(t *testing.T) {
	var probes atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host == "shop.apps.example.com" {
			probes.Add(1)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	zone := shopTenancy + `apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: apps, organization: acme}
spec:
  zone: apps.example.com
  provider: BUILTIN
`
	intent := func(address string) string {
		return `apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: shop, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: shop.apps.example.com
  ttl: 5
  entryPoints: [{cluster: c1, address: ` + address + `}]
  healthCheck: {path: /healthz, port: ` + port + `, interval: 200ms}
`
	}
	refused := func(s *server, address, class string) {
		t.Helper()
		want := "spec.entryPoints[0].address: " + address + " is " + class + ", where the server sends no health check"
		if r := s.flotilla(intent(address), "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "--gslb-allow-cidr") {
			t.Fatalf("%s: exit %d, stderr %q; want a refusal saying %q", address, r.code, r.stderr, want)
		}
		if out := s.must("get", "dnsrecordsets", "--org", "acme"); strings.Contains(out, "shop") {
			t.Fatalf("a refused record set was stored:\n%s", out)
		}
	}
	start := func(args ...string) *server {
		t.Helper()
		s := startServer(t, t.TempDir(), append([]string{"--dns-listen", freePort(t)}, args...)...)
		if r := s.flotilla(zone, "apply", "-f", "-"); r.code != 0 {
			t.Fatalf("apply the tenancy and zone: %+v", r)
		}
		return s
	}
	plain := start()
	refused(plain, "127.0.0.1", "a loopback address")
	refused(plain, "169.254.169.254", "a link-local address")
	if n := probes.Load(); n != 0 {
		t.Fatalf("the endpoint got %d probes from a server that refused the record set", n)
	}

	allowing := start("--gslb-allow-cidr", loopbackRange)
	refused(allowing, "169.254.169.254", "a link-local address")
	if r := allowing.flotilla(intent("127.0.0.1"), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply with 127.0.0.0/8 allowed: %+v", r)
	}
	eventually(t, 10*time.Second, "127.0.0.1 probed and healthy", func() error {
		if _, rows := allowing.status("dnsrecordset", "shop"); probes.Load() == 0 || rows["c1"].State != "Applied" || !strings.Contains(rows["c1"].Message, "127.0.0.1: healthy (probed") {
			return fmt.Errorf("%d probes, rows %+v", probes.Load(), rows)
		}
		return nil
	})
}
