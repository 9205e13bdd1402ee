package apply_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"flotilla.io/flotilla/internal/agent/apply"
	"flotilla.io/flotilla/internal/testfleet"
)

func TestMain(m *testing.M) { testfleet.Main(m, testfleet.Options{Clusters: 1}) }

var (
	vsGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	drGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	nsGVR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
)

// env is one test's view of the cluster: a client and a namespace of its own.
type env struct {
	t   *testing.T
	cfg *rest.Config
	dyn dynamic.Interface
	ns  string
}

var nsCounter atomic.Int64

// newEnv creates a namespace for t. Tests are not parallel: pruning is
// cluster-wide, so at its end each test deletes the managed objects it left.
func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	cfg.QPS, cfg.Burst = 50, 100
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("dynamic client: %v", err)
	}
	name := fmt.Sprintf("t%d-%s", nsCounter.Add(1), strings.ToLower(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name},
	}}
	if _, err := dyn.Resource(nsGVR).Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	e := &env{t: t, cfg: cfg, dyn: dyn, ns: name}
	t.Cleanup(func() {
		for _, gvk := range apply.IstioKinds() {
			gvr, _ := meta.UnsafeGuessKindToResource(gvk)
			err := dyn.Resource(gvr).Namespace(name).DeleteCollection(context.Background(), metav1.DeleteOptions{},
				metav1.ListOptions{LabelSelector: apply.ManagedByLabel + "=" + apply.ManagedByValue})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("cleanup: delete managed %s in %s: %v", gvk.Kind, name, err)
			}
		}
	})
	return e
}

// newApplier returns an applier for the Istio kinds that logs to t.
func (e *env) newApplier(onDrift func(apply.Drift)) *apply.Applier {
	e.t.Helper()
	a, err := apply.New(e.cfg, apply.Options{
		GVKs:    apply.IstioKinds(),
		OnDrift: onDrift,
		Logger:  slog.New(slog.NewTextHandler(e.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		e.t.Fatalf("new applier: %v", err)
	}
	return a
}

// get returns the live object, failing the test if it cannot be read.
func (e *env) get(gvr schema.GroupVersionResource, name string) *unstructured.Unstructured {
	e.t.Helper()
	obj, err := e.dyn.Resource(gvr).Namespace(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get %s %s/%s: %v", gvr.Resource, e.ns, name, err)
	}
	return obj
}

// exists reports whether the object exists.
func (e *env) exists(gvr schema.GroupVersionResource, name string) bool {
	e.t.Helper()
	_, err := e.dyn.Resource(gvr).Namespace(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	return err == nil
}

// resourceVersions returns the resourceVersion of each named object.
func (e *env) resourceVersions(gvr schema.GroupVersionResource, names ...string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, n := range names {
		out[n] = e.get(gvr, n).GetResourceVersion()
	}
	return out
}

// virtualService is a managed VirtualService routing host to dest.
func (e *env) virtualService(name, dest string) *unstructured.Unstructured {
	return managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": name, "namespace": e.ns},
		"spec": map[string]any{
			"hosts": []any{name},
			"http": []any{map[string]any{
				"route": []any{map[string]any{"destination": map[string]any{"host": dest}}},
			}},
		},
	}})
}

// destinationRule is a managed DestinationRule for host.
func (e *env) destinationRule(name, host string) *unstructured.Unstructured {
	return managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
		"metadata": map[string]any{"name": name, "namespace": e.ns},
		"spec": map[string]any{
			"host":          host,
			"trafficPolicy": map[string]any{"connectionPool": map[string]any{"tcp": map[string]any{"maxConnections": int64(100)}}},
		},
	}})
}

// owner is the FQN of the owner of an object called name.
func owner(name string) string { return "tenants/acme/workspaces/payments/trafficsettings/" + name }

// managed adds the label and annotation the compiler puts on its objects.
func managed(obj *unstructured.Unstructured) *unstructured.Unstructured {
	obj.SetLabels(map[string]string{apply.ManagedByLabel: apply.ManagedByValue})
	obj.SetAnnotations(map[string]string{apply.OwnerAnnotation: owner(obj.GetName())})
	return obj
}

