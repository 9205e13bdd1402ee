package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

// edgeIntent publishes shop.example.com on the ingress gateways of c1
// (region-1) and c2 (region-2), fronts it with an edge gateway in c1, and
// publishes the two ingress gateways in the built-in DNS.
const edgeIntent = `apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: fintech, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: web, organization: acme, tenant: fintech}
spec:
  namespaceSelector: {names: ["*/ingress", "*/edge"]}
---
apiVersion: flotilla.io/v1alpha1
kind: Group
metadata: {name: ingress, organization: acme, tenant: fintech, workspace: web}
spec:
  type: gateway
  namespaceSelector: {names: ["*/ingress"]}
---
apiVersion: flotilla.io/v1alpha1
kind: IngressGateway
metadata: {name: shop, organization: acme, tenant: fintech, workspace: web, group: ingress}
spec:
  workloadSelector: {namespace: ingress, labels: {istio: ingressgateway}}
  http:
  - name: web
    hostname: shop.example.com
    port: 80
    routing:
      rules:
      - route: {host: ingress/frontend.ingress.svc.cluster.local}
---
apiVersion: flotilla.io/v1alpha1
kind: Group
metadata: {name: edge, organization: acme, tenant: fintech, workspace: web}
spec:
  type: gateway
  namespaceSelector: {names: ["c1/edge"]}
---
apiVersion: flotilla.io/v1alpha1
kind: EdgeGateway
metadata: {name: shop, organization: acme, tenant: fintech, workspace: web, group: edge}
spec:
  workloadSelector: {namespace: edge, labels: {istio: edgegateway}}
  externalServers:
  - name: web
    hostname: shop.example.com
    port: 80
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, organization: acme}
spec: {region: region-1}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c2, organization: acme}
spec: {region: region-2}
---
apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: shop, organization: acme}
spec:
  zone: example.com
  provider: BUILTIN
---
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: shop, organization: acme, tenant: fintech, workspace: web}
spec:
  hostname: shop.example.com
  ttl: 5
  entryPoints:
  - {cluster: c1, address: 127.0.12.1}
  - {cluster: c2, address: 127.0.12.2}
`

// runIngressGateway gives the cluster an ingress gateway Service in
// namespace ingress, reachable at address (no load-balancer controller
// here: the annotation says it), with one ready endpoint on a node of the
// cluster's region.
func (c *kcluster) runIngressGateway(t *testing.T, address string) {
	t.Helper()
	ctx := context.Background()
	c.reset(t, "ingress")
	c.reset(t, "edge")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: c.name + "-mc-node",
		Labels: map[string]string{"topology.kubernetes.io/region": c.info.Region, "topology.kubernetes.io/zone": c.info.Zone}}}
	if _, err := c.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_ = c.kube.CoreV1().Services("ingress").Delete(ctx, "ingressgateway", metav1.DeleteOptions{})
	_ = c.kube.DiscoveryV1().EndpointSlices("ingress").Delete(ctx, "ingressgateway-1", metav1.DeleteOptions{})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ingressgateway", Labels: map[string]string{"istio": "ingressgateway"},
		Annotations: map[string]string{"flotilla.io/external-address": address}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"istio": "ingressgateway"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := c.kube.CoreV1().Services("ingress").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "ingressgateway-1", Labels: map[string]string{discoveryv1.LabelServiceName: "ingressgateway"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.8.1"}, NodeName: ptr.To(c.name + "-mc-node"), Zone: ptr.To(c.info.Zone),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if _, err := c.kube.DiscoveryV1().EndpointSlices("ingress").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = c.kube.CoreV1().Services("ingress").Delete(ctx, "ingressgateway", metav1.DeleteOptions{})
		_ = c.kube.DiscoveryV1().EndpointSlices("ingress").Delete(ctx, "ingressgateway-1", metav1.DeleteOptions{})
		for _, gvr := range []schema.GroupVersionResource{serviceEntryGVR, destRuleGVR, gatewayGVR, vsGVR} {
			_ = c.dyn.Resource(gvr).Namespace("edge").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		}
	})
}

// edgeProbe connects to c1's istiod as the edge gateway proxy (namespace
// edge, labels istio=edgegateway) in c1's locality.
func edgeProbe(c *kcluster) xdsprobe.Proxy {
	return xdsprobe.Proxy{Type: xdsprobe.Gateway, Namespace: "edge", Workload: "edgegateway", Labels: map[string]string{"istio": "edgegateway"},
		Cluster: c.name, Network: c.info.Network, Region: c.info.Region, Zone: c.info.Zone}
}

