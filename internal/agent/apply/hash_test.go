package apply

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// desiredFor prepares obj the way Apply does, without a cluster.
func desiredFor(t *testing.T, obj *unstructured.Unstructured) *desiredObject {
	t.Helper()
	obj = obj.DeepCopy()
	h, err := contentHash(obj.Object)
	if err != nil {
		t.Fatal(err)
	}
	a := obj.GetAnnotations()
	a[HashAnnotation] = h
	obj.SetAnnotations(a)
	return &desiredObject{key: keyOf(obj), obj: obj, hash: h}
}

func sampleVirtualService() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{
			"name": "web", "namespace": "payments",
			"labels":      map[string]any{ManagedByLabel: ManagedByValue},
			"annotations": map[string]any{OwnerAnnotation: "tenants/acme/workspaces/payments/trafficsettings/web"},
		},
		"spec": map[string]any{
			"hosts": []any{"web"},
			"http": []any{map[string]any{
				"route": []any{map[string]any{"destination": map[string]any{"host": "web"}, "weight": int64(100)}},
			}},
		},
	}}
}

func TestLiveObjectWithServerAddedFieldsIsUpToDate(t *testing.T) {
	d := desiredFor(t, sampleVirtualService())
	live := d.obj.DeepCopy()
	live.SetResourceVersion("42")
	live.SetUID("u-1")
	live.SetLabels(map[string]string{ManagedByLabel: ManagedByValue, "team": "added-by-a-user"})
	live.Object["status"] = map[string]any{"observedGeneration": int64(3)}
	route := live.Object["spec"].(map[string]any)["http"].([]any)[0].(map[string]any)
	route["timeout"] = "10s" // a field another manager set
	if !upToDate(live, d) {
		t.Error("a live object holding everything desired, plus server and user fields, is not up to date")
	}
}

func TestEditedOrReHashedLiveObjectIsNotUpToDate(t *testing.T) {
	d := desiredFor(t, sampleVirtualService())
	edits := map[string]func(live *unstructured.Unstructured){
		"a desired value edited": func(live *unstructured.Unstructured) {
			_ = unstructured.SetNestedStringSlice(live.Object, []string{"evil"}, "spec", "hosts")
		},
		"a route removed": func(live *unstructured.Unstructured) {
			_ = unstructured.SetNestedSlice(live.Object, []any{}, "spec", "http")
		},
		"the owner annotation changed": func(live *unstructured.Unstructured) {
			live.SetAnnotations(map[string]string{OwnerAnnotation: "someone-else", HashAnnotation: d.hash})
		},
		"the hash annotation of another content": func(live *unstructured.Unstructured) {
			a := live.GetAnnotations()
			a[HashAnnotation] = "0000"
			live.SetAnnotations(a)
		},
	}
	for name, edit := range edits {
		live := d.obj.DeepCopy()
		edit(live)
		if upToDate(live, d) {
			t.Errorf("%s: live object counts as up to date", name)
		}
	}
}

func TestContentHashIgnoresItsOwnAnnotationStatusAndMapOrder(t *testing.T) {
	a := sampleVirtualService()
	b := a.DeepCopy()
	b.SetAnnotations(map[string]string{OwnerAnnotation: "tenants/acme/workspaces/payments/trafficsettings/web", HashAnnotation: "x"})
	b.Object["status"] = map[string]any{"anything": true}
	b.SetResourceVersion("7")
	ha, _ := contentHash(a.Object)
	hb, _ := contentHash(b.Object)
	if ha != hb {
		t.Errorf("hashes differ: %s vs %s", ha, hb)
	}
	_ = unstructured.SetNestedField(b.Object, "other", "spec", "hosts")
	if hc, _ := contentHash(b.Object); hc == ha {
		t.Error("changing spec does not change the hash")
	}
}

func TestReportIsSortedAndGroupsFailuresAndOwners(t *testing.T) {
	results := []ObjectResult{
		{Owner: "o2", APIVersion: "networking.istio.io/v1", Kind: "VirtualService", Namespace: "b", Name: "x", Action: Failed, Message: "boom"},
		{Owner: "o1", APIVersion: "networking.istio.io/v1", Kind: "VirtualService", Namespace: "a", Name: "y", Action: Created},
		{Owner: "o1", APIVersion: "networking.istio.io/v1", Kind: "DestinationRule", Namespace: "a", Name: "y", Action: Unchanged},
		{Owner: "o2", APIVersion: "security.istio.io/v1", Kind: "PeerAuthentication", Namespace: "a", Name: "z", Action: Deleted},
	}
	sortResults(results)
	r := Report{Results: results}
	var order []string
	for _, res := range r.Results {
		order = append(order, res.Kind+" "+res.Namespace+"/"+res.Name)
	}
	want := []string{"DestinationRule a/y", "VirtualService a/y", "VirtualService b/x", "PeerAuthentication a/z"}
	if diff := cmp.Diff(want, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	if f := r.Failed(); len(f) != 1 || f[0].Name != "x" {
		t.Errorf("Failed() = %+v, want VirtualService b/x", f)
	}
	if err := r.Err(); err == nil || err.Error() != "boom" {
		t.Errorf("Err() = %v, want boom", err)
	}
	by := r.ByOwner()
	if len(by["o1"]) != 2 || len(by["o2"]) != 2 || by["o2"][0].Name != "x" {
		t.Errorf("ByOwner() = %+v", by)
	}
	if r.Count(Created) != 1 || r.Count(Deleted) != 1 {
		t.Errorf("Count: Created %d, Deleted %d, want 1 each", r.Count(Created), r.Count(Deleted))
	}
}
