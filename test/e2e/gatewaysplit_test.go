package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

// gatewaySplitIntent exposes /cart of shop.example.com through c1's ingress
// gateway (namespace ingress) and, with cartRoute, splits cart 90/10.
const gatewaySplitIntent = `apiVersion: flotilla.io/v1alpha1
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
  namespaceSelector: {names: ["*/shop", "*/ingress"]}
---
apiVersion: flotilla.io/v1alpha1
kind: Group
metadata: {name: ingress, organization: acme, tenant: fintech, workspace: shop}
spec:
  type: gateway
  namespaceSelector: {names: ["*/ingress"]}
---
apiVersion: flotilla.io/v1alpha1
kind: Group
metadata: {name: routes, organization: acme, tenant: fintech, workspace: shop}
spec:
  type: traffic
  namespaceSelector: {names: ["*/shop"]}
---
apiVersion: flotilla.io/v1alpha1
kind: IngressGateway
metadata: {name: shop, organization: acme, tenant: fintech, workspace: shop, group: ingress}
spec:
  workloadSelector: {namespace: ingress, labels: {istio: ingressgateway}}
  http:
  - name: web
    hostname: shop.example.com
    port: 80
    routing:
      rules:
      - match: [{path: {prefix: /cart}}]
        route: {host: shop/cart.shop.svc.cluster.local}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, organization: acme}
`

const cartRoute = `apiVersion: flotilla.io/v1alpha1
kind: ServiceRoute
metadata: {name: cart, organization: acme, tenant: fintech, workspace: shop, group: routes}
spec:
  service: shop/cart
  subsets:
  - {name: v1, labels: {version: v1}, weight: 90}
  - {name: v2, labels: {version: v2}, weight: 10}
`

// A ServiceRoute's 90/10 split holds for the requests that enter through
// the ingress gateway, not only for the mesh's own: plan shows the
// gateway's VirtualService taking the split, and c1's istiod tells the
// ingress gateway proxy to send /cart 90/10 to the two versions.
func TestAServiceRoutesSplitHoldsForTrafficThroughTheIngressGateway(t *testing.T) {
	c := clusters(t)[0]
	c.runIngressGateway(t, "127.0.12.1")
	c.runWorkloads(t, workload{namespace: "ingress", name: "ingressgateway", labels: map[string]string{"istio": "ingressgateway"}}) // its pod
	c.reset(t, "shop")
	ctx := context.Background()
	for _, gvr := range []schema.GroupVersionResource{destRuleGVR, virtualServiceGVR} {
		_ = c.dyn.Resource(gvr).Namespace("shop").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	}
	_ = c.kube.CoreV1().Pods("shop").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	c.runService(t, "cart", 1)
	if _, err := c.kube.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart-" + v, Labels: map[string]string{"app": "cart", "version": v}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "cart", Image: "cart:" + v}}}}
		if _, err := c.kube.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	s := startServer(t, dir)
	if r := s.flotilla(gatewaySplitIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	s.startAgents(t, dir, c)
	const host = "cart.shop.svc.cluster.local"
	probe := xdsprobe.Proxy{Type: xdsprobe.Gateway, Namespace: "ingress", Workload: "ingressgateway",
		Labels: map[string]string{"istio": "ingressgateway"}, Cluster: c.name, Network: c.info.Network,
		Region: c.info.Region, Zone: c.info.Zone}
	c.xds(t, probe, "the gateway routes /cart to cart, unsplit", func(snap *xdsprobe.Snapshot) error {
		if got, want := snap.Upstreams("shop.example.com"), []string{"outbound|9080||" + host}; !slices.Equal(got, want) {
			return fmt.Errorf("upstreams %v, want %v", got, want)
		}
		return nil
	})

	// plan: the route changes the gateway's VirtualService as well as
	// writing its own objects.
	r := s.flotilla(cartRoute, "plan", "-f", "-")
	for _, want := range []string{
		"+ create VirtualService shop/cart",
		"+ create DestinationRule shop/cart",
		"~ update VirtualService ingress/shop-web",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("plan lacks %q: %+v", want, r)
		}
	}

	s.must("apply", "-f", writeFile(t, dir, "route.yaml", cartRoute))
	want := map[string]uint32{"outbound|9080|v1|" + host: 90, "outbound|9080|v2|" + host: 10}
	c.xds(t, probe, "the gateway splits /cart 90/10", func(snap *xdsprobe.Snapshot) error {
		if got := snap.WeightedClusters("shop.example.com"); !maps.Equal(got, want) {
			return fmt.Errorf("weighted clusters %v, want %v", got, want)
		}
		return nil
	})
	analyzeClusters(t, c)
}
