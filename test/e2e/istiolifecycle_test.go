package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/testfleet/agentchart"
	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	mwcGVR = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}
	vwcGVR = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"}
	depGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	svcGVR = schema.GroupVersionResource{Version: "v1", Resource: "services"}
)

// istioIntent is the organization, the bare cluster and an
// IstioInstallation that selects it by label, as a platform team writes it.
func istioIntent(cluster, selector string) string {
	return fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: %s, organization: acme}
spec: {network: net3, region: region-3, labels: {env: lab}}
---
apiVersion: flotilla.io/v1alpha1
kind: IstioInstallation
metadata: {name: stable, organization: acme}
spec:
  clusters: %s
  version: "1.31"
  tags: [default]
  values:
    istiod: {autoscaleEnabled: false, replicaCount: 1}
  gateways:
    - {name: istio-ingressgateway, type: ingress}
    - {name: istio-eastwestgateway, type: eastwest}
`, cluster, selector)
}

// From a bare cluster (no Istio CRDs, no istio-system), an
// IstioInstallation gives, through an agent installed by its chart with
// istioLifecycle.enabled and running under exactly that RBAC: Istio's CRDs,
// istiod, its webhooks, an ingress and an east-west gateway on the cluster's
// network; status Applied. A hand-deleted istiod comes back; when the
// installation no longer selects the cluster, what it made is pruned, but
// the CRDs are released, not deleted (deleting one deletes every object of
// its kind).
func TestAnIstioInstallationInstallsIstioIntoABareCluster(t *testing.T) {
	c3 := bareClusters(t)[0]
	ctx := context.Background()
	if _, err := c3.kube.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("%s is not bare (run this test first, or alone): istio-system: %v", c3.name, err)
	}
	dir := t.TempDir()
	s := startServer(t, dir)
	if r := s.flotilla(istioIntent(c3.name, "{labels: {env: lab}}"), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	valuesYAML := s.must("cluster", "onboard", c3.name, "-o", "helm-values")
	var values map[string]any
	if err := yaml.Unmarshal([]byte(valuesYAML), &values); err != nil {
		t.Fatal(err)
	}
	values["istioLifecycle"] = map[string]any{"enabled": true}
	agentchart.Install(t, c3.kubeconfig, values)
	pod := agentchart.PodOf(t, c3.info.RESTConfig(t), dir)
	if !strings.Contains(strings.Join(pod.Args, " "), "--istio-lifecycle") {
		t.Fatalf("the chart's pod lacks --istio-lifecycle: %v", pod.Args)
	}
	startProcess(t, dir, nil, pod.Args...) // its log is in the test's on failure

	managed := func(gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
		var o *unstructured.Unstructured
		var err error
		if ns == "" {
			o, err = c3.dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		} else {
			o, err = c3.dyn.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return nil, err
		}
		if o.GetLabels()["app.kubernetes.io/managed-by"] != "flotilla" || o.GetAnnotations()["flotilla.io/owner"] != "organizations/acme/istioinstallations/stable" {
			return nil, fmt.Errorf("%s %s is not the installation's: %v %v", o.GetKind(), name, o.GetLabels(), o.GetAnnotations())
		}
		return o, nil
	}
	t.Run("Istio is installed", func(t *testing.T) {
		eventually(t, 90*time.Second, "Istio's CRDs, istiod, its webhooks and the gateways in "+c3.name, func() error {
			crd, err := managed(crdGVR, "", "virtualservices.networking.istio.io")
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			if !strings.Contains(fmt.Sprint(conds), "type:Established") {
				return fmt.Errorf("the VirtualService CRD is not established: %v", conds)
			}
			for _, o := range []struct {
				gvr      schema.GroupVersionResource
				ns, name string
			}{
				{depGVR, "istio-system", "istiod"},
				{mwcGVR, "", "istio-sidecar-injector"},
				{vwcGVR, "", "istiod-default-validator"},
				{depGVR, "istio-system", "istio-ingressgateway"},
				{svcGVR, "istio-system", "istio-ingressgateway"},
			} {
				if _, err := managed(o.gvr, o.ns, o.name); err != nil {
					return err
				}
			}
			ew, err := managed(svcGVR, "istio-system", "istio-eastwestgateway")
			if err != nil {
				return err
			}
			if ew.GetLabels()["istio"] != "eastwestgateway" || ew.GetLabels()["topology.istio.io/network"] != "net3" {
				return fmt.Errorf("the east-west gateway is not the network's: %v", ew.GetLabels())
			}
			return nil
		})
		eventually(t, 30*time.Second, "the installation Applied in "+c3.name, func() error {
			if _, rows := s.status("istioinstallation", "stable"); rows[c3.name].State != "Applied" {
				return fmt.Errorf("status: %+v", rows[c3.name])
			}
			return nil
		})
		// The gateways came after istiod was available (Istio's order).
		istiod, err := c3.kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var available *metav1.Time
		for _, c := range istiod.Status.Conditions {
			if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue {
				available = &c.LastTransitionTime
			}
		}
		if available == nil {
			t.Fatalf("istiod is not Available: %+v", istiod.Status)
		}
		for _, name := range []string{"istio-ingressgateway", "istio-eastwestgateway"} {
			gw, err := c3.kube.AppsV1().Deployments("istio-system").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if gw.CreationTimestamp.Before(available) {
				t.Errorf("gateway %s was created at %s, before istiod was available (%s)", name, gw.CreationTimestamp, available)
			}
		}
	})
	t.Run("get istio shows the revision, its webhooks and its proxies", func(t *testing.T) {
		// A pod its sidecar status says the default revision injected (the
		// fleet has no istiod serving the webhook, so it is made so).
		if _, err := c3.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps", Annotations: map[string]string{"sidecar.istio.io/status": `{"revision":"default","containers":["istio-proxy"]}`}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}}}
		// Admission looks the pod's ServiceAccount up; the e2e fleet has no
		// controller manager to make it.
		if _, err := c3.kube.CoreV1().ServiceAccounts("apps").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if _, err := c3.kube.CoreV1().Pods("apps").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 40*time.Second, "get istio "+c3.name, func() error {
			var rows []struct {
				Cluster, Revision, Installation, State string
				Running                                bool
				Version                                string
				Replicas                               int
				Webhooks                               []string
				Proxies                                int
			}
			out := s.must("get", "istio", c3.name, "-o", "json")
			if err := json.Unmarshal([]byte(out), &rows); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if len(rows) != 1 {
				return fmt.Errorf("rows: %s", out)
			}
			r := rows[0]
			if r.Cluster != c3.name || r.Revision != "default" || r.Installation != "stable" || r.State != "Applied" || !r.Running ||
				r.Version != "1.31.0" || r.Replicas != 1 || !slices.Contains(r.Webhooks, "istio-sidecar-injector") || r.Proxies != 1 {
				return fmt.Errorf("get istio: %s", out)
			}
			return nil
		})
		if out := s.must("get", "istio"); !strings.Contains(out, "istio-sidecar-injector") || !strings.Contains(out, "PROXIES") {
			t.Errorf("get istio's table:\n%s", out)
		}
		out := s.must("describe", "istio", c3.name)
		for _, want := range []string{"Revision default:", "organizations/acme/istioinstallations/stable (version 1.31", "istio-ingressgateway (ingress)", "1 (pods a restart would move"} {
			if !strings.Contains(out, want) {
				t.Errorf("describe istio lacks %q:\n%s", want, out)
			}
		}
	})
	// Istio's analyzers judge the cluster as installed.
	analyzeClusters(t, c3)
	t.Run("a hand-deleted istiod is repaired", func(t *testing.T) {
		if err := c3.dyn.Resource(depGVR).Namespace("istio-system").Delete(ctx, "istiod", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "istiod restored", func() error {
			_, err := managed(depGVR, "istio-system", "istiod")
			return err
		})
	})
	t.Run("deselected, it is pruned and its CRDs are kept", func(t *testing.T) {
		// The pod of the revision holds it, unless forced.
		if r := s.flotilla(istioIntent(c3.name, "{names: [elsewhere]}"), "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, c3.name+" (1)") {
			t.Fatalf("deselecting a cluster whose pods use the revision: exit %d, %s", r.code, r.stderr)
		}
		if r := s.flotilla(istioIntent(c3.name, "{names: [elsewhere]}"), "apply", "-f", "-", "--force"); r.code != 0 {
			t.Fatalf("apply --force: %s", r.stderr)
		}
		eventually(t, 60*time.Second, "istiod and the gateways pruned", func() error {
			for _, o := range []struct {
				gvr      schema.GroupVersionResource
				ns, name string
			}{{depGVR, "istio-system", "istiod"}, {mwcGVR, "", "istio-sidecar-injector"}, {svcGVR, "istio-system", "istio-eastwestgateway"}} {
				if _, err := c3.dyn.Resource(o.gvr).Namespace(o.ns).Get(ctx, o.name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%s %s: %v", o.gvr.Resource, o.name, err)
				}
			}
			crd, err := c3.dyn.Resource(crdGVR).Get(ctx, "virtualservices.networking.istio.io", metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("the VirtualService CRD was deleted: %w", err)
			}
			if crd.GetLabels()["app.kubernetes.io/managed-by"] == "flotilla" {
				return fmt.Errorf("the VirtualService CRD is still Flotilla's")
			}
			return nil
		})
		eventually(t, 30*time.Second, "the installation Applied (nothing) in "+c3.name, func() error {
			if _, rows := s.status("istioinstallation", "stable"); rows[c3.name].State != "Applied" {
				return fmt.Errorf("status: %+v", rows[c3.name])
			}
			return nil
		})
	})
}

// revisionIntent is the organization, the bare clusters, and one
// IstioInstallation per revision (name → tags), all selecting env=lab.
func revisionIntent(clusters []*kcluster, revisions map[string][]string) string {
	return revisionIntentWith(clusters, revisions, "")
}

// revisionIntentWith is revisionIntent with every installation of profile.
func revisionIntentWith(clusters []*kcluster, revisions map[string][]string, profile string) string {
	var b strings.Builder
	b.WriteString("apiVersion: flotilla.io/v1alpha1\nkind: Organization\nmetadata: {name: acme}\n")
	for i, c := range clusters {
		fmt.Fprintf(&b, "---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: %s, organization: acme}\nspec: {network: net%d, labels: {env: lab}}\n", c.name, i+3)
	}
	for _, rev := range slices.Sorted(maps.Keys(revisions)) {
		tags, _ := json.Marshal(revisions[rev])
		fmt.Fprintf(&b, "---\napiVersion: flotilla.io/v1alpha1\nkind: IstioInstallation\nmetadata: {name: %s, organization: acme}\n"+
			"spec: {clusters: {labels: {env: lab}}, version: \"1.31\", revision: %s, profile: %q, tags: %s, values: {istiod: {autoscaleEnabled: false}}}\n", rev, rev, profile, tags)
	}
	return b.String()
}

// tagTarget is the istiod Service that the revision tag's webhook calls in
// the cluster, for a namespace labelled istio.io/rev=<tag>.
func tagTarget(ctx context.Context, c *kcluster, tag string) (string, error) {
	h, err := c.dyn.Resource(mwcGVR).Get(ctx, "istio-revision-tag-"+tag, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	hooks, _, _ := unstructured.NestedSlice(h.Object, "webhooks")
	var services []string
	for _, w := range hooks {
		svc, _, _ := unstructured.NestedString(w.(map[string]any), "clientConfig", "service", "name")
		values := fmt.Sprint(w.(map[string]any)["namespaceSelector"])
		if strings.Contains(values, tag) {
			services = append(services, svc)
		}
	}
	services = slices.Compact(services)
	if len(services) != 1 {
		return "", fmt.Errorf("tag %s in %s calls %v", tag, c.name, services)
	}
	return services[0], nil
}

// A canary upgrade by revision on two bare clusters: the new revision is
// installed beside the old one; moving a revision tag moves its namespaces'
// injection to the new istiod, and moving it back is the rollback; the old
// revision is refused for removal while a pod still runs a proxy it
// injected, and removed, in both clusters, once none does; the ambient
// profile then brings istio-cni and ztunnel. Every step is in the audit log.
func TestACanaryUpgradeByRevisionOnTwoClusters(t *testing.T) {
	cs := bareClusters(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := startServer(t, dir)
	apply := func(revisions map[string][]string, extra ...string) {
		t.Helper()
		if r := s.flotilla(revisionIntent(cs, revisions), append([]string{"apply", "-f", "-"}, extra...)...); r.code != 0 {
			t.Fatalf("apply: %s", r.stderr)
		}
	}
	apply(map[string][]string{"1-31-a": {"default", "prod-stable"}})
	for _, c := range cs {
		c.reset(t, "apps")
		values := map[string]any{}
		if err := yaml.Unmarshal([]byte(s.must("cluster", "onboard", c.name, "-o", "helm-values")), &values); err != nil {
			t.Fatal(err)
		}
		values["istioLifecycle"] = map[string]any{"enabled": true}
		agentchart.Install(t, c.kubeconfig, values)
		cdir := filepath.Join(dir, c.name)
		if err := os.MkdirAll(cdir, 0o700); err != nil {
			t.Fatal(err)
		}
		startProcess(t, cdir, nil, agentchart.PodOf(t, c.info.RESTConfig(t), cdir).Args...)
	}
	deployments := func(c *kcluster) ([]string, error) {
		l, err := c.dyn.Resource(depGVR).Namespace("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
		if err != nil {
			return nil, err
		}
		var out []string
		for _, d := range l.Items {
			out = append(out, d.GetName())
		}
		slices.Sort(out)
		return out, nil
	}
	revisionsAre := func(want ...string) func() error {
		return func() error {
			for _, c := range cs {
				got, err := deployments(c)
				if err != nil || !slices.Equal(got, want) {
					return fmt.Errorf("%s runs istiod %v (%v), want %v", c.name, got, err, want)
				}
			}
			return nil
		}
	}
	tagIs := func(tag, service string) func() error {
		return func() error {
			for _, c := range cs {
				if got, err := tagTarget(ctx, c, tag); err != nil || got != service {
					return fmt.Errorf("%s: tag %s calls %q (%v), want %s", c.name, tag, got, err, service)
				}
			}
			return nil
		}
	}
	eventually(t, 90*time.Second, "revision 1-31-a in both clusters", revisionsAre("istiod-1-31-a"))
	eventually(t, 10*time.Second, "prod-stable on 1-31-a", tagIs("prod-stable", "istiod-1-31-a"))

	// The canary beside it.
	apply(map[string][]string{"1-31-a": {"default", "prod-stable"}, "1-31-b": {"prod-canary"}})
	eventually(t, 60*time.Second, "both revisions in both clusters", revisionsAre("istiod-1-31-a", "istiod-1-31-b"))
	eventually(t, 10*time.Second, "prod-canary on 1-31-b", tagIs("prod-canary", "istiod-1-31-b"))
	// A proxy of the new revision, asking its istiod, gets the mesh's
	// config: a real istiod runs for the Deployment Flotilla installed.
	for i, c := range cs {
		eventually(t, 90*time.Second, "istiod-1-31-b serving xDS in "+c.name, func() error {
			istiods, err := fleet.Istiods(c.name)
			if err != nil || istiods["1-31-b"].GRPC == "" {
				return fmt.Errorf("no istiod of 1-31-b in %s yet (%v, %v)", c.name, istiods, err)
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			snap, err := xdsprobe.Fetch(pctx, istiods["1-31-b"].GRPC, xdsprobe.Proxy{Namespace: "apps", Workload: "web", Labels: map[string]string{"app": "web"}, Cluster: c.name, Network: fmt.Sprintf("net%d", i+3)})
			if err != nil {
				return err
			}
			if snap.Clusters["outbound|443||kubernetes.default.svc.cluster.local"] == nil {
				return fmt.Errorf("istiod-1-31-b in %s sent %d clusters, not the kubernetes Service's", c.name, len(snap.Clusters))
			}
			return nil
		})
	}
	// plan says, per cluster, what moving the tag does to Istio there,
	// before it happens.
	moved := map[string][]string{"1-31-a": {"default"}, "1-31-b": {"prod-stable", "prod-canary"}}
	pr := s.flotilla(revisionIntent(cs, moved), "plan", "-f", "-")
	for _, c := range cs {
		if pr.code != 0 || !regexpMatch(`(?s)cluster `+c.name+`:\n.*?  istio: move tag prod-stable: revision 1-31-a → 1-31-b`, pr.stdout) {
			t.Fatalf("plan of the tag move for %s (exit %d):\n%s%s", c.name, pr.code, pr.stdout, pr.stderr)
		}
	}
	// Move prod-stable to the canary, then back (the rollback), then again.
	apply(moved)
	eventually(t, 30*time.Second, "prod-stable moved to 1-31-b", tagIs("prod-stable", "istiod-1-31-b"))
	apply(map[string][]string{"1-31-a": {"default", "prod-stable"}, "1-31-b": {"prod-canary"}})
	eventually(t, 30*time.Second, "prod-stable rolled back to 1-31-a", tagIs("prod-stable", "istiod-1-31-a"))
	apply(map[string][]string{"1-31-a": {}, "1-31-b": {"default", "prod-stable", "prod-canary"}})
	eventually(t, 30*time.Second, "every tag on 1-31-b", errorsJoin(tagIs("prod-stable", "istiod-1-31-b"), tagIs("default", "istiod-1-31-b")))

	// A pod still on 1-31-a in the first cluster holds the old revision.
	c3 := cs[0]
	if _, err := c3.kube.CoreV1().ServiceAccounts("apps").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: "apps", Annotations: map[string]string{"sidecar.istio.io/status": `{"revision":"1-31-a"}`}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "old", Image: "old"}}}}
	if _, err := c3.kube.CoreV1().Pods("apps").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 40*time.Second, "the old revision's proxy reported", func() error {
		if out := s.must("get", "istio", c3.name); !regexpMatch(`(?m)^`+c3.name+` +1-31-a +1-31-a +Applied .* 1 +istio-sidecar-injector-1-31-a`, out) {
			return fmt.Errorf("get istio:\n%s", out)
		}
		return nil
	})
	r := s.flotilla("", "delete", "istioinstallation", "1-31-a", "--org", "acme")
	if r.code == 0 || !strings.Contains(r.stderr, c3.name+" (1)") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("removing a revision a pod still uses: exit %d, %s", r.code, r.stderr)
	}
	if err := c3.kube.CoreV1().Pods("apps").Delete(ctx, "old", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 40*time.Second, "no proxy of the old revision reported", func() error {
		if out := s.must("get", "istio", c3.name); !regexpMatch(`(?m)^`+c3.name+` +1-31-a +1-31-a +Applied .* 0 +istio-sidecar-injector-1-31-a`, out) {
			return fmt.Errorf("get istio:\n%s", out)
		}
		return nil
	})
	s.must("delete", "istioinstallation", "1-31-a", "--org", "acme")
	eventually(t, 40*time.Second, "the old revision removed from both clusters", revisionsAre("istiod-1-31-b"))
	// Ambient: the same revision with the ambient profile brings istio-cni
	// and ztunnel, and istiod with ambient enabled.
	if r := s.flotilla(revisionIntentWith(cs, map[string][]string{"1-31-b": {"default", "prod-stable", "prod-canary"}}, "ambient"), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply ambient: %s", r.stderr)
	}
	dsGVR := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	eventually(t, 40*time.Second, "ambient in both clusters", func() error {
		for _, c := range cs {
			for _, ds := range []string{"istio-cni-node", "ztunnel"} {
				if _, err := c.dyn.Resource(dsGVR).Namespace("istio-system").Get(ctx, ds, metav1.GetOptions{}); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
			d, err := c.dyn.Resource(depGVR).Namespace("istio-system").Get(ctx, "istiod-1-31-b", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !strings.Contains(fmt.Sprint(d.Object["spec"]), "name:PILOT_ENABLE_AMBIENT value:true") {
				return fmt.Errorf("%s: istiod-1-31-b without ambient", c.name)
			}
		}
		return nil
	})
	audit := s.must("audit", "--since", "1h")
	if strings.Count(audit, "organizations/acme/istioinstallations/1-31-b") < 4 || !strings.Contains(audit, "organizations/acme/istioinstallations/1-31-a") {
		t.Errorf("the audit log lacks the upgrade's steps:\n%s", audit)
	}
}

func errorsJoin(fs ...func() error) func() error {
	return func() error {
		for _, f := range fs {
			if err := f(); err != nil {
				return err
			}
		}
		return nil
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

// A cluster cut off from the management plane keeps its Istio as it is,
// while intent moves on, and gets the change once the link is back.
func TestACutOffClusterKeepsItsIstioAndGetsTheChangeOnReturn(t *testing.T) {
	c3 := bareClusters(t)[0]
	ctx := context.Background()
	dir := t.TempDir()
	s := startServer(t, dir)
	intent := func(replicas int) string {
		return strings.Replace(istioIntent(c3.name, "{names: ["+c3.name+"]}"), "replicaCount: 1", fmt.Sprintf("replicaCount: %d", replicas), 1)
	}
	if r := s.flotilla(intent(1), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	c3.reset(t, "apps")
	values := map[string]any{}
	if err := yaml.Unmarshal([]byte(s.must("cluster", "onboard", c3.name, "-o", "helm-values")), &values); err != nil {
		t.Fatal(err)
	}
	// The agent reaches the server through a link the test can cut.
	link := newPartition(t, s.addr)
	values["server"] = map[string]any{"url": link.url()}
	values["istioLifecycle"] = map[string]any{"enabled": true}
	agentchart.Install(t, c3.kubeconfig, values)
	startProcess(t, dir, nil, agentchart.PodOf(t, c3.info.RESTConfig(t), dir).Args...)
	replicas := func() (int64, string, error) {
		d, err := c3.dyn.Resource(depGVR).Namespace("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			return 0, "", err
		}
		n, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas")
		return n, d.GetResourceVersion(), nil
	}
	eventually(t, 90*time.Second, "istiod with 1 replica in "+c3.name, func() error {
		if n, _, err := replicas(); err != nil || n != 1 {
			return fmt.Errorf("istiod replicas %d (%v)", n, err)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the installation Applied", func() error {
		if _, rows := s.status("istioinstallation", "stable"); rows[c3.name].State != "Applied" {
			return fmt.Errorf("status: %+v", rows[c3.name])
		}
		return nil
	})

	link.setCut(true)
	eventually(t, 30*time.Second, c3.name+" seen disconnected", func() error {
		if _, rows := s.status("istioinstallation", "stable"); rows[c3.name].Connected {
			return fmt.Errorf("status: %+v", rows[c3.name])
		}
		return nil
	})
	if r := s.flotilla(intent(2), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	// Cut off, the cluster keeps istiod as it was: read it, raw, over a
	// bounded window, right after the change was stored.
	_, rv, err := replicas()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		n, now, err := replicas()
		if err != nil || n != 1 || now != rv {
			t.Fatalf("while cut off, istiod changed: replicas %d, resourceVersion %s→%s (%v)", n, rv, now, err)
		}
		time.Sleep(100 * time.Millisecond) // the window's pace, not a wait for a condition
	}

	link.setCut(false)
	eventually(t, 60*time.Second, "the change in "+c3.name+" once the link is back", func() error {
		if n, _, err := replicas(); err != nil || n != 2 {
			return fmt.Errorf("istiod replicas %d (%v)", n, err)
		}
		return nil
	})
}
