package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

var (
	workloadEntryGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	serviceEntryGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"}
	destRuleGVR      = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
)

const multiclusterIntent = `apiVersion: flotilla.io/v1alpha1
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
apiVersion: flotilla.io/v1alpha1
kind: WorkspaceSetting
metadata: {name: multicluster, organization: acme, tenant: fintech, workspace: shop}
spec:
  eastWestGateway:
    workloadSelector: {namespace: istio-system, labels: {istio: eastwestgateway}}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c2, organization: acme}
`

// runService puts a Service with selector app=<name> and an EndpointSlice of
// ready endpoints on the cluster's node into namespace shop.
func (c *kcluster) runService(t *testing.T, name string, ready int) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}
	if _, err := c.kube.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c.scale(t, name, ready)
}

// scale sets the ready endpoints of the service's EndpointSlice.
func (c *kcluster) scale(t *testing.T, name string, ready int) {
	t.Helper()
	ctx := context.Background()
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-mc", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(9080))}},
	}
	for i := range ready {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.9.%d", i+1)},
			NodeName: ptr.To(c.name + "-mc-node"), Zone: ptr.To(c.info.Zone), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	slices := c.kube.DiscoveryV1().EndpointSlices("shop")
	cur, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	case err == nil:
		cur.Endpoints = slice.Endpoints
		_, err = slices.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// prepareMulticluster gives the cluster a node in its region, an east-west
// gateway Service whose address is overridden (no load-balancer controller
// here), and a clean namespace shop.
func (c *kcluster) prepareMulticluster(t *testing.T, address string) {
	t.Helper()
	ctx := context.Background()
	c.reset(t, "shop")
	c.reset(t, "payments") // what an earlier test's agent left there would be pruned first
	for _, gvr := range []schema.GroupVersionResource{workloadEntryGVR, destRuleGVR} {
		_ = c.dyn.Resource(gvr).Namespace("shop").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	}
	for _, name := range []string{"reviews", "ratings"} {
		_ = c.kube.CoreV1().Services("shop").Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.kube.DiscoveryV1().EndpointSlices("shop").Delete(ctx, name+"-mc", metav1.DeleteOptions{})
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: c.name + "-mc-node",
		Labels: map[string]string{"topology.kubernetes.io/region": c.info.Region, "topology.kubernetes.io/zone": c.info.Zone}}}
	if _, err := c.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "eastwest", Labels: map[string]string{"istio": "eastwestgateway"},
		Annotations: map[string]string{"flotilla.io/external-address": address}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"istio": "eastwestgateway"}, Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}}}}
	_ = c.dyn.Resource(destRuleGVR).Namespace("shop").Delete(ctx, "reviews-by-hand", metav1.DeleteOptions{})
	_ = c.kube.CoreV1().Services("istio-system").Delete(ctx, "eastwest", metav1.DeleteOptions{})
	if _, err := c.kube.CoreV1().Services("istio-system").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.kube.CoreV1().Services("istio-system").Delete(context.Background(), "eastwest", metav1.DeleteOptions{})
	})
	c.runWorkloads(t, workload{namespace: "istio-system", name: "eastwest", labels: map[string]string{"istio": "eastwestgateway"}}) // its pod
}

