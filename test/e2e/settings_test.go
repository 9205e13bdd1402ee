package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

var (
	peerAuthGVR       = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
	authzPolicyGVR    = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	virtualServiceGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
)

const settingsIntent = `apiVersion: flotilla.io/v1alpha1
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
kind: Group
metadata: {name: routes, organization: acme, tenant: fintech, workspace: shop}
spec:
  type: traffic
  namespaceSelector: {names: ["*/shop"]}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c2, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: OrganizationSetting
metadata: {name: defaults, organization: acme}
spec:
  defaultSecuritySetting:
    mtlsMode: STRICT
    authorization: {mode: NAMESPACE}
    propagationStrategy: STRICTER
`

const relaxSetting = `apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: shop, organization: acme, tenant: fintech}
spec:
  namespaceSelector: {names: ["*/shop"]}
---
apiVersion: flotilla.io/v1alpha1
kind: WorkspaceSetting
metadata: {name: relaxed, organization: acme, tenant: fintech, workspace: shop}
spec:
  defaultSecuritySetting: {mtlsMode: PERMISSIVE}
`

func serviceRoute(v1, v2 int) string {
	return fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: ServiceRoute
metadata: {name: reviews, organization: acme, tenant: fintech, workspace: shop, group: routes}
spec:
  service: shop/reviews
  subsets:
  - {name: v1, labels: {version: v1}, weight: %d}
  - {name: v2, labels: {version: v2}, weight: %d}
`, v1, v2)
}

// sidecar fetches, through the cluster's istiod, what a sidecar in
// namespace ns would be told, until check passes (30 s at most).
func (c *kcluster) sidecar(t *testing.T, ns, what string, check func(*xdsprobe.Snapshot) error) {
	t.Helper()
	c.xds(t, xdsprobe.Proxy{Namespace: ns, Workload: "productpage", Labels: map[string]string{"app": "productpage"},
		Cluster: c.name, Network: c.info.Network, Region: c.info.Region, Zone: c.info.Zone}, what, check)
}

// xds fetches, through the cluster's istiod, what proxy p would be told,
// until check passes (30 s at most).
func (c *kcluster) xds(t *testing.T, p xdsprobe.Proxy, what string, check func(*xdsprobe.Snapshot) error) {
	t.Helper()
	if c.info.Istiod == nil {
		t.Fatalf("%s has no istiod: start the fleet with Istio", c.name)
	}
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		snap, err := xdsprobe.Fetch(ctx, c.info.Istiod.GRPC, p)
		cancel()
		if err == nil {
			if last = check(snap); last == nil {
				return
			}
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %s: %v", c.name, what, last)
}

// An organization's STRICTER security defaults and a team's ServiceRoute,
// across two real clusters with istiod: a workspace cannot relax the
// defaults; the route lands as DestinationRule + VirtualService in both;
// changing its split rewrites only the VirtualService; `get effective`
// names where each setting came from; the data plane is told STRICT mTLS,
// the namespace's principals and the weighted split; and deleting the
// organization setting removes what it generated everywhere.
func TestSettingsInheritAcrossTwoClustersAndReachTheDataPlane(t *testing.T) {
	cs := clusters(t)
	for _, c := range cs {
		c.reset(t, "shop")
		// What other tests left in shop (a user's DestinationRule for reviews
		// would rightly keep the route out).
		for _, gvr := range []schema.GroupVersionResource{destRuleGVR, virtualServiceGVR, peerAuthGVR, authzPolicyGVR} {
			_ = c.dyn.Resource(gvr).Namespace("shop").DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		}
		_ = c.kube.CoreV1().Pods("shop").DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		c.runService(t, "reviews", 1)
	}
	dir := t.TempDir()
	s := startServer(t, dir)
	if r := s.flotilla(settingsIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}

	// 1. The organization's defaults land in both clusters.
	for _, c := range cs {
		eventually(t, 60*time.Second, c.name+": the organization's PeerAuthentication and AuthorizationPolicy", func() error {
			pa, err := c.get(peerAuthGVR, "shop", "flotilla-default")
			if err != nil {
				return err
			}
			if mode := fmt.Sprint(pa.Object["spec"].(map[string]any)["mtls"]); mode != "map[mode:STRICT]" {
				return fmt.Errorf("mtls %s", mode)
			}
			_, err = c.get(authzPolicyGVR, "shop", "flotilla-allow")
			return err
		})
	}

	// 2. A workspace that tries to relax mTLS is refused with the reason,
	// and nothing is stored.
	file := filepath.Join(dir, "relax.yaml")
	if err := os.WriteFile(file, []byte(relaxSetting), 0o600); err != nil {
		t.Fatal(err)
	}
	r := s.flotilla("", "apply", "-f", file)
	if r.code == 0 {
		t.Fatalf("relaxing a STRICTER default was accepted: %+v", r)
	}
	for _, want := range []string{"relax.yaml", "document 2", "spec.defaultSecuritySetting.mtlsMode",
		"organizations/acme/organizationsettings/defaults (organization level) set STRICTER", "PERMISSIVE is weaker than STRICT"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("the refusal does not say %q:\n%s", want, r.stderr)
		}
	}
	if out := s.must("get", "workspacesettings", "--org", "acme"); strings.Contains(out, "relaxed") {
		t.Fatalf("the refused setting was stored:\n%s", out)
	}

	// 3. A 90/10 ServiceRoute lands in both clusters.
	s.must("apply", "-f", writeFile(t, dir, "route.yaml", serviceRoute(90, 10)))
	weights := func(c *kcluster) (string, error) {
		vs, err := c.get(virtualServiceGVR, "shop", "reviews")
		if err != nil {
			return "", err
		}
		http, _ := vs.Object["spec"].(map[string]any)["http"].([]any)
		var w []string
		for _, h := range http {
			for _, d := range h.(map[string]any)["route"].([]any) {
				w = append(w, fmt.Sprint(d.(map[string]any)["destination"].(map[string]any)["subset"], "=", d.(map[string]any)["weight"]))
			}
		}
		return strings.Join(w, ","), nil
	}
	for _, c := range cs {
		eventually(t, 30*time.Second, c.name+": the ServiceRoute's DestinationRule and VirtualService", func() error {
			if _, err := c.get(destRuleGVR, "shop", "reviews"); err != nil {
				return err
			}
			if got, err := weights(c); err != nil || got != "v1=90,v2=10" {
				return fmt.Errorf("weights %q %v", got, err)
			}
			return nil
		})
	}

	// The subsets match no pod yet: the route's status warns, per cluster;
	// once c1 runs pods of both versions, its warning goes.
	eventually(t, 30*time.Second, "the warning about subsets without pods", func() error {
		_, rows := s.status("serviceroute", "reviews")
		for _, c := range cs {
			if rows[c.name].State != "Applied" || !strings.Contains(rows[c.name].Message, "subset v2 (version=v2) matches no pod in namespace shop of cluster "+c.name) {
				return fmt.Errorf("status rows %+v", rows)
			}
		}
		return nil
	})
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := cs[0].kube.CoreV1().ServiceAccounts("shop").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "reviews-" + v, Labels: map[string]string{"app": "reviews", "version": v}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "reviews", Image: "reviews:" + v}}}}
		if _, err := cs[0].kube.CoreV1().Pods("shop").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "c1's warning gone once its pods run", func() error {
		_, rows := s.status("serviceroute", "reviews")
		if rows["c1"].State != "Applied" || strings.Contains(rows["c1"].Message, "warning") || !strings.Contains(rows["c2"].Message, "warning") {
			return fmt.Errorf("status rows %+v", rows)
		}
		return nil
	})

	// What the data plane is told, in both clusters.
	const host = "reviews.shop.svc.cluster.local"
	for _, c := range cs {
		c.sidecar(t, "shop", "STRICT mTLS, the namespace's principals and the 90/10 split", func(s *xdsprobe.Snapshot) error {
			if tls, plain := s.InboundChains(); plain != 0 || tls == 0 {
				return fmt.Errorf("inbound chains: %d with TLS, %d plain; want only TLS", tls, plain)
			}
			if got, want := s.InboundPrincipals(), []string{"spiffe://cluster.local/ns/shop/sa/"}; !slices.Equal(got["ALLOW"], want) {
				return fmt.Errorf("RBAC principals %v, want ALLOW %v", got, want)
			}
			want := map[string]uint32{"outbound|9080|v1|" + host: 90, "outbound|9080|v2|" + host: 10}
			if got := s.WeightedClusters(host); !maps.Equal(got, want) {
				return fmt.Errorf("weighted clusters %v, want %v", got, want)
			}
			return nil
		})
	}

	// 4. 50/50 rewrites only the VirtualService.
	versions := func(c *kcluster) map[string]string {
		out := map[string]string{}
		for _, o := range []struct {
			gvr  schema.GroupVersionResource
			name string
		}{{peerAuthGVR, "flotilla-default"}, {authzPolicyGVR, "flotilla-allow"}, {destRuleGVR, "reviews"}, {virtualServiceGVR, "reviews"}} {
			got, err := c.get(o.gvr, "shop", o.name)
			if err != nil {
				t.Fatalf("%s: %s %s: %v", c.name, o.gvr.Resource, o.name, err)
			}
			out[o.gvr.Resource+"/"+o.name] = got.GetResourceVersion()
		}
		return out
	}
	before := map[string]map[string]string{}
	for _, c := range cs {
		before[c.name] = versions(c)
	}
	s.must("apply", "-f", writeFile(t, dir, "route.yaml", serviceRoute(50, 50)))
	for _, c := range cs {
		eventually(t, 30*time.Second, c.name+": the 50/50 split", func() error {
			if got, err := weights(c); err != nil || got != "v1=50,v2=50" {
				return fmt.Errorf("weights %q %v", got, err)
			}
			return nil
		})
		after := versions(c)
		for k, v := range before[c.name] {
			changed := after[k] != v
			if changed != (k == "virtualservices/reviews") {
				t.Fatalf("%s: after the split changed, %s changed=%v (resourceVersion %s → %s); only the VirtualService should", c.name, k, changed, v, after[k])
			}
		}
	}

	// 5. Where each setting in effect came from.
	out := s.must("get", "effective", "--cluster", "c1", "--namespace", "shop")
	for _, want := range []string{"workspace organizations/acme/tenants/fintech/workspaces/shop", "security.mtlsMode", `"STRICT"`,
		"organizations/acme/organizationsettings/defaults", "STRICTER at organization", "security.authorization", `{"mode":"NAMESPACE"}`} {
		if !strings.Contains(out, want) {
			t.Fatalf("get effective does not show %q:\n%s", want, out)
		}
	}

	// 6. Deleting the organization setting removes its objects everywhere;
	// the route stays.
	s.must("delete", "organizationsetting", "defaults", "--org", "acme")
	for _, c := range cs {
		eventually(t, 30*time.Second, c.name+": the organization's objects gone", func() error {
			for _, o := range []struct {
				gvr  schema.GroupVersionResource
				name string
			}{{peerAuthGVR, "flotilla-default"}, {authzPolicyGVR, "flotilla-allow"}} {
				if _, err := c.get(o.gvr, "shop", o.name); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%s %s: %v", o.gvr.Resource, o.name, err)
				}
			}
			return nil
		})
		if _, err := c.get(virtualServiceGVR, "shop", "reviews"); err != nil {
			t.Fatalf("%s: the route's VirtualService went with the organization setting: %v", c.name, err)
		}
	}
	if out := s.must("get", "effective", "--cluster", "c2", "--namespace", "shop"); strings.Contains(out, "security.mtlsMode") {
		t.Fatalf("get effective still shows the deleted setting:\n%s", out)
	}

	// 7. A namespace-wide PeerAuthentication of c2's own is never
	// overwritten: the setting is written in c1 only, and its status in c2
	// says why.
	c2 := cs[1]
	mine := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
		"metadata": map[string]any{"name": "mine", "namespace": "shop"},
		"spec":     map[string]any{"mtls": map[string]any{"mode": "PERMISSIVE"}},
	}}
	made, err := c2.dyn.Resource(peerAuthGVR).Namespace("shop").Create(context.Background(), mine, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c2.dyn.Resource(peerAuthGVR).Namespace("shop").Delete(context.Background(), "mine", metav1.DeleteOptions{})
	})
	// plan already shows the conflict in c2 (its agent reports the
	// cluster's own policies), and which one wins.
	eventually(t, 30*time.Second, "plan showing the conflict with c2's own policy", func() error {
		r := s.flotilla(settingsIntent, "plan", "-f", "-")
		_, c2plan, _ := strings.Cut(r.stdout, "cluster c2:")
		_, c1plan, _ := strings.Cut(strings.Split(r.stdout, "cluster c2:")[0], "cluster c1:")
		if r.code != 0 || !strings.Contains(c2plan, "has its own PeerAuthentication shop/mine") || !strings.Contains(c2plan, "it is kept") ||
			!strings.Contains(c1plan, "+ create PeerAuthentication shop/flotilla-default") || strings.Contains(c2plan, "PeerAuthentication shop/flotilla-default") {
			return fmt.Errorf("plan:\n%s%s", r.stdout, r.stderr)
		}
		return nil
	})
	if r := s.flotilla(settingsIntent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	eventually(t, 30*time.Second, "the setting's status: applied in c1, refused beside c2's own policy", func() error {
		_, rows := s.status("organizationsetting", "defaults")
		if rows["c1"].State != "Applied" || rows["c2"].State != "Failed" || !strings.Contains(rows["c2"].Message, "its own PeerAuthentication shop/mine") {
			return fmt.Errorf("status rows %+v", rows)
		}
		return nil
	})
	if _, err := cs[0].get(peerAuthGVR, "shop", "flotilla-default"); err != nil {
		t.Fatalf("c1: %v", err)
	}
	if _, err := c2.get(peerAuthGVR, "shop", "flotilla-default"); !apierrors.IsNotFound(err) {
		t.Fatalf("c2 got the setting's PeerAuthentication beside its own: %v", err)
	}
	if got, err := c2.get(peerAuthGVR, "shop", "mine"); err != nil || got.GetResourceVersion() != made.GetResourceVersion() {
		t.Fatalf("c2's own PeerAuthentication was touched: %v", err)
	}
	// c2 ran no reviews pods on purpose (the subsets' warning), and c1's lack
	// the sidecar: run both versions, injected, before Istio's analyzers judge
	// the DestinationRule's subsets and the namespace's policies.
	for _, c := range cs {
		c.runWorkloads(t, workload{namespace: "shop", name: "reviews-v1", labels: map[string]string{"app": "reviews", "version": "v1"}},
			workload{namespace: "shop", name: "reviews-v2", labels: map[string]string{"app": "reviews", "version": "v2"}})
	}
	analyzeClusters(t, cs...)
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