// unmanaged creates obj as a user would, without Flotilla's label.
func (e *env) createUnmanaged(gvr schema.GroupVersionResource, obj *unstructured.Unstructured) *unstructured.Unstructured {
	e.t.Helper()
	obj = obj.DeepCopy()
	obj.SetLabels(nil)
	obj.SetAnnotations(nil)
	got, err := e.dyn.Resource(gvr).Namespace(e.ns).Create(context.Background(), obj, metav1.CreateOptions{FieldManager: "kubectl-create"})
	if err != nil {
		e.t.Fatalf("create unmanaged %s %s: %v", obj.GetKind(), obj.GetName(), err)
	}
	return got
}

// actions maps "Kind namespace/name" to the action of each result.
func actions(r apply.Report) map[string]apply.Action {
	out := map[string]apply.Action{}
	for _, res := range r.Results {
		out[res.Kind+" "+res.Namespace+"/"+res.Name] = res.Action
	}
	return out
}

func (e *env) ref(kind, name string) string { return kind + " " + e.ns + "/" + name }

// requireActions fails the test unless the report has exactly want.
func requireActions(t *testing.T, r apply.Report, want map[string]apply.Action) {
	t.Helper()
	if diff := cmp.Diff(want, actions(r)); diff != "" {
		t.Fatalf("report actions (-want +got):\n%s\nreport: %+v", diff, r.Results)
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDesiredObjectsAreCreatedThenASecondApplyChangesNoResourceVersion(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	desired := []*unstructured.Unstructured{
		e.virtualService("web", "web-v1"), e.virtualService("api", "api-v1"), e.destinationRule("web", "web"),
	}
	first := a.Apply(context.Background(), desired)
	requireActions(t, first, map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Created, e.ref("VirtualService", "api"): apply.Created,
		e.ref("DestinationRule", "web"): apply.Created,
	})
	vs := e.get(vsGVR, "web")
	if vs.GetAnnotations()[apply.HashAnnotation] == "" {
		t.Errorf("created VirtualService has no %s annotation: %v", apply.HashAnnotation, vs.GetAnnotations())
	}
	if got := vs.GetAnnotations()[apply.OwnerAnnotation]; got != owner("web") {
		t.Errorf("created VirtualService owner = %q, want %q", got, owner("web"))
	}
	vsBefore := e.resourceVersions(vsGVR, "web", "api")
	drBefore := e.resourceVersions(drGVR, "web")

	second := a.Apply(context.Background(), desired)
	requireActions(t, second, map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Unchanged, e.ref("VirtualService", "api"): apply.Unchanged,
		e.ref("DestinationRule", "web"): apply.Unchanged,
	})
	if diff := cmp.Diff(vsBefore, e.resourceVersions(vsGVR, "web", "api")); diff != "" {
		t.Errorf("VirtualService resourceVersions moved (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(drBefore, e.resourceVersions(drGVR, "web")); diff != "" {
		t.Errorf("DestinationRule resourceVersion moved (-before +after):\n%s", diff)
	}
	if got := second.ByOwner()[owner("web")]; len(got) != 2 {
		t.Errorf("ByOwner()[%q] has %d results, want the VirtualService and the DestinationRule: %+v", owner("web"), len(got), got)
	}
}

func TestChangingOneObjectUpdatesOnlyThatObject(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	desired := []*unstructured.Unstructured{
		e.virtualService("web", "web-v1"), e.virtualService("api", "api-v1"), e.destinationRule("web", "web"),
	}
	requireActions(t, a.Apply(context.Background(), desired), map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Created, e.ref("VirtualService", "api"): apply.Created,
		e.ref("DestinationRule", "web"): apply.Created,
	})
	webBefore := e.get(vsGVR, "web").GetResourceVersion()
	apiBefore := e.resourceVersions(vsGVR, "api")
	drBefore := e.resourceVersions(drGVR, "web")

	desired[0] = e.virtualService("web", "web-v2")
	requireActions(t, a.Apply(context.Background(), desired), map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Updated, e.ref("VirtualService", "api"): apply.Unchanged,
		e.ref("DestinationRule", "web"): apply.Unchanged,
	})
	web := e.get(vsGVR, "web")
	if web.GetResourceVersion() == webBefore {
		t.Errorf("updated VirtualService web kept resourceVersion %s", webBefore)
	}
	if diff := cmp.Diff(desired[0].Object["spec"], web.Object["spec"]); diff != "" {
		t.Errorf("VirtualService web spec (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(apiBefore, e.resourceVersions(vsGVR, "api")); diff != "" {
		t.Errorf("VirtualService api was written (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(drBefore, e.resourceVersions(drGVR, "web")); diff != "" {
		t.Errorf("DestinationRule web was written (-before +after):\n%s", diff)
	}
}

func TestObjectNoLongerDesiredIsPrunedWhileHandMadeVirtualServicesAreUntouched(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	handMade := e.createUnmanaged(vsGVR, e.virtualService("hand-made", "legacy"))
	// Labelled like Flotilla's but with no owner annotation: not Flotilla's to prune either.
	labelledOnly := e.virtualService("labelled-only", "legacy")
	labelledOnly.SetAnnotations(nil)
	labelledOnly, err := e.dyn.Resource(vsGVR).Namespace(e.ns).Create(context.Background(), labelledOnly, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create labelled-only VirtualService: %v", err)
	}
	untouched := func(when string) {
		t.Helper()
		for _, obj := range []*unstructured.Unstructured{handMade, labelledOnly} {
			if got := e.get(vsGVR, obj.GetName()).GetResourceVersion(); got != obj.GetResourceVersion() {
				t.Errorf("%s: VirtualService %s resourceVersion %s, want %s (untouched)", when, obj.GetName(), got, obj.GetResourceVersion())
			}
		}
	}

	requireActions(t, a.Apply(context.Background(), []*unstructured.Unstructured{
		e.virtualService("web", "web"), e.virtualService("old", "old"), e.destinationRule("web", "web"),
	}), map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Created, e.ref("VirtualService", "old"): apply.Created,
		e.ref("DestinationRule", "web"): apply.Created,
	})
	untouched("after the first apply")

	report := a.Apply(context.Background(), []*unstructured.Unstructured{e.virtualService("web", "web")})
	requireActions(t, report, map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Unchanged, e.ref("VirtualService", "old"): apply.Deleted,
		e.ref("DestinationRule", "web"): apply.Deleted,
	})
	if got := report.ByOwner()[owner("old")]; len(got) != 1 || got[0].Action != apply.Deleted {
		t.Errorf("ByOwner()[%q] = %+v, want one Deleted result", owner("old"), got)
	}
	if e.exists(vsGVR, "old") || e.exists(drGVR, "web") {
		t.Errorf("pruned objects still exist: VirtualService old %v, DestinationRule web %v", e.exists(vsGVR, "old"), e.exists(drGVR, "web"))
	}
	untouched("after pruning")

	requireActions(t, a.Apply(context.Background(), nil), map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Deleted,
	})
	untouched("after pruning everything")
}