// The services two clusters report become, in the other cluster, native
// Istio config through the remote east-west gateway: WorkloadEntries where
// the service also runs, a ServiceEntry where it does not, DestinationRules
// with outlier detection and locality failover; and the data plane is told
// the remote gateway as an endpoint. Scaling to zero removes it; a
// disconnected cluster's entries stay (stale); a deleted cluster's go.
func TestServicesInOneClusterFailOverThroughTheOthersEastWestGateway(t *testing.T) {
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	c1.prepareMulticluster(t, "127.0.11.1")
	c2.prepareMulticluster(t, "127.0.11.2")
	c1.runService(t, "reviews", 1)
	c2.runService(t, "reviews", 2)
	c2.runService(t, "ratings", 1)
	// A DestinationRule for reviews that a user keeps in c2 by hand.
	handDR := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
		"metadata": map[string]any{"name": "reviews-by-hand", "namespace": "shop"},
		"spec":     map[string]any{"host": "reviews", "trafficPolicy": map[string]any{"connectionPool": map[string]any{"tcp": map[string]any{"maxConnections": int64(100)}}}},
	}}
	made, err := c2.dyn.Resource(destRuleGVR).Namespace("shop").Create(context.Background(), handDR, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	s := startServer(t, dir)
	if r := s.flotilla(multiclusterIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	agents := map[string]*process{}
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		agents[c.name] = startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}

	entry := func(c *kcluster, gvr schema.GroupVersionResource, ns, name string) (map[string]any, error) {
		o, err := c.get(gvr, ns, name)
		if err != nil {
			return nil, err
		}
		spec, _ := o.Object["spec"].(map[string]any)
		return spec, nil
	}
	eventually(t, 60*time.Second, "c1's WorkloadEntry for reviews in c2", func() error {
		spec, err := entry(c1, workloadEntryGVR, "shop", "reviews-c2")
		if err != nil {
			return err
		}
		if spec["address"] != "127.0.11.2" || fmt.Sprint(spec["weight"]) != "2" || spec["locality"] != c2.info.Region+"/"+c2.info.Zone || spec["network"] != nil {
			return fmt.Errorf("reviews-c2 is %v", spec)
		}
		if labels, _ := spec["labels"].(map[string]any); labels["security.istio.io/tlsMode"] != "istio" || labels["app"] != "reviews" {
			return fmt.Errorf("reviews-c2 labels %v", labels)
		}
		if ports, _ := spec["ports"].(map[string]any); fmt.Sprint(ports["http"]) != "15443" {
			return fmt.Errorf("reviews-c2 ports %v", ports)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the rest of the failover config", func() error {
		if _, err := entry(c2, workloadEntryGVR, "shop", "reviews-c1"); err != nil {
			return fmt.Errorf("c2's WorkloadEntry for reviews in c1: %w", err)
		}
		se, err := entry(c1, serviceEntryGVR, "flotilla-multicluster", "shop-ratings")
		if err != nil || se["location"] != "MESH_INTERNAL" {
			return fmt.Errorf("c1's ServiceEntry for ratings: %v %v", se, err)
		}
		if _, err := entry(c2, serviceEntryGVR, "flotilla-multicluster", "shop-ratings"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("c2 runs ratings but has a ServiceEntry for it: %v", err)
		}
		dr, err := entry(c1, destRuleGVR, "shop", "flotilla-reviews")
		if err != nil {
			return fmt.Errorf("c1: DestinationRule for reviews: %w", err)
		}
		tp, _ := dr["trafficPolicy"].(map[string]any)
		if tp["outlierDetection"] == nil || tp["loadBalancer"] == nil {
			return fmt.Errorf("c1: DestinationRule lacks outlier detection or locality failover: %v", dr)
		}
		for _, c := range cs {
			if _, err := c.get(gatewayGVR, "istio-system", "flotilla-eastwest"); err != nil {
				return fmt.Errorf("%s: east-west Gateway: %w", c.name, err)
			}
		}
		return nil
	})
	// In c2 the user's own rule stands, untouched, and the setting's status
	// says why Flotilla wrote none and what to add.
	if _, err := entry(c2, destRuleGVR, "shop", "flotilla-reviews"); !apierrors.IsNotFound(err) {
		t.Fatalf("c2 got Flotilla's DestinationRule for reviews beside the user's: %v", err)
	}
	if got, err := c2.get(destRuleGVR, "shop", "reviews-by-hand"); err != nil || got.GetResourceVersion() != made.GetResourceVersion() {
		t.Fatalf("the user's DestinationRule in c2 was touched: %v", err)
	}
	eventually(t, 30*time.Second, "the conflict in the setting's status", func() error {
		_, rows := s.status("workspacesetting", "multicluster")
		if rows["c2"].State != "Failed" || !strings.Contains(rows["c2"].Message, "its own DestinationRule shop/reviews-by-hand") || rows["c1"].State != "Applied" {
			return fmt.Errorf("status rows %+v", rows)
		}
		return nil
	})
	exposedColumn := func(service string) string {
		out := s.must("get", "services", service)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("get services %s:\n%s", service, out)
		}
		header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
		for i, h := range header {
			if h == "EXPOSED" && i < len(row) {
				return row[i]
			}
		}
		t.Fatalf("no EXPOSED column:\n%s", out)
		return ""
	}
	if got := exposedColumn("default/kubernetes"); got != "no" {
		t.Fatalf("default/kubernetes (in no exposing workspace) shows EXPOSED %q", got)
	}
	if got := exposedColumn("shop/reviews"); got != "yes" {
		t.Fatalf("shop/reviews shows EXPOSED %q", got)
	}
	if out := s.must("get", "services"); !strings.Contains(out, "shop/reviews") || !strings.Contains(out, "c1,c2") || !strings.Contains(out, "shop/ratings") {
		t.Fatalf("get services:\n%s", out)
	}
	if out := s.must("describe", "service", "shop/reviews"); !strings.Contains(out, "WorkloadEntry shop/reviews-c2 (address 127.0.11.2, weight 2") ||
		!strings.Contains(out, "organizations/acme/clusters/c2: 2 ready") || !strings.Contains(out, "DestinationRule shop/flotilla-reviews") ||
		!strings.Contains(out, "Exposed:\tby organizations/acme/tenants/fintech/workspaces/shop/workspacesettings/multicluster") {
		t.Fatalf("describe service:\n%s", out)
	}

	// The data plane: a sidecar in c1 is told c2's gateway for reviews.
	probe := xdsprobe.Proxy{Namespace: "shop", Labels: map[string]string{"app": "productpage"}, Workload: "productpage",
		Cluster: c1.name, Network: c1.info.Network, Region: c1.info.Region, Zone: c1.info.Zone}
	remoteInEDS := func(want bool) func() error {
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			snap, err := xdsprobe.Fetch(ctx, c1.info.Istiod.GRPC, probe)
			if err != nil {
				return err
			}
			found := false
			for _, e := range snap.EndpointsOf("outbound|9080||reviews.shop.svc.cluster.local") {
				if e.Address == "127.0.11.2:15443" && e.Region == c2.info.Region {
					found = true
				}
			}
			if found != want {
				return fmt.Errorf("c2's gateway in c1's EDS for reviews: %v, want %v (%+v)", found, want, snap.EndpointsOf("outbound|9080||reviews.shop.svc.cluster.local"))
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, "c2's gateway in c1's EDS", remoteInEDS(true))

	// Scale to zero in c2: the entry leaves c1, and so does the endpoint.
	c2.scale(t, "reviews", 0)
	eventually(t, 30*time.Second, "reviews-c2 gone from c1 after the scale to zero", func() error {
		if _, err := entry(c1, workloadEntryGVR, "shop", "reviews-c2"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	eventually(t, 30*time.Second, "c2's gateway gone from c1's EDS", remoteInEDS(false))
	c2.scale(t, "reviews", 2)
	c1.awaitWeight(t, "reviews-c2", 2)

	// The server restarts (kill -9): it knows the fleet's services from the
	// store before any agent reports again, so no cluster loses its
	// failover config, even for a moment.
	deleted := failoverDeletions(t, c1, c2)
	s.kill9()
	s = s.restart(t)
	awaitAgents(t, s, 2)
	c2.scale(t, "reviews", 3)
	c1.awaitWeight(t, "reviews-c2", 3)
	if got := deleted(); len(got) != 0 {
		t.Fatalf("failover config was removed while the server restarted: %v", got)
	}

	// c2's agent stops: its entries stay in c1, and the registry says stale.
	agents[c2.name].stop()
	eventually(t, 30*time.Second, "c2 stale in the registry", func() error {
		if out := s.must("get", "services", "shop/reviews"); !strings.Contains(out, "stale") {
			return fmt.Errorf("not stale:\n%s", out)
		}
		return nil
	})
	if _, err := entry(c1, workloadEntryGVR, "shop", "reviews-c2"); err != nil {
		t.Fatalf("c1 lost c2's entry when c2's agent stopped: %v", err)
	}

	// Deleting cluster c2 removes its entries everywhere.
	s.must("delete", "cluster", "c2")
	eventually(t, 30*time.Second, "c2's entries gone from c1 after its deletion", func() error {
		if _, err := entry(c1, workloadEntryGVR, "shop", "reviews-c2"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("reviews-c2 still there: %v", err)
		}
		if _, err := entry(c1, serviceEntryGVR, "flotilla-multicluster", "shop-ratings"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("shop-ratings still there: %v", err)
		}
		return nil
	})
	analyzeClusters(t, c1, c2)
}

// awaitWeight waits until the WorkloadEntry shop/name has the weight.
func (c *kcluster) awaitWeight(t *testing.T, name string, want int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%s: %s of weight %d", c.name, name, want), func() error {
		o, err := c.get(workloadEntryGVR, "shop", name)
		if err != nil {
			return err
		}
		if got, _, _ := unstructured.NestedInt64(o.Object, "spec", "weight"); got != int64(want) {
			return fmt.Errorf("weight %d", got)
		}
		return nil
	})
}

// failoverDeletions records the failover objects deleted from now on in
// c1 and c2 (WorkloadEntries in shop, c1's ServiceEntries), as "<name>".
func failoverDeletions(t *testing.T, c1, c2 *kcluster) func() []string {
	t.Helper()
	watches := []func() []string{
		c1.deletions(t, workloadEntryGVR, "shop"), c2.deletions(t, workloadEntryGVR, "shop"),
		c1.deletions(t, serviceEntryGVR, "flotilla-multicluster"),
	}
	return func() []string {
		var out []string
		for _, w := range watches {
			out = append(out, w()...)
		}
		return out
	}
}

// awaitAgents waits until s counts n connected agents.
func awaitAgents(t *testing.T, s *server, n int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%d agents on %s", n, s.url), func() error {
		if got := connectedAgents(t, s); got != n {
			return fmt.Errorf("%d agents", got)
		}
		return nil
	})
}

