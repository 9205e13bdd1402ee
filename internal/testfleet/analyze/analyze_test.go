package analyze_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/testfleet"
	"flotilla.io/flotilla/internal/testfleet/analyze"
)

func TestMain(m *testing.M) { testfleet.Main(m, testfleet.Options{Clusters: 1}) }

// flotillaMeta is the ownership the compiler puts on every object.
const flotillaMeta = `
  labels: {app.kubernetes.io/managed-by: flotilla}
  annotations: {flotilla.io/owner: organizations/acme/tenants/t/workspaces/shop/groups/edge/ingressgateways/shop}`

// cluster writes objects into a real local-fleet API server and analyzes it.
type cluster struct {
	t   *testing.T
	cfg *rest.Config
	dyn dynamic.Interface
}

func newCluster(t *testing.T) *cluster {
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	return &cluster{t: t, cfg: cfg, dyn: dynamic.NewForConfigOrDie(cfg)}
}

// apply creates each YAML document, and deletes it when the test ends (the
// fleet has no namespace controller to do it).
func (c *cluster) apply(docs ...string) {
	c.t.Helper()
	for _, d := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(d), &u.Object); err != nil {
			c.t.Fatalf("%v in:\n%s", err, d)
		}
		gv, err := schema.ParseGroupVersion(u.GetAPIVersion())
		if err != nil {
			c.t.Fatal(err)
		}
		gvr := gv.WithResource(strings.ToLower(u.GetKind()) + "s")
		var r dynamic.ResourceInterface = c.dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			r = c.dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		if _, err := r.Create(context.Background(), u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			c.t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		c.t.Cleanup(func() { _ = r.Delete(context.Background(), u.GetName(), metav1.DeleteOptions{}) })
	}
}

// analyze returns the findings on objects of namespace ns.
func (c *cluster) analyze(ns string) []analyze.Finding {
	c.t.Helper()
	all, err := analyze.Cluster(context.Background(), c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	var out []analyze.Finding
	for _, f := range all {
		if f.Namespace == ns {
			out = append(out, f)
		}
	}
	return out
}

func namespace(ns string) string {
	return "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "}"
}

// find returns the findings of code on the object kind/name.
func find(findings []analyze.Finding, code, kind, name string) []analyze.Finding {
	var out []analyze.Finding
	for _, f := range findings {
		if f.Code == code && f.Kind == kind && f.Name == name {
			out = append(out, f)
		}
	}
	return out
}

func virtualService(ns, name, meta, host string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: %s
  namespace: %s%s
spec:
  hosts: [%s]
  http:
  - route:
    - destination: {host: %s}`, name, ns, meta, host, host)
}

func TestARouteToAHostThatDoesNotExistFailsOnFlotillasObjectOnly(t *testing.T) {
	c := newCluster(t)
	const ns = "analyze-missing-host"
	host := "missing." + ns + ".svc.cluster.local"
	c.apply(namespace(ns),
		virtualService(ns, "flotillas", flotillaMeta, host),
		virtualService(ns, "users", "", host))
	findings := c.analyze(ns)

	ours := find(findings, "IST0101", "VirtualService", "flotillas")
	if len(ours) != 1 || !ours[0].Managed || !ours[0].Fails() {
		t.Errorf("Flotilla's VirtualService: want one failing IST0101, got %v (all: %v)", ours, findings)
	}
	theirs := find(findings, "IST0101", "VirtualService", "users")
	if len(theirs) != 1 || theirs[0].Managed || theirs[0].Fails() {
		t.Errorf("the user's VirtualService: want one IST0101 that is logged, not failed, got %v (all: %v)", theirs, findings)
	}
}

func TestAGatewayRouteWithoutTheSubsetsAnotherVirtualServiceUsesFails(t *testing.T) {
	c := newCluster(t)
	const ns = "analyze-gateway-subsets"
	host := "cart." + ns + ".svc.cluster.local"
	c.apply(namespace(ns),
		`apiVersion: v1
kind: Service
metadata: {name: cart, namespace: `+ns+`}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 80}]`,
		`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: cart
  namespace: `+ns+flotillaMeta+`
spec:
  host: `+host+`
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}`,
		`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: cart
  namespace: `+ns+flotillaMeta+`
spec:
  hosts: [`+host+`]
  http:
  - route:
    - {destination: {host: `+host+`, subset: v1}, weight: 90}
    - {destination: {host: `+host+`, subset: v2}, weight: 10}`,
		`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop-gateway
  namespace: `+ns+flotillaMeta+`
spec:
  hosts: [shop.example.com]
  gateways: [`+ns+`/shop]
  http:
  - match: [{uri: {prefix: /cart}}]
    route:
    - destination: {host: `+host+`}`)
	findings := c.analyze(ns)
	got := find(findings, "IST0140", "VirtualService", "shop-gateway")
	if len(got) != 1 || !got[0].Fails() {
		t.Errorf("want one failing IST0140 on the gateway's VirtualService, got %v (all: %v)", got, findings)
	}
}

func TestTheWildcardDefaultDestinationRuleIsAKnownLimitationOnlyForItsOwnNamespace(t *testing.T) {
	c := newCluster(t)
	const ns = "analyze-wildcard-dr"
	dr := func(name, host string) string {
		return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: %s
  namespace: %s%s
spec:
  host: '%s'
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1000}}}`, name, ns, flotillaMeta, host)
	}
	c.apply(namespace(ns),
		dr("flotilla-default", "*."+ns+".svc.cluster.local"),
		dr("other-default", "*."+ns+".svc.cluster.local"),
		dr("missing", "missing."+ns+".svc.cluster.local"))
	findings := c.analyze(ns)

	def := find(findings, "IST0174", "DestinationRule", "flotilla-default")
	if len(def) != 1 || def[0].Limitation == nil || def[0].Fails() {
		t.Errorf("the workspace default: want one IST0174 covered by the limitation, got %v", def)
	}
	for _, name := range []string{"other-default", "missing"} {
		if got := find(findings, "IST0174", "DestinationRule", name); len(got) != 1 || !got[0].Fails() {
			t.Errorf("%s: want one failing IST0174 (the limitation is for the workspace default alone), got %v", name, got)
		}
	}
}