func TestPreExistingUnmanagedObjectWithTheSameNameIsFailedAndNotModified(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	users := e.createUnmanaged(vsGVR, e.virtualService("web", "users-backend"))

	report := a.Apply(context.Background(), []*unstructured.Unstructured{
		e.virtualService("web", "flotilla-backend"), e.destinationRule("web", "web"),
	})
	requireActions(t, report, map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Failed, e.ref("DestinationRule", "web"): apply.Created,
	})
	want := fmt.Sprintf("VirtualService %s/web exists and is not managed by Flotilla (no app.kubernetes.io/managed-by=flotilla label): rename one of them or delete it", e.ns)
	if failed := report.Failed(); len(failed) != 1 || failed[0].Message != want || failed[0].Owner != owner("web") {
		t.Errorf("Failed() = %+v, want one result owned by %q with message %q", failed, owner("web"), want)
	}
	got := e.get(vsGVR, "web")
	if got.GetResourceVersion() != users.GetResourceVersion() {
		t.Errorf("the user's VirtualService was written: resourceVersion %s, was %s", got.GetResourceVersion(), users.GetResourceVersion())
	}
	if diff := cmp.Diff(users.Object["spec"], got.Object["spec"]); diff != "" {
		t.Errorf("the user's VirtualService spec changed (-before +after):\n%s", diff)
	}

	// Pruning leaves it alone too.
	requireActions(t, a.Apply(context.Background(), nil), map[string]apply.Action{
		e.ref("DestinationRule", "web"): apply.Deleted,
	})
	if !e.exists(vsGVR, "web") {
		t.Error("the user's VirtualService was deleted by pruning")
	}
}

