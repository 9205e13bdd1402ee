package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/testfleet/agentchart"
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
	c3 := bareCluster(t)
	ctx := context.Background()
	if _, err := c3.kube.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("%s is not bare: istio-system: %v", c3.name, err)
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
		if r := s.flotilla(istioIntent(c3.name, "{names: [elsewhere]}"), "apply", "-f", "-"); r.code != 0 {
			t.Fatalf("apply: %s", r.stderr)
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