// deletions records the objects of gvr in namespace ns of cluster c that
// are deleted from now on, as "<name>"; the watch ends with the test.
func (c *kcluster) deletions(t *testing.T, gvr schema.GroupVersionResource, ns string) func() []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := c.dyn.Resource(gvr).Namespace(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		deleted []string
		ended   bool
	)
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Deleted {
				if o, ok := ev.Object.(*unstructured.Unstructured); ok {
					mu.Lock()
					deleted = append(deleted, o.GetName())
					mu.Unlock()
				}
			}
		}
		mu.Lock()
		ended = ctx.Err() == nil
		mu.Unlock()
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			t.Fatalf("%s: the watch of %s in %s ended early", c.name, gvr.Resource, ns)
		}
		return slices.Clone(deleted)
	}
}

// Two server replicas on PostgreSQL, c1's agent on one and c2's on the
// other: each cluster still gets the other's services as failover config,
// and a scale in either cluster reaches the other across the replicas.
// Then a replica is killed, and later the whole central is restarted:
// neither removes a remote endpoint from any cluster, even for a moment.
func TestFailoverConfigCrossesReplicasAndOutlivesThem(t *testing.T) {
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	c1.prepareMulticluster(t, "127.0.11.1")
	c2.prepareMulticluster(t, "127.0.11.2")
	c1.runService(t, "reviews", 1)
	c2.runService(t, "reviews", 2)
	c2.runService(t, "ratings", 1)

	db := pgtest.NewDatabase(t)
	a := startServer(t, t.TempDir(), "--store", db)
	b := startServer(t, t.TempDir(), "--store", db)
	b.login(bootstrapFile(a.cmd.Dir)) // the store has one bootstrap credential: a made it
	if r := a.flotilla(multiclusterIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	dir := t.TempDir()
	servers := map[string]string{c1.name: a.url + "," + b.url, c2.name: b.url + "," + a.url}
	for _, c := range cs {
		token := strings.TrimSpace(a.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", servers[c.name], "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	eventually(t, 30*time.Second, "one agent on each replica", func() error {
		if n, m := connectedAgents(t, a), connectedAgents(t, b); n != 1 || m != 1 {
			return fmt.Errorf("a has %d agents, b %d", n, m)
		}
		return nil
	})
	c1.awaitWeight(t, "reviews-c2", 2)
	c2.awaitWeight(t, "reviews-c1", 1)
	eventually(t, 30*time.Second, "c1's ServiceEntry for ratings, which runs in c2 only", func() error {
		_, err := c1.get(serviceEntryGVR, "flotilla-multicluster", "shop-ratings")
		return err
	})
	c2.scale(t, "reviews", 3) // reported to b, needed by c1 on a
	c1.awaitWeight(t, "reviews-c2", 3)
	c1.scale(t, "reviews", 2) // reported to a, needed by c2 on b
	c2.awaitWeight(t, "reviews-c1", 2)

	deleted := failoverDeletions(t, c1, c2)
	a.kill9()
	awaitAgents(t, b, 2)
	c2.scale(t, "reviews", 4)
	c1.awaitWeight(t, "reviews-c2", 4)

	// The whole central goes down and comes back: the restarted replica
	// knows the fleet's services from the store before any agent reports.
	b.kill9()
	a = a.restart(t)
	awaitAgents(t, a, 2)
	c2.scale(t, "reviews", 5)
	c1.awaitWeight(t, "reviews-c2", 5)
	c1.scale(t, "reviews", 1)
	c2.awaitWeight(t, "reviews-c1", 1)
	if got := deleted(); len(got) != 0 {
		t.Fatalf("failover config was removed while replicas died and came back: %v", got)
	}
	analyzeClusters(t, c1, c2)
}

// An east-west gateway of one's own, whose pods carry app: my-ewgw and no
// istio label, named by the WorkspaceSetting's workload selector, carries
// failover exactly as Istio's default one does: the agents' reports find it
// by the setting's selector, not by a label Flotilla expects.
func TestAnEastWestGatewayOfOnesOwnCarriesFailover(t *testing.T) {
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	ctx := context.Background()
	for i, c := range []*kcluster{c1, c2} {
		c.prepareMulticluster(t, fmt.Sprintf("127.0.11.%d", i+1))
		// No Service labelled istio=eastwestgateway: only one's own.
		if err := c.kube.CoreV1().Services("istio-system").Delete(ctx, "eastwest", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "my-ewgw", Labels: map[string]string{"app": "my-ewgw"},
			Annotations: map[string]string{"flotilla.io/external-address": fmt.Sprintf("127.0.12.%d", i+1)}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "my-ewgw"}, Ports: []corev1.ServicePort{{Name: "tls", Port: 16443}}}}
		_ = c.kube.CoreV1().Services("istio-system").Delete(ctx, "my-ewgw", metav1.DeleteOptions{})
		if _, err := c.kube.CoreV1().Services("istio-system").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.kube.CoreV1().Services("istio-system").Delete(context.Background(), "my-ewgw", metav1.DeleteOptions{})
		})
		c.runWorkloads(t, workload{namespace: "istio-system", name: "my-ewgw", labels: map[string]string{"app": "my-ewgw"}}) // its pod
	}
	c1.runService(t, "reviews", 1)
	c2.runService(t, "reviews", 2)

	dir := t.TempDir()
	s := startServer(t, dir)
	intent := strings.Replace(multiclusterIntent, "labels: {istio: eastwestgateway}", "labels: {app: my-ewgw}", 1)
	if r := s.flotilla(intent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	eventually(t, 60*time.Second, "c1's WorkloadEntry for reviews in c2, through c2's own gateway", func() error {
		o, err := c1.get(workloadEntryGVR, "shop", "reviews-c2")
		if err != nil {
			return err
		}
		spec, _ := o.Object["spec"].(map[string]any)
		if ports, _ := spec["ports"].(map[string]any); spec["address"] != "127.0.12.2" || fmt.Sprint(ports["http"]) != "16443" {
			return fmt.Errorf("reviews-c2 is %v, want address 127.0.12.2 and port 16443", spec)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the Gateway in each cluster selects the gateway's pods", func() error {
		for _, c := range cs {
			o, err := c.get(gatewayGVR, "istio-system", "flotilla-eastwest")
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			if sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector"); sel["app"] != "my-ewgw" {
				return fmt.Errorf("%s: the east-west Gateway selects %v", c.name, sel)
			}
		}
		return nil
	})
	// Status says nothing of a missing east-west gateway.
	if r := s.must("get", "compiled", "--cluster", "c1"); strings.Contains(r, "no east-west gateway Service") || strings.Contains(r, "has no address") {
		t.Errorf("c1's compiled output still reports a missing gateway:\n%s", r)
	}
	analyzeClusters(t, c1, c2)
}