func TestObjectsTheAPIServerRejectsFailWithItsMessageWhileTheOthersSucceed(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	badVS := e.virtualService("bad", "x")
	badVS.Object["spec"].(map[string]any)["http"] = "not a list"
	badDR := e.destinationRule("bad", "bad")
	badDR.Object["spec"].(map[string]any)["subsets"] = "not a list"

	report := a.Apply(context.Background(), []*unstructured.Unstructured{
		e.virtualService("good", "good"), badVS, e.destinationRule("good", "good"), badDR,
	})
	requireActions(t, report, map[string]apply.Action{
		e.ref("VirtualService", "good"): apply.Created, e.ref("VirtualService", "bad"): apply.Failed,
		e.ref("DestinationRule", "good"): apply.Created, e.ref("DestinationRule", "bad"): apply.Failed,
	})
	for _, f := range report.Failed() {
		field := map[string]string{"VirtualService": "spec.http", "DestinationRule": "spec.subsets"}[f.Kind]
		// Server-side apply rejects a type error while building the typed
		// patch: ".spec.http: expected list, got &{not a list}".
		if !strings.Contains(f.Message, field) || !strings.Contains(f.Message, "expected list") ||
			!strings.Contains(f.Message, f.Kind+" "+e.ns+"/bad") {
			t.Errorf("failure %s %s: message %q does not carry the object and the server's %q rejection", f.Kind, f.Name, f.Message, field)
		}
	}
	if report.Err() == nil {
		t.Error("Report.Err() = nil with two failures")
	}
	if e.exists(vsGVR, "bad") || e.exists(drGVR, "bad") {
		t.Error("a rejected object exists")
	}
	if !e.exists(vsGVR, "good") || !e.exists(drGVR, "good") {
		t.Error("an accepted object of the same apply does not exist")
	}
}

// driftRecorder collects OnDrift calls.
type driftRecorder struct {
	mu     sync.Mutex
	drifts []apply.Drift
}

func (r *driftRecorder) record(d apply.Drift) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drifts = append(r.drifts, d)
}

func (r *driftRecorder) get() []apply.Drift {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]apply.Drift(nil), r.drifts...)
}

// run runs a.Run until the test ends.
func run(t *testing.T, a *apply.Applier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
	})
}

// driftRepairBound is how fast a drift must be repaired.
const driftRepairBound = 5 * time.Second

func TestDeletedManagedVirtualServiceIsRestoredAndReportedAsDrift(t *testing.T) {
	e := newEnv(t)
	rec := &driftRecorder{}
	a := e.newApplier(rec.record)
	run(t, a)
	desired := []*unstructured.Unstructured{e.virtualService("web", "web"), e.destinationRule("web", "web")}
	if r := a.Apply(context.Background(), desired); r.Err() != nil {
		t.Fatalf("apply: %v", r.Err())
	}

	if err := e.dyn.Resource(vsGVR).Namespace(e.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete VirtualService web as kubectl would: %v", err)
	}
	want := []apply.Drift{{
		Owner: owner("web"), APIVersion: "networking.istio.io/v1", Kind: "VirtualService", Namespace: e.ns, Name: "web",
		Change: apply.ChangeDeleted, Restored: true,
	}}
	waitFor(t, driftRepairBound, "deleted VirtualService restored and reported", func() bool {
		return e.exists(vsGVR, "web") && len(rec.get()) > 0
	})
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Errorf("drifts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(desired[0].Object["spec"], e.get(vsGVR, "web").Object["spec"]); diff != "" {
		t.Errorf("restored VirtualService spec (-want +got):\n%s", diff)
	}
}

