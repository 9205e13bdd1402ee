package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"flotilla.io/flotilla/internal/testfleet"
)

var (
	gatewayGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}
	vsGVR      = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	vapGVR     = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"}
	vapbGVR    = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"}
)

// kcluster is one fleet cluster as the test reaches it.
type kcluster struct {
	name       string
	kubeconfig string
	kube       kubernetes.Interface
	dyn        dynamic.Interface
	info       testfleet.Cluster
}

func clusters(t *testing.T) []*kcluster {
	var out []*kcluster
	for _, c := range fleet.Clusters() {
		if !c.Bare {
			out = append(out, kclusterOf(t, c))
		}
	}
	return out
}

// bareClusters are the fleet's clusters started without Istio (c3, c4).
func bareClusters(t *testing.T) []*kcluster {
	var out []*kcluster
	for _, c := range fleet.Clusters() {
		if c.Bare {
			out = append(out, kclusterOf(t, c))
		}
	}
	if len(out) < 2 {
		t.Fatalf("the e2e fleet has %d bare clusters, not 2", len(out))
	}
	return out
}

func kclusterOf(t *testing.T, c testfleet.Cluster) *kcluster {
	cfg := c.RESTConfig(t)
	cfg.QPS, cfg.Burst = 50, 100
	return &kcluster{name: c.Name, kubeconfig: c.Kubeconfig, kube: kubernetes.NewForConfigOrDie(cfg), dyn: dynamic.NewForConfigOrDie(cfg), info: c}
}

