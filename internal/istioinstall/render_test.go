package istioinstall

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func byKey(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	out := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		out[fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())] = o
	}
	return out
}

func TestRenderGivesTheRevisionItsIstiodWebhooksTagsAndGateways(t *testing.T) {
	s := spec(t, map[string]any{"istiod": map[string]any{"replicaCount": 2, "autoscaleEnabled": false}})
	s.Revision, s.Tags = "canary", []string{"prod-canary"}
	s.Gateways = []*pb.IstioGateway{{Name: "istio-ingressgateway", Type: "ingress"}, {Name: "istio-eastwestgateway", Type: "eastwest", Replicas: 3}}
	objs, err := Render(Input{Spec: s, Cluster: Cluster{Name: "c1", Network: "net1", MeshID: "acme"}, Base: true, DefaultRevision: "canary"})
	if err != nil {
		t.Fatal(err)
	}
	got := byKey(objs)
	crds := 0
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			crds++
		}
	}
	if crds < 10 || got["CustomResourceDefinition /virtualservices.networking.istio.io"] == nil {
		t.Errorf("the base chart's CRDs are missing: %d CRDs", crds)
	}
	dep := got["Deployment istio-system/istiod-canary"]
	if dep == nil {
		t.Fatalf("no istiod-canary Deployment in %v", slices.Sorted(func(yield func(string) bool) {
			for k := range got {
				if !yield(k) {
					return
				}
			}
		}))
	}
	if r, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); r != 2 {
		t.Errorf("istiod replicas = %d, want the values' 2", r)
	}
	if l := dep.GetLabels()["istio.io/rev"]; l != "canary" {
		t.Errorf("istiod's revision label = %q", l)
	}
	// Images always name the hub and tag, never the charts' testing image.
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	image := containers[0].(map[string]any)["image"].(string)
	if image != Hub+"/pilot:1.31.0" {
		t.Errorf("istiod image = %q", image)
	}
	// The cluster's values: in istiod's environment.
	if env := fmt.Sprint(containers[0].(map[string]any)["env"]); !strings.Contains(env, "name:CLUSTER_ID value:c1") {
		t.Errorf("istiod's CLUSTER_ID is not c1: %s", env)
	}
	mesh := got["ConfigMap istio-system/istio-canary"]
	if mesh == nil || !strings.Contains(fmt.Sprint(mesh.Object["data"]), "meshId: acme") {
		t.Errorf("the mesh config does not carry meshId acme: %v", mesh)
	}
	for _, k := range []string{
		"MutatingWebhookConfiguration /istio-sidecar-injector-canary",
		"MutatingWebhookConfiguration /istio-revision-tag-prod-canary",
		"ValidatingWebhookConfiguration /istiod-default-validator",
		"Service istio-system/istio-ingressgateway",
		"Deployment istio-system/istio-ingressgateway",
	} {
		if got[k] == nil {
			t.Errorf("no %s", k)
		}
	}
	// The default validator fails closed, as istiod sets it: no flipping.
	v := got["ValidatingWebhookConfiguration /istiod-default-validator"]
	if hooks, _, _ := unstructured.NestedSlice(v.Object, "webhooks"); len(hooks) == 0 || hooks[0].(map[string]any)["failurePolicy"] != "Fail" {
		t.Errorf("default validator's failure policy is not Fail: %v", hooks)
	}
	ew := got["Service istio-system/istio-eastwestgateway"]
	if ew == nil || ew.GetLabels()["istio"] != "eastwestgateway" || ew.GetLabels()["topology.istio.io/network"] != "net1" {
		t.Fatalf("east-west Service labels: %v", ew)
	}
	ports, _, _ := unstructured.NestedSlice(ew.Object, "spec", "ports")
	data, _ := json.Marshal(ports)
	if !strings.Contains(string(data), "15443") {
		t.Errorf("east-west Service lacks the 15443 port: %s", data)
	}
	if r, _, _ := unstructured.NestedInt64(got["Deployment istio-system/istio-eastwestgateway"].Object, "spec", "replicas"); r != 3 {
		t.Errorf("east-west replicas = %d", r)
	}
}

func TestRenderWithoutBaseLeavesTheSharedPartsToAnother(t *testing.T) {
	s := spec(t, nil)
	s.Revision, s.Profile = "canary", "ambient"
	objs, err := Render(Input{Spec: s, Cluster: Cluster{Name: "c1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "DaemonSet" {
			t.Errorf("%s %s rendered by an installation that is not the cluster's base", o.GetKind(), o.GetName())
		}
	}
	objs, err = Render(Input{Spec: s, Cluster: Cluster{Name: "c1"}, Base: true})
	if err != nil {
		t.Fatal(err)
	}
	got := byKey(objs)
	for _, k := range []string{"DaemonSet istio-system/istio-cni-node", "DaemonSet istio-system/ztunnel"} {
		if got[k] == nil {
			t.Errorf("ambient base lacks %s", k)
		}
	}
	env := fmt.Sprint(got["Deployment istio-system/istiod-canary"].Object["spec"])
	if !strings.Contains(env, "PILOT_ENABLE_AMBIENT") {
		t.Error("ambient istiod lacks PILOT_ENABLE_AMBIENT")
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	s := spec(t, map[string]any{"istiod": map[string]any{"env": map[string]any{"A": "1", "B": "2"}}})
	s.Gateways = []*pb.IstioGateway{{Name: "istio-ingressgateway", Type: "ingress"}}
	in := Input{Spec: s, Cluster: Cluster{Name: "c1", Network: "n"}, Base: true}
	a, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Render(in)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Error("two renders of one input differ")
	}
}