func TestEditedManagedObjectIsRevertedAndReportedAsDrift(t *testing.T) {
	e := newEnv(t)
	rec := &driftRecorder{}
	a := e.newApplier(rec.record)
	desired := []*unstructured.Unstructured{e.virtualService("web", "web"), e.destinationRule("web", "web")}
	if r := a.Apply(context.Background(), desired); r.Err() != nil {
		t.Fatalf("apply: %v", r.Err())
	}
	run(t, a) // after Apply this time: repairs do not depend on the order

	live := e.get(vsGVR, "web")
	if err := unstructured.SetNestedField(live.Object, []any{"evil.example.com"}, "spec", "hosts"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dyn.Resource(vsGVR).Namespace(e.ns).Update(context.Background(), live, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatalf("edit VirtualService web as kubectl would: %v", err)
	}
	want := []apply.Drift{{
		Owner: owner("web"), APIVersion: "networking.istio.io/v1", Kind: "VirtualService", Namespace: e.ns, Name: "web",
		Change: apply.ChangeModified, Restored: true,
	}}
	waitFor(t, driftRepairBound, "edited VirtualService reverted and reported", func() bool {
		hosts, _, _ := unstructured.NestedStringSlice(e.get(vsGVR, "web").Object, "spec", "hosts")
		return cmp.Equal(hosts, []string{"web"}) && len(rec.get()) > 0
	})
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Errorf("drifts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(desired[0].Object["spec"], e.get(vsGVR, "web").Object["spec"]); diff != "" {
		t.Errorf("reverted VirtualService spec (-want +got):\n%s", diff)
	}
}

func TestANewApplierApplyingTheSameSetReportsUnchanged(t *testing.T) {
	e := newEnv(t)
	desired := []*unstructured.Unstructured{
		e.virtualService("web", "web"), e.virtualService("api", "api"), e.destinationRule("web", "web"),
	}
	if r := e.newApplier(nil).Apply(context.Background(), desired); r.Count(apply.Created) != 3 {
		t.Fatalf("first applier: %+v, want 3 Created", r.Results)
	}
	vsBefore := e.resourceVersions(vsGVR, "web", "api")
	drBefore := e.resourceVersions(drGVR, "web")

	restarted := e.newApplier(nil)
	requireActions(t, restarted.Apply(context.Background(), desired), map[string]apply.Action{
		e.ref("VirtualService", "web"): apply.Unchanged, e.ref("VirtualService", "api"): apply.Unchanged,
		e.ref("DestinationRule", "web"): apply.Unchanged,
	})
	if diff := cmp.Diff(vsBefore, e.resourceVersions(vsGVR, "web", "api")); diff != "" {
		t.Errorf("VirtualService resourceVersions moved (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(drBefore, e.resourceVersions(drGVR, "web")); diff != "" {
		t.Errorf("DestinationRule resourceVersion moved (-before +after):\n%s", diff)
	}
}

// With Run going, Apply reads managed objects from its informers instead of
// listing. An informer may lag Apply's own writes: changing an object and
// at once changing it back must still leave the cluster with the second
// version, and an object written and at once no longer desired must still
// be pruned. Probed in a loop, right after each write.
func TestApplyFromTheInformerCacheIsNeverFooledByItsLag(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	run(t, a)
	ctx := context.Background()
	requireActions(t, a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v1")}), map[string]apply.Action{e.ref("VirtualService", "web"): apply.Created})
	waitFor(t, 10*time.Second, "the informer to hold web", func() bool {
		r := a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v1")})
		return actions(r)[e.ref("VirtualService", "web")] == apply.Unchanged
	})
	dest := func(obj *unstructured.Unstructured) string {
		http, _, _ := unstructured.NestedSlice(obj.Object, "spec", "http")
		route, _, _ := unstructured.NestedSlice(http[0].(map[string]any), "route")
		host, _, _ := unstructured.NestedString(route[0].(map[string]any), "destination", "host")
		return host
	}
	for i := range 20 {
		a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v2")})
		a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v1")})
		if got := dest(e.get(vsGVR, "web")); got != "v1" {
			t.Fatalf("round %d: changed to v2 and back to v1, the cluster holds %s", i, got)
		}
		name := fmt.Sprintf("brief%d", i)
		a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v1"), e.virtualService(name, "v1")})
		a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("web", "v1")})
		if e.exists(vsGVR, name) {
			t.Fatalf("round %d: %s, written and at once no longer desired, was not pruned", i, name)
		}
	}
}

// requestCounter counts the requests a client sends, by method and
// whether they read one object by name: instrumentation of the real client.
type requestCounter struct {
	mu     sync.Mutex
	gets   int // GET of one VirtualService
	lists  int // GET of a collection
	others int // discovery, writes
	rt     http.RoundTripper
}

func (c *requestCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	switch {
	case r.Method != http.MethodGet:
		c.others++
	case r.URL.Query().Has("limit") || r.URL.Query().Has("labelSelector"):
		c.lists++
	case strings.Contains(r.URL.Path, "/virtualservices/"):
		c.gets++
	default:
		c.others++
	}
	c.mu.Unlock()
	return c.rt.RoundTrip(r)
}

func (c *requestCounter) reads() (gets, lists int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets, c.lists
}

// Many new objects of a kind cost one list of the kind, not a read of each
// before its create (which doubled the requests of a large first apply);
// an unmanaged object of the same name among them is still refused
// untouched.
func TestManyNewObjectsAreCreatedWithoutAReadEachAndAnUnmanagedOneIsStillRefused(t *testing.T) {
	e := newEnv(t)
	users := e.createUnmanaged(vsGVR, e.virtualService("vs-007", "users-backend"))
	counter := &requestCounter{}
	cfg := rest.CopyConfig(e.cfg)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.rt = rt; return counter }
	a, err := apply.New(cfg, apply.Options{GVKs: apply.IstioKinds(), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	var desired []*unstructured.Unstructured
	want := map[string]apply.Action{}
	for i := range n {
		name := fmt.Sprintf("vs-%03d", i)
		desired = append(desired, e.virtualService(name, "backend"))
		want[e.ref("VirtualService", name)] = apply.Created
	}
	want[e.ref("VirtualService", "vs-007")] = apply.Failed
	report := a.Apply(context.Background(), desired)
	requireActions(t, report, want)
	if gets, lists := counter.reads(); gets > 1 || lists > 2*len(apply.IstioKinds()) {
		t.Errorf("creating %d objects read %d objects by name and listed %d times; want a list of the kind, and a read only of the one that exists", n, gets, lists)
	}
	if got := e.get(vsGVR, "vs-007"); got.GetResourceVersion() != users.GetResourceVersion() {
		t.Errorf("the user's VirtualService was written")
	}
	// A few new objects are read by name, as before: a list of the whole
	// kind would cost more than they do.
	desired = append(desired, e.virtualService("vs-new-1", "backend"), e.virtualService("vs-new-2", "backend"))
	before, _ := counter.reads()
	got := actions(a.Apply(context.Background(), desired))
	if got[e.ref("VirtualService", "vs-new-1")] != apply.Created || got[e.ref("VirtualService", "vs-new-2")] != apply.Created || got[e.ref("VirtualService", "vs-000")] != apply.Unchanged {
		t.Errorf("second apply: %v", got)
	}
	if after, _ := counter.reads(); after-before > 3 {
		t.Errorf("two new objects took %d reads by name", after-before)
	}
}

// A CRD and an object of its kind in one desired set: one Apply writes the
// CRD first, waits for it to be served, and creates the object, so a bare
// cluster that gets Istio's CRDs and Istio objects at once converges in one
// pass. The next Apply changes nothing; a later one without them prunes both.
func TestACRDAndObjectsOfItsKindConvergeInOneApply(t *testing.T) {
	e := newEnv(t)
	group := strings.ReplaceAll(e.ns, "-", "") + ".example.com"
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	crd := managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "widgets." + group},
		"spec": map[string]any{
			"group": group, "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}})
	widget := managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": group + "/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w1", "namespace": e.ns},
		"spec":     map[string]any{"size": int64(3)},
	}})
	t.Cleanup(func() { e.dyn.Resource(crdGVR).Delete(context.Background(), crd.GetName(), metav1.DeleteOptions{}) })
	a := e.newApplier(nil)
	r := a.Apply(context.Background(), []*unstructured.Unstructured{widget, crd}) // the object first: order is the applier's
	requireActions(t, r, map[string]apply.Action{
		"CustomResourceDefinition /" + crd.GetName(): apply.Created,
		e.ref("Widget", "w1"):                        apply.Created,
	})
	r = a.Apply(context.Background(), []*unstructured.Unstructured{widget, crd})
	requireActions(t, r, map[string]apply.Action{
		"CustomResourceDefinition /" + crd.GetName(): apply.Unchanged,
		e.ref("Widget", "w1"):                        apply.Unchanged,
	})
	r = a.Apply(context.Background(), nil)
	if got := actions(r); got["CustomResourceDefinition /"+crd.GetName()] != apply.Deleted || got[e.ref("Widget", "w1")] != apply.Deleted {
		t.Fatalf("an empty set left them: %+v", r.Results)
	}
}