// reset gives a cluster a fresh start: no agent state, a clean test namespace.
func (c *kcluster) reset(t *testing.T, namespace string) {
	t.Helper()
	ctx := context.Background()
	c.kube.CoreV1().Secrets("flotilla-system").Delete(ctx, "flotilla-agent-credential", metav1.DeleteOptions{})
	bundles := schema.GroupVersionResource{Group: "flotilla.io", Version: "v1alpha1", Resource: "bundles"}
	c.dyn.Resource(bundles).Namespace("flotilla-system").Delete(ctx, "current", metav1.DeleteOptions{})
	for _, gvr := range []schema.GroupVersionResource{gatewayGVR, vsGVR} {
		c.dyn.Resource(gvr).Namespace(namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	}
	_, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func (c *kcluster) get(gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	return c.dyn.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
}

// eventually polls cond every 100 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// vsHost returns the first host of a VirtualService.
func vsHost(u *unstructured.Unstructured) string {
	hosts, _, _ := unstructured.NestedStringSlice(u.Object, "spec", "hosts")
	if len(hosts) == 0 {
		return ""
	}
	return hosts[0]
}

func vsPort(u *unstructured.Unstructured) int64 {
	routes, _, _ := unstructured.NestedSlice(u.Object, "spec", "http")
	if len(routes) == 0 {
		return 0
	}
	dests, _, _ := unstructured.NestedSlice(routes[len(routes)-1].(map[string]any), "route")
	if len(dests) == 0 {
		return 0
	}
	n, _, _ := unstructured.NestedInt64(dests[0].(map[string]any), "destination", "port", "number")
	return n
}

// quickstart returns examples/quickstart.yaml with the shop's hostname and
// the catch-all route's port replaced.
func quickstart(t *testing.T, hostname string, port int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "examples", "quickstart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "hostname: shop.example.com", "hostname: "+hostname)
	return strings.ReplaceAll(s, "route: {host: payments/web.payments.svc.cluster.local, port: 8080}", fmt.Sprintf("route: {host: payments/web.payments.svc.cluster.local, port: %d}", port))
}

type statusRow struct {
	Cluster, State, Message string
	Connected               bool
}

// status returns the per-cluster rows of `flotilla status`.
func (s *server) status(kind, name string) (string, map[string]statusRow) {
	s.t.Helper()
	out := s.must("status", kind, name, "-o", "json")
	var st struct {
		Aggregate string
		Clusters  []statusRow
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("status json: %v\n%s", err, out)
	}
	rows := map[string]statusRow{}
	for _, r := range st.Clusters {
		rows[r.Cluster] = r
	}
	return st.Aggregate, rows
}

const igwFQN = "organizations/acme/tenants/fintech/workspaces/payments/groups/payments-gateway/ingressgateways/shop"

func TestFleetEndToEnd(t *testing.T) {
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	ctx := context.Background()
	for _, c := range cs {
		c.reset(t, "payments")
		// At the end only refused-web, with no port, routes to web.
		c.runWorkloads(t, quickstartWorkloads(9090)...)
	}
	// A VirtualService a user made by hand, in the namespace Flotilla writes to.
	handmade := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": "handmade", "namespace": "payments"},
		"spec":     map[string]any{"hosts": []any{"handmade.example.com"}, "http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web"}}}}}},
	}}
	handmadeRV := map[string]string{}
	for _, c := range cs {
		got, err := c.dyn.Resource(vsGVR).Namespace("payments").Create(ctx, handmade, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		handmadeRV[c.name] = got.GetResourceVersion()
	}
	checkHandmade := func(t *testing.T) {
		t.Helper()
		for _, c := range cs {
			got, err := c.get(vsGVR, "payments", "handmade")
			if err != nil || got.GetResourceVersion() != handmadeRV[c.name] {
				t.Fatalf("the hand-made VirtualService in %s was touched: %v", c.name, err)
			}
		}
	}

	dir := t.TempDir()
	s := startServer(t, dir)
	if out := s.must("apply", "-f", "examples/quickstart.yaml"); !strings.Contains(out, igwFQN+" created") {
		t.Fatalf("apply quickstart:\n%s", out)
	}
	agents := map[string]*process{}
	startAgent := func(c *kcluster) {
		agents[c.name] = startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startAgent(c)
	}

	t.Run("the quickstart's Gateway and VirtualService appear in both clusters", func(t *testing.T) {
		s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "60s")
		for _, c := range cs {
			if _, err := c.get(gatewayGVR, "payments", "shop"); err != nil {
				t.Fatalf("%s: gateway: %v", c.name, err)
			}
			vs, err := c.get(vsGVR, "payments", "shop-shop")
			if err != nil || vsHost(vs) != "shop.example.com" {
				t.Fatalf("%s: virtualservice: %v %v", c.name, err, vs)
			}
		}
		// What the data plane would be told: istiod took both objects, and
		// the ingress gateway's proxy routes the hostname to the services.
		for _, c := range cs {
			c.istiodHas(t, "Gateway", "payments", "shop")
			c.istiodHas(t, "VirtualService", "payments", "shop-shop")
			c.gatewayRoutes(t, "shop.example.com", "outbound|8080||api.payments.svc.cluster.local", "outbound|8080||web.payments.svc.cluster.local")
		}
		checkHandmade(t)
	})

	t.Run("a changed hostname is live in both clusters whenever status --wait returns", func(t *testing.T) {
		// status --wait right after each apply must not return before the
		// change is in every cluster: read the clusters' API at once.
		for i := 10; i >= 2; i-- {
			host := fmt.Sprintf("shop%d.example.com", i)
			if r := s.flotilla(quickstart(t, host, 8080), "apply", "-f", "-"); r.code != 0 {
				t.Fatalf("apply: %+v", r)
			}
			s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "60s")
			for _, c := range cs {
				vs, err := c.get(vsGVR, "payments", "shop-shop")
				if err != nil || vsHost(vs) != host {
					t.Fatalf("%s: status --wait returned before the change was live: host %q, want %q (%v)", c.name, vsHost(vs), host, err)
				}
			}
		}
		// istiod follows: the gateway proxy is told the last host, not the first.
		for _, c := range cs {
			c.gatewayRoutes(t, "shop2.example.com", "outbound|8080||api.payments.svc.cluster.local", "outbound|8080||web.payments.svc.cluster.local")
			c.gatewayRoutes(t, "shop.example.com")
		}
		checkHandmade(t)
	})

	t.Run("plan previews per-cluster changes and writes nothing; get compiled shows a cluster's objects", func(t *testing.T) {
		r := s.flotilla(quickstart(t, "shop9.example.com", 8080), "plan", "-f", "-")
		if r.code != 0 {
			t.Fatalf("plan: %+v", r)
		}
		for _, want := range []string{
			igwFQN + " would be configured",
			"cluster c1:\n",
			"cluster c2:\n",
			"~ update VirtualService payments/shop-shop  (" + igwFQN + ")",
			"~ update Gateway payments/shop",
			"nothing was written",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("plan output lacks %q:\n%s", want, r.stdout)
			}
		}
		if strings.Count(r.stdout, "~ update VirtualService payments/shop-shop") != 2 {
			t.Errorf("both clusters should show the update:\n%s", r.stdout)
		}
		if out := s.must("get", "ingressgateway", "shop", "-o", "yaml"); !strings.Contains(out, "shop2.example.com") {
			t.Fatalf("plan changed the stored intent:\n%s", out)
		}
		if out := s.must("get", "compiled", "--cluster", "c1"); !strings.Contains(out, "kind: VirtualService") || !strings.Contains(out, "- shop2.example.com") || strings.Contains(out, "shop9") {
			t.Fatalf("get compiled --cluster c1:\n%s", out)
		}
		if out := s.must("status", "group", "payments-gateway"); !strings.HasPrefix(out, "Group organizations/acme/tenants/fintech/workspaces/payments/groups/payments-gateway: READY") {
			t.Fatalf("the gateway group should aggregate to READY:\n%s", out)
		}
		if out := s.must("status", "workspace", "payments"); !strings.Contains(out, ": READY") {
			t.Fatalf("the workspace should aggregate to READY:\n%s", out)
		}
	})

	t.Run("a managed VirtualService deleted by hand is restored within 5s and reported", func(t *testing.T) {
		if err := c1.dyn.Resource(vsGVR).Namespace("payments").Delete(ctx, "shop-shop", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "restore shop-shop in c1", func() error {
			_, err := c1.get(vsGVR, "payments", "shop-shop")
			return err
		})
		eventually(t, 10*time.Second, "drift in c1's status", func() error {
			if out := s.must("get", "cluster", "c1", "-o", "yaml"); !strings.Contains(out, "change: deleted") || !strings.Contains(out, "object: VirtualService payments/shop-shop") {
				return fmt.Errorf("no drift in:\n%s", out)
			}
			return nil
		})
		// The rest of the cluster's reported facts.
		out := s.must("get", "cluster", "c1", "-o", "yaml")
		for _, want := range []string{"connected: true", "kubernetesVersion: v1.36", "agentVersion:", "bundleVersion:", "lastSeen:", "- payments\n", "installed: false"} {
			if !strings.Contains(out, want) {
				t.Errorf("cluster c1's status lacks %q:\n%s", want, out)
			}
		}
		// Its services are runtime state: in the registry, not in the Cluster.
		if strings.Contains(out, "name: kubernetes") {
			t.Errorf("cluster c1's status carries its services:\n%s", out)
		}
		eventually(t, 10*time.Second, "default/kubernetes of both clusters in the registry", func() error {
			if out := s.must("get", "services", "default/kubernetes"); !strings.Contains(out, "c1,c2") || !strings.Contains(out, "https:443/TCP") {
				return fmt.Errorf("get services default/kubernetes:\n%s", out)
			}
			return nil
		})
	})

	t.Run("a disconnected cluster stays Pending, then converges without re-applying unchanged objects", func(t *testing.T) {
		gw, err := c2.get(gatewayGVR, "payments", "shop")
		if err != nil {
			t.Fatal(err)
		}
		agents["c2"].stop()
		eventually(t, 10*time.Second, "c2 disconnected", func() error {
			if _, rows := s.status("ingressgateway", "shop"); rows["c2"].Connected {
				return fmt.Errorf("c2 still connected")
			}
			return nil
		})
		// Only the route's port changes: the Gateway's content stays the same.
		if r := s.flotilla(quickstart(t, "shop2.example.com", 9090), "apply", "-f", "-"); r.code != 0 {
			t.Fatalf("apply: %+v", r)
		}
		eventually(t, 30*time.Second, "c1 applied while c2 pending", func() error {
			agg, rows := s.status("ingressgateway", "shop")
			if rows["c1"].State != "Applied" || rows["c2"].State != "Pending" || agg != "PARTIAL" {
				return fmt.Errorf("aggregate %s, rows %+v", agg, rows)
			}
			return nil
		})
		if vs, _ := c1.get(vsGVR, "payments", "shop-shop"); vsPort(vs) != 9090 {
			t.Fatalf("c1 did not converge: port %d", vsPort(vs))
		}
		if vs, _ := c2.get(vsGVR, "payments", "shop-shop"); vsPort(vs) != 8080 {
			t.Fatalf("c2 changed without its agent: port %d", vsPort(vs))
		}
		startAgent(c2)
		s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "60s")
		if vs, _ := c2.get(vsGVR, "payments", "shop-shop"); vsPort(vs) != 9090 {
			t.Fatalf("c2 did not converge: port %d", vsPort(vs))
		}
		after, err := c2.get(gatewayGVR, "payments", "shop")
		if err != nil {
			t.Fatal(err)
		}
		if after.GetResourceVersion() != gw.GetResourceVersion() {
			t.Fatalf("the unchanged Gateway was re-applied in c2: resourceVersion %s -> %s", gw.GetResourceVersion(), after.GetResourceVersion())
		}
		checkHandmade(t)
	})

	t.Run("an invalid DIRECT object is rejected at apply time with Istio's field path", func(t *testing.T) {
		bad := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: payments, organization: acme, tenant: fintech, workspace: payments, group: payments-direct}
spec:
  hosts: [broken.example.com]
  http:
    - route:
        - destination: {host: web, hostt: x}
`
		r := s.flotilla(directGroup+"---\n"+bad, "apply", "-f", "-")
		if r.code == 0 || !strings.Contains(r.stderr, "spec.http[0].route[0].destination.hostt") || !strings.Contains(r.stderr, "unknown field") {
			t.Fatalf("want a rejection naming spec.http[0].route[0].destination.hostt: %+v", r)
		}
		if r := s.flotilla("", "get", "group", "payments-direct"); r.code == 0 {
			t.Fatalf("a rejected request stored its valid documents: %s", r.stdout)
		}
		// What the CRD schema accepts but Istio's own validation rejects is
		// refused with Istio's message, the document and the field.
		for _, tc := range []struct{ name, http, field, message string }{
			{"an invalid regex", "[{match: [{uri: {regex: '(['}}], route: [{destination: {host: web}}]}]",
				"spec.http[0].match[0].uri.regex", "error parsing regexp"},
			{"negative retry attempts", "[{retries: {attempts: -1}, route: [{destination: {host: web}}]}]",
				"spec.http[0].retries.attempts", "attempts cannot be negative"},
			{"an invalid hostname", "[{route: [{destination: {host: 'web..payments'}}]}]",
				"spec.http[0].route[0].destination.host", `domain name ".payments" invalid`},
			{"a port of 999999", "[{route: [{destination: {host: web, port: {number: 999999}}}]}]",
				"spec.http[0].route[0].destination.port.number", "port number 999999 must be in the range 1..65535"},
		} {
			doc := strings.Replace(bad, "    - route:\n        - destination: {host: web, hostt: x}\n", "", 1)
			doc = strings.Replace(doc, "  http:\n", "  http: "+tc.http+"\n", 1)
			r := s.flotilla(directGroup+"---\n"+doc, "apply", "-f", "-")
			if r.code == 0 || !strings.Contains(r.stderr, tc.field) || !strings.Contains(r.stderr, tc.message) ||
				!strings.Contains(r.stderr, `document 2 (VirtualService "broken")`) {
				t.Fatalf("%s: want a refusal naming document 2, %s and Istio's %q: %+v", tc.name, tc.field, tc.message, r)
			}
			if r := s.flotilla("", "get", "group", "payments-direct"); r.code == 0 {
				t.Fatalf("%s: a rejected request stored its valid documents: %s", tc.name, r.stdout)
			}
		}
	})

	t.Run("an object one cluster's API server refuses is Failed there only", func(t *testing.T) {
		denyInC2(t, c2)
		vs := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: refused-web, namespace: payments, organization: acme, tenant: fintech, workspace: payments, group: payments-direct}
spec:
  hosts: [web.payments.svc.cluster.local]
  http:
    - route:
        - destination: {host: web.payments.svc.cluster.local}
`
		if r := s.flotilla(directGroup+"---\n"+vs, "apply", "-f", "-"); r.code != 0 {
			t.Fatalf("apply: %+v", r)
		}
		var rows map[string]statusRow
		eventually(t, 30*time.Second, "c1 Applied, c2 Failed", func() error {
			_, rows = s.status("virtualservice", "refused-web")
			if rows["c1"].State != "Applied" || rows["c2"].State != "Failed" {
				return fmt.Errorf("%+v", rows)
			}
			return nil
		})
		if !strings.Contains(rows["c2"].Message, "refused in this cluster by policy") {
			t.Fatalf("c2's failure lacks the API server's message: %q", rows["c2"].Message)
		}
		if out := s.must("status", "group", "payments-direct"); !strings.Contains(out, ": FAILED") {
			t.Fatalf("the DIRECT group should aggregate to FAILED:\n%s", out)
		}
		if r := s.flotilla("", "status", "virtualservice", "refused-web", "--wait", "--timeout", "5s"); r.code == 0 {
			t.Fatal("status --wait succeeded although c2 failed")
		}
		if _, err := c1.get(vsGVR, "payments", "refused-web"); err != nil {
			t.Fatalf("c1 lacks the object: %v", err)
		}
		c1.istiodHas(t, "VirtualService", "payments", "refused-web") // istiod in c1 took the DIRECT object
		// The gateway in the same group tree is unaffected in c2.
		if agg, _ := s.status("ingressgateway", "shop"); agg != "READY" {
			t.Fatalf("one failed object degraded another resource: %s", agg)
		}
	})

	t.Run("deleting the IngressGateway prunes its objects in both clusters", func(t *testing.T) {
		s.must("delete", "ingressgateway", "shop")
		for _, c := range cs {
			eventually(t, 30*time.Second, "prune in "+c.name, func() error {
				for _, probe := range []struct {
					gvr  schema.GroupVersionResource
					name string
				}{{gatewayGVR, "shop"}, {vsGVR, "shop-shop"}} {
					if _, err := c.get(probe.gvr, "payments", probe.name); !apierrors.IsNotFound(err) {
						return fmt.Errorf("%s still there (%v)", probe.name, err)
					}
				}
				return nil
			})
		}
		checkHandmade(t)
	})

	t.Run("island mode: with the server down a restarted agent restores from its stored bundle", func(t *testing.T) {
		s.cmd.Process.Signal(os.Interrupt)
		<-s.done
		agents["c1"].stop()
		if err := c1.dyn.Resource(vsGVR).Namespace("payments").Delete(ctx, "refused-web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		startAgent(c1)
		eventually(t, 30*time.Second, "restore from the stored bundle", func() error {
			_, err := c1.get(vsGVR, "payments", "refused-web")
			return err
		})
		if log := agents["c1"].log.String(); !strings.Contains(log, "loaded the stored bundle") {
			t.Fatalf("the agent did not use its stored bundle:\n%s", log)
		}
		checkHandmade(t)
	})
	analyzeClusters(t, cs...)
}

