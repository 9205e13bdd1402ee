package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

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

// twoEntryPoints starts health endpoints on 127.0.20.1 and 127.0.20.2 on
// one port (a health check names one port).
func twoEntryPoints(t *testing.T) (*entryPoint, *entryPoint, string) {
	t.Helper()
	for range 20 {
		a := startEntryPoint(t, "127.0.20.1:0")
		_, port, _ := net.SplitHostPort(a.addr)
		ln, err := net.Listen("tcp", "127.0.20.2:"+port)
		if err != nil {
			_ = a.srv.Close()
			continue
		}
		ln.Close()
		return a, startEntryPoint(t, "127.0.20.2:"+port), port
	}
	t.Fatal("no port free on both 127.0.20.1 and 127.0.20.2")
	return nil, nil, ""
}

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

const gslbIntent = `apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: fintech, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: media, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: shop, organization: acme, tenant: fintech}
spec:
  namespaceSelector: {names: ["*/shop"]}
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
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: shop, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: shop.apps.example.com
  ttl: 5
  entryPoints:
  - {cluster: c1, address: 127.0.20.1}
  - {cluster: c2, address: 127.0.20.2}
  healthCheck: {path: /healthz, port: PORT, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2}
`

// A hostname published from two clusters is answered by the built-in DNS
// server with both entry points; an entry point whose health endpoint dies
// leaves the answers within the check's detection time and comes back when
// it is healthy again. Bad GSLB intent is refused at apply time.
func TestTheBuiltInDNSAnswersWithHealthyEntryPoints(t *testing.T) {
	dir := t.TempDir()
	dnsAddr := freePort(t)
	s := startServer(t, dir, "--dns-listen", dnsAddr)
	c1, c2, port := twoEntryPoints(t)
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
	time.Sleep(time.Second) // more than the detection time: both are out by now
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
	claimed := "apiVersion: flotilla.io/v1alpha1\nkind: DNSRecordSet\nmetadata: {name: mine, organization: acme, tenant: media, workspace: web}\nspec:\n  hostname: shop.apps.example.com\n  ttl: 30\n  entryPoints: [{cluster: c1, address: 127.0.20.9}]\n"
	if r := s.flotilla(claimed, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "is already published by organizations/acme/tenants/fintech/workspaces/shop/dnsrecordsets/shop") {
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