// An object whose resource policy says keep (Istio's CRDs: deleting one
// deletes every object of its kind) is released when no longer desired:
// it stays, without Flotilla's label and annotations, and no later apply
// touches it.
func TestAnObjectWhosePolicyIsKeepIsReleasedNotPruned(t *testing.T) {
	e := newEnv(t)
	cm := managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "kept", "namespace": e.ns},
		"data":     map[string]any{"a": "b"},
	}})
	ann := cm.GetAnnotations()
	ann[apply.KeepAnnotation] = apply.KeepValue
	cm.SetAnnotations(ann)
	cmGVR := schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	a := e.newApplier(nil)
	requireActions(t, a.Apply(context.Background(), []*unstructured.Unstructured{cm}), map[string]apply.Action{e.ref("ConfigMap", "kept"): apply.Created})
	requireActions(t, a.Apply(context.Background(), nil), map[string]apply.Action{e.ref("ConfigMap", "kept"): apply.Released})
	got := e.get(cmGVR, "kept")
	if got.GetLabels()[apply.ManagedByLabel] != "" || got.GetAnnotations()[apply.OwnerAnnotation] != "" || got.GetAnnotations()[apply.HashAnnotation] != "" {
		t.Fatalf("released object still Flotilla's: %v %v", got.GetLabels(), got.GetAnnotations())
	}
	if got.GetAnnotations()[apply.KeepAnnotation] != apply.KeepValue {
		t.Fatalf("the policy annotation went too: %v", got.GetAnnotations())
	}
	rv := got.GetResourceVersion()
	requireActions(t, a.Apply(context.Background(), nil), map[string]apply.Action{})
	if e.get(cmGVR, "kept").GetResourceVersion() != rv {
		t.Fatal("a later apply touched the released object")
	}
	// Desired again, it is taken back: both say they outlive their owner.
	requireActions(t, a.Apply(context.Background(), []*unstructured.Unstructured{cm}), map[string]apply.Action{e.ref("ConfigMap", "kept"): apply.Updated})
	if got := e.get(cmGVR, "kept"); got.GetLabels()[apply.ManagedByLabel] != apply.ManagedByValue {
		t.Fatalf("not adopted: %v", got.GetLabels())
	}
	// One without the policy is never taken over.
	other := cm.DeepCopy()
	other.SetName("users")
	e.createUnmanaged(cmGVR, other)
	r := a.Apply(context.Background(), []*unstructured.Unstructured{cm, other})
	if actions(r)[e.ref("ConfigMap", "users")] != apply.Failed {
		t.Fatalf("an unmanaged object without the keep policy was taken over: %+v", r.Results)
	}
}