const (
	edgeTargets = "outbound|80||shop-web.edge.edge.flotilla.internal"
	edgeLocal   = "outbound|80||shop-web-local.edge.edge.flotilla.internal"
)

// An EdgeGateway in c1 spreads shop.example.com over the ingress gateways
// of c1 and c2, which publish it: the edge proxy, as c1's istiod tells it,
// routes the hostname to both ingress addresses with its own region first,
// and health checks to c1's alone. A drain takes c1 out of the edge and of
// DNS; undrain brings it back; both are audited. An explicit weighted list
// gives plain weights without failover.
func TestEdgeGatewaySpreadsAHostnameOverTheClustersIngressGateways(t *testing.T) {
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	c1.runIngressGateway(t, "127.0.12.1")
	c2.runIngressGateway(t, "127.0.12.2")
	// What the gateways and the route name: the ingress gateways' pods, the
	// frontend service, and c1's edge gateway with its Service.
	for _, c := range cs {
		c.runWorkloads(t, workload{namespace: "ingress", name: "ingressgateway", labels: map[string]string{"istio": "ingressgateway"}},
			workload{namespace: "ingress", name: "frontend", ports: []int32{80}})
	}
	c1.runWorkloads(t, workload{namespace: "edge", name: "edgegateway", labels: map[string]string{"istio": "edgegateway"}, ports: []int32{80}})
	dir := t.TempDir()
	dnsAddr := freePort(t)
	s := startServer(t, dir, "--dns-listen", dnsAddr)
	if r := s.flotilla(edgeIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	for _, c := range []*kcluster{c1, c2} {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		file := filepath.Join(dir, c.name+".token")
		if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", file, "--kubeconfig", c.kubeconfig)
	}

	// The edge cluster's objects are in its API server (which checked them
	// against Istio's schema), and the status is Applied.
	eventually(t, 60*time.Second, "the edge gateway's ServiceEntry in c1 with both ingress gateways", func() error {
		se, err := c1.get(serviceEntryGVR, "edge", "shop-web")
		if err != nil {
			return err
		}
		eps, _ := se.Object["spec"].(map[string]any)["endpoints"].([]any)
		var got []string
		for _, e := range eps {
			m := e.(map[string]any)
			got = append(got, fmt.Sprint(m["address"], " ", m["locality"]))
		}
		if want := []string{"127.0.12.1 region-1", "127.0.12.2 region-2"}; !slices.Equal(got, want) {
			return fmt.Errorf("endpoints %v, want %v", got, want)
		}
		return nil
	})
	for _, name := range []string{"shop-web", "shop-web-local"} {
		if _, err := c1.get(destRuleGVR, "edge", name); err != nil {
			t.Fatalf("DestinationRule edge/%s: %v", name, err)
		}
	}
	if _, err := c2.get(serviceEntryGVR, "edge", "shop-web"); !apierrors.IsNotFound(err) {
		t.Fatalf("c2 is not an edge cluster but has the edge's ServiceEntry: %v", err)
	}
	if r := s.flotilla("", "status", "edgegateway", "shop", "--wait", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("status --wait: %+v", r)
	}

	// What the edge proxy is told, through c1's real istiod.
	told := func(check func(*xdsprobe.Snapshot) error) func() error {
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			snap, err := xdsprobe.Fetch(ctx, c1.info.Istiod.GRPC, edgeProbe(c1))
			if err != nil {
				return err
			}
			return check(snap)
		}
	}
	endpoints := func(snap *xdsprobe.Snapshot, cluster string) string {
		var out []string
		for _, e := range snap.EndpointsOf(cluster) {
			out = append(out, fmt.Sprintf("%s %s p%d w%d", e.Address, e.Region, e.Priority, e.Weight))
		}
		slices.Sort(out)
		return strings.Join(out, ", ")
	}
	eventually(t, 30*time.Second, "the edge proxy's routes and endpoints", told(func(snap *xdsprobe.Snapshot) error {
		routes := snap.NamedRoutes("shop.example.com")
		if !slices.Equal(routes["edge"], []string{edgeTargets}) || !slices.Equal(routes["health-check"], []string{edgeLocal}) {
			return fmt.Errorf("routes %v", routes)
		}
		// Same region first: c1's ingress gateway at priority 0, c2's after.
		if got, want := endpoints(snap, edgeTargets), "127.0.12.1:80 region-1 p0 w1, 127.0.12.2:80 region-2 p1 w1"; got != want {
			return fmt.Errorf("targets %q, want %q", got, want)
		}
		// Health checks: the local next hop only.
		if got, want := endpoints(snap, edgeLocal), "127.0.12.1:80 region-1 p0 w1"; got != want {
			return fmt.Errorf("local hop %q, want %q", got, want)
		}
		return nil
	}))

	answers := func(want ...string) func() error {
		return func() error {
			got, rcode, err := lookup(dnsAddr, "shop.example.com")
			if err != nil {
				return err
			}
			if rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
				return fmt.Errorf("answers %v (rcode %s), want %v", got, dns.RcodeToString[rcode], want)
			}
			return nil
		}
	}
	eventually(t, 10*time.Second, "both ingress gateways in DNS", answers("127.0.12.1", "127.0.12.2"))

	// Drain c1: once --wait returns, neither DNS nor the edge points at it
	// (asked right away, no waiting), and its health checks fail.
	out := s.must("cluster", "drain", "c1", "--wait", "--timeout", "30s")
	if !strings.Contains(out, "no edge gateway sends traffic to c1") || !strings.Contains(out, "no DNS answer points at c1") {
		t.Fatalf("drain --wait:\n%s", out)
	}
	if err := answers("127.0.12.2")(); err != nil {
		t.Fatalf("DNS right after drain --wait: %v", err)
	}
	se, err := c1.get(serviceEntryGVR, "edge", "shop-web")
	if err != nil || strings.Contains(fmt.Sprint(se.Object["spec"]), "127.0.12.1") {
		t.Fatalf("the edge's ServiceEntry right after drain --wait: %v %v", err, se)
	}
	eventually(t, 30*time.Second, "c1 gone from the edge proxy", told(func(snap *xdsprobe.Snapshot) error {
		if got, want := endpoints(snap, edgeTargets), "127.0.12.2:80 region-2 p0 w1"; got != want {
			return fmt.Errorf("targets %q, want %q", got, want)
		}
		if routes := snap.NamedRoutes("shop.example.com"); len(routes["health-check"]) != 0 {
			return fmt.Errorf("health checks still routed to %v", routes["health-check"])
		}
		return nil
	}))
	if _, rows := s.status("edgegateway", "shop"); !strings.Contains(rows["c1"].Message, "no local next hop") {
		t.Fatalf("status after draining the edge's own cluster: %+v", rows)
	}

	s.must("cluster", "undrain", "c1")
	eventually(t, 30*time.Second, "c1 back in the edge proxy", told(func(snap *xdsprobe.Snapshot) error {
		if got, want := endpoints(snap, edgeTargets), "127.0.12.1:80 region-1 p0 w1, 127.0.12.2:80 region-2 p1 w1"; got != want {
			return fmt.Errorf("targets %q, want %q", got, want)
		}
		return nil
	}))
	eventually(t, 10*time.Second, "c1 back in DNS", answers("127.0.12.1", "127.0.12.2"))
	if out := s.must("audit", "--since", "1h"); strings.Count(out, "organizations/acme/clusters/c1") < 3 || !strings.Contains(out, "drained") {
		t.Fatalf("the audit lacks the drain and the undrain:\n%s", out)
	}

	// An explicit weighted list: plain weights, no failover (locality load
	// balancing off, so every target is at priority 0).
	weighted := strings.Replace(edgeIntent, "    port: 80\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster",
		"    port: 80\n    clusters: [{name: c1, weight: 3}, {name: c2, weight: 1}]\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster", 1)
	if weighted == edgeIntent {
		t.Fatal("the weighted intent did not change the edge gateway")
	}
	if r := s.flotilla(weighted, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply weighted: %+v", r)
	}
	eventually(t, 30*time.Second, "weighted targets at the edge proxy", told(func(snap *xdsprobe.Snapshot) error {
		if got, want := endpoints(snap, edgeTargets), "127.0.12.1:80 region-1 p0 w3, 127.0.12.2:80 region-2 p0 w1"; got != want {
			return fmt.Errorf("targets %q, want %q", got, want)
		}
		if c := snap.Clusters[edgeTargets]; c.GetOutlierDetection() != nil {
			return fmt.Errorf("a weighted list has outlier detection: %v", c.GetOutlierDetection())
		}
		return nil
	}))

	// Bad input is refused at apply time, naming the field; nothing is stored.
	bad := strings.Replace(edgeIntent, "    port: 80\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster",
		"    port: 80\n    clusters: [{name: c9, weight: 1}]\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster", 1)
	if r := s.flotilla(bad, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "spec.externalServers[0].clusters[0].name") || !strings.Contains(r.stderr, `cluster "c9" does not exist`) {
		t.Fatalf("an unknown cluster in the list: %+v", r)
	}
	analyzeClusters(t, c1, c2)
}