// directGroup is a DIRECT group in the quickstart's workspace.
const directGroup = `apiVersion: flotilla.io/v1alpha1
kind: Group
metadata: {name: payments-direct, organization: acme, tenant: fintech, workspace: payments}
spec:
  type: traffic
  configMode: DIRECT
  namespaceSelector: {names: ["*/payments"]}
`

// denyInC2 makes c2's API server refuse VirtualServices named refused-*,
// with a ValidatingAdmissionPolicy: a real refusal, only in that cluster.
func denyInC2(t *testing.T, c *kcluster) {
	t.Helper()
	ctx := context.Background()
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
		"metadata": map[string]any{"name": "deny-refused"},
		"spec": map[string]any{
			"failurePolicy": "Fail",
			"matchConstraints": map[string]any{"resourceRules": []any{map[string]any{
				"apiGroups": []any{"networking.istio.io"}, "apiVersions": []any{"*"},
				"operations": []any{"CREATE", "UPDATE"}, "resources": []any{"virtualservices"},
			}}},
			"validations": []any{map[string]any{
				"expression": "!object.metadata.name.startsWith('refused')",
				"message":    "refused in this cluster by policy",
			}},
		},
	}}
	binding := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
		"metadata": map[string]any{"name": "deny-refused"},
		"spec":     map[string]any{"policyName": "deny-refused", "validationActions": []any{"Deny"}},
	}}
	for _, o := range []struct {
		gvr schema.GroupVersionResource
		obj *unstructured.Unstructured
	}{{vapGVR, policy}, {vapbGVR, binding}} {
		if _, err := c.dyn.Resource(o.gvr).Create(ctx, o.obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": "refused-probe", "namespace": "payments"},
		"spec":     map[string]any{"hosts": []any{"probe"}},
	}}
	eventually(t, 30*time.Second, "policy in force in c2", func() error {
		_, err := c.dyn.Resource(vsGVR).Namespace("payments").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			return fmt.Errorf("not yet refused")
		}
		return nil
	})
}