// held marks a desired object as waiting (HoldAnnotation).
func held(obj *unstructured.Unstructured, why string) *unstructured.Unstructured {
	obj = obj.DeepCopy()
	ann := obj.GetAnnotations()
	ann[apply.HoldAnnotation] = why
	obj.SetAnnotations(ann)
	return obj
}

// A held object is not created, not moved to new content and not pruned;
// it keeps the content applied before, drift repair included, and moves
// once it is no longer held. The hold itself is never written.
func TestAHeldObjectKeepsItsAppliedContentUntilReleased(t *testing.T) {
	e := newEnv(t)
	rec := &driftRecorder{}
	a := e.newApplier(rec.record)
	run(t, a)
	ctx := context.Background()

	// Held with nothing applied before: not created.
	r := a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("a", "a"), held(e.virtualService("gw", "v1"), "waits for istiod")})
	requireActions(t, r, map[string]apply.Action{e.ref("VirtualService", "a"): apply.Created, e.ref("VirtualService", "gw"): apply.Held})
	if e.exists(vsGVR, "gw") {
		t.Fatal("a held object that was never applied was created")
	}
	for _, res := range r.Results {
		if res.Name == "gw" && !strings.Contains(res.Message, "waits for istiod; not created until then") {
			t.Errorf("held message %q", res.Message)
		}
	}

	// Released: created, and its hash is the one DesiredHash predicts.
	v1 := e.virtualService("gw", "v1")
	r = a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("a", "a"), v1})
	requireActions(t, r, map[string]apply.Action{e.ref("VirtualService", "a"): apply.Unchanged, e.ref("VirtualService", "gw"): apply.Created})
	want, err := apply.DesiredHash(held(v1, "anything"))
	if err != nil {
		t.Fatal(err)
	}
	live := e.get(vsGVR, "gw")
	if got := live.GetAnnotations()[apply.HashAnnotation]; got != want {
		t.Fatalf("live hash %s, DesiredHash %s", got, want)
	}
	if _, ok := live.GetAnnotations()[apply.HoldAnnotation]; ok {
		t.Fatal("the hold annotation reached the cluster")
	}

	// New content, held: the live object keeps v1, and is repaired to v1.
	rv := live.GetResourceVersion()
	r = a.Apply(ctx, []*unstructured.Unstructured{e.virtualService("a", "a"), held(e.virtualService("gw", "v2"), "waits for istiod")})
	requireActions(t, r, map[string]apply.Action{e.ref("VirtualService", "a"): apply.Unchanged, e.ref("VirtualService", "gw"): apply.Held})
	if got := e.get(vsGVR, "gw").GetResourceVersion(); got != rv {
		t.Fatalf("the held object was written (resourceVersion %s → %s)", rv, got)
	}
	if err := e.dyn.Resource(vsGVR).Namespace(e.ns).Delete(ctx, "gw", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, driftRepairBound, "the held object restored at its applied content", func() bool { return e.exists(vsGVR, "gw") })
	if diff := cmp.Diff(v1.Object["spec"], e.get(vsGVR, "gw").Object["spec"]); diff != "" {
		t.Fatalf("restored held object's spec (-applied before +got):\n%s", diff)
	}

	// A new applier (the agent restarted) holding it: left as it is, not pruned.
	b := e.newApplier(nil)
	r = b.Apply(ctx, []*unstructured.Unstructured{e.virtualService("a", "a"), held(e.virtualService("gw", "v2"), "waits")})
	requireActions(t, r, map[string]apply.Action{e.ref("VirtualService", "a"): apply.Unchanged, e.ref("VirtualService", "gw"): apply.Held})
	if diff := cmp.Diff(v1.Object["spec"], e.get(vsGVR, "gw").Object["spec"]); diff != "" {
		t.Fatalf("held object after a restart (-applied before +got):\n%s", diff)
	}

	// Released: it moves to v2.
	r = b.Apply(ctx, []*unstructured.Unstructured{e.virtualService("a", "a"), e.virtualService("gw", "v2")})
	requireActions(t, r, map[string]apply.Action{e.ref("VirtualService", "a"): apply.Unchanged, e.ref("VirtualService", "gw"): apply.Updated})
	hosts, _, _ := unstructured.NestedSlice(e.get(vsGVR, "gw").Object, "spec", "http")
	if !strings.Contains(fmt.Sprint(hosts), "v2") {
		t.Fatalf("released object's routes %v, want v2", hosts)
	}
}

// Quantities the API server stores in canonical form (2048Mi as 2Gi, as in
// Istio's istiod chart) are the content desired: a second Apply leaves the
// object alone.
func TestQuantitiesTheAPIServerCanonicalizesAreUpToDate(t *testing.T) {
	e := newEnv(t)
	a := e.newApplier(nil)
	ctx := context.Background()
	dep := managed(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "istiod", "namespace": e.ns},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "istiod"}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"app": "istiod"}},
				"spec": map[string]any{"containers": []any{map[string]any{"name": "discovery", "image": "pilot",
					"resources": map[string]any{"requests": map[string]any{"cpu": "500m", "memory": "2048Mi"}, "limits": map[string]any{"cpu": "2000m"}}}}},
			},
		},
	}})
	depGVR := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	t.Cleanup(func() { e.dyn.Resource(depGVR).Namespace(e.ns).Delete(ctx, "istiod", metav1.DeleteOptions{}) })
	requireActions(t, a.Apply(ctx, []*unstructured.Unstructured{dep}), map[string]apply.Action{e.ref("Deployment", "istiod"): apply.Created})
	live := e.get(depGVR, "istiod")
	containers, _, _ := unstructured.NestedSlice(live.Object, "spec", "template", "spec", "containers")
	if got := fmt.Sprint(containers[0].(map[string]any)["resources"]); !strings.Contains(got, "2Gi") {
		t.Fatalf("the API server kept %s: this test needs its canonical form", got)
	}
	for range 3 {
		requireActions(t, a.Apply(ctx, []*unstructured.Unstructured{dep}), map[string]apply.Action{e.ref("Deployment", "istiod"): apply.Unchanged})
	}
	if got := e.get(depGVR, "istiod").GetResourceVersion(); got != live.GetResourceVersion() {
		t.Fatalf("the Deployment was written again: resourceVersion %s → %s", live.GetResourceVersion(), got)
	}
}
