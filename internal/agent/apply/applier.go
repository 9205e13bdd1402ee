package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// DefaultFieldManager is the server-side apply field manager used when
// Options.FieldManager is empty.
const DefaultFieldManager = "flotilla"

// DefaultResyncPeriod is the informer resync period used when
// Options.ResyncPeriod is zero.
const DefaultResyncPeriod = 10 * time.Minute

// Client rate limits used when the rest.Config given to New leaves them zero;
// client-go's own defaults (5/10) would cap an agent at about 300 writes a minute.
const (
	DefaultQPS   = 50
	DefaultBurst = 100
)

// listPageSize bounds one page of a list of managed objects.
const listPageSize = 500

// IstioKinds returns the Istio kinds the agent manages, for Options.GVKs. The
// slice is new on every call.
func IstioKinds() []schema.GroupVersionKind {
	networking := schema.GroupVersion{Group: "networking.istio.io", Version: "v1"}
	security := schema.GroupVersion{Group: "security.istio.io", Version: "v1"}
	return []schema.GroupVersionKind{
		networking.WithKind("VirtualService"),
		networking.WithKind("DestinationRule"),
		networking.WithKind("Gateway"),
		networking.WithKind("ServiceEntry"),
		networking.WithKind("Sidecar"),
		networking.WithKind("WorkloadEntry"),
		security.WithKind("PeerAuthentication"),
		security.WithKind("AuthorizationPolicy"),
		security.WithKind("RequestAuthentication"),
	}
}

// Options configure an Applier. The zero value is usable but prunes and
// watches only the kinds of the desired objects.
type Options struct {
	// FieldManager is the server-side apply field manager; DefaultFieldManager if empty.
	FieldManager string
	// GVKs are kinds to prune and watch besides those of the desired objects,
	// so that the last object of a kind is pruned too. Agents pass IstioKinds().
	// A kind whose resource the cluster does not serve is skipped.
	GVKs []schema.GroupVersionKind
	// OnDrift, if set, is called by Run after each repair of a drifted object
	// (or a failed attempt). Calls come one at a time from Run's worker; the
	// function must not block for long.
	OnDrift func(Drift)
	// Logger receives the applier's logs; nothing is logged if nil.
	Logger *slog.Logger
	// ResyncPeriod is how often Run re-examines every watched object even
	// without events; DefaultResyncPeriod if zero.
	ResyncPeriod time.Duration
}

// Applier makes a cluster hold the desired objects: Apply converges once and
// reports, Run keeps them converged. Apply and Run may be called from
// different goroutines; Apply calls are serialized.
type Applier struct {
	dyn     dynamic.Interface
	md      metadata.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	manager string
	extra   []schema.GroupVersionKind
	onDrift func(Drift)
	log     *slog.Logger
	resync  time.Duration

	// writeMu serializes Apply with Run's repairs, so a repair never races
	// an Apply that is about to write the same object.
	writeMu sync.Mutex

	mu      sync.RWMutex              // guards desired
	desired map[objKey]*desiredObject // the set passed to the last Apply

	// kindsChanged tells Run that Apply brought kinds it may not watch yet.
	kindsChanged chan struct{}
	running      atomic.Bool
	// watch is Run's watcher while it runs: Apply reads the managed objects
	// of a kind from its informer once that has synced, instead of listing.
	watch atomic.Pointer[watcher]
	// written holds, per object, the hash of Flotilla's last write of it,
	// to tell an informer's copy that has not caught up with that write.
	written sync.Map // objKey → string
}

// New returns an Applier for the cluster that cfg reaches. cfg is copied;
// zero QPS and Burst become DefaultQPS and DefaultBurst.
func New(cfg *rest.Config, opts Options) (*Applier, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		cfg.QPS = DefaultQPS
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create dynamic client for %s: %w", cfg.Host, err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create discovery client for %s: %w", cfg.Host, err)
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create metadata client for %s: %w", cfg.Host, err)
	}
	a := &Applier{
		dyn:          dyn,
		md:           md,
		mapper:       restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
		manager:      cmp.Or(opts.FieldManager, DefaultFieldManager),
		extra:        slices.Clone(opts.GVKs),
		onDrift:      opts.OnDrift,
		log:          opts.Logger,
		resync:       cmp.Or(opts.ResyncPeriod, DefaultResyncPeriod),
		desired:      map[objKey]*desiredObject{},
		kindsChanged: make(chan struct{}, 1),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a, nil
}

// objKey identifies an object independently of the API version it is read in.
type objKey struct {
	Group, Kind, Namespace, Name string
}

func (k objKey) groupKind() schema.GroupKind { return schema.GroupKind{Group: k.Group, Kind: k.Kind} }

func keyOf(obj *unstructured.Unstructured) objKey {
	gvk := obj.GroupVersionKind()
	return objKey{Group: gvk.Group, Kind: gvk.Kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
}

// desiredObject is one desired object, prepared for applying.
type desiredObject struct {
	key     objKey
	obj     *unstructured.Unstructured // a copy, carrying HashAnnotation
	hash    string
	owner   string
	mapping *meta.RESTMapping
	// applied is set once Apply has made the cluster hold this object; Run
	// repairs only applied objects, so one the API server rejects is not
	// reported as drift.
	applied atomic.Bool
	// hold is the desired object's HoldAnnotation: what it waits for.
	hold string
}

// id names an object in messages: "VirtualService payments/web".
func id(kind, namespace, name string) string {
	if namespace == "" {
		return kind + " " + name
	}
	return kind + " " + namespace + "/" + name
}

func (d *desiredObject) id() string { return id(d.key.Kind, d.key.Namespace, d.key.Name) }

func (d *desiredObject) result(action Action, message string) ObjectResult {
	return ObjectResult{
		Owner: d.owner, APIVersion: d.obj.GetAPIVersion(), Kind: d.key.Kind,
		Namespace: d.key.Namespace, Name: d.key.Name, Action: action, Message: message,
	}
}

func (d *desiredObject) failed(err error) ObjectResult { return d.result(Failed, err.Error()) }

// resource returns the client for d's resource, in d's namespace if namespaced.
func (a *Applier) resource(m *meta.RESTMapping, namespace string) dynamic.ResourceInterface {
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(m.Resource).Namespace(namespace)
	}
	return a.dyn.Resource(m.Resource)
}

// restMapping maps gvk to its resource. A no-match error resets the cached
// discovery and retries once, since a CRD may have been installed since.
func (a *Applier) restMapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset()
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("map %s to a resource: %w", gvk, err)
	}
	return m, nil
}

// Apply makes the cluster hold exactly the desired objects: it server-side
// applies those whose live content differs, leaves those that match
// untouched, and deletes managed objects (of the desired kinds and
// Options.GVKs) that are no longer desired. Every failure is collected in
// the report; Apply never stops at the first. desired becomes the state Run
// repairs drift towards. An empty desired set prunes every managed object.
// Apply does not modify desired.
func (a *Applier) Apply(ctx context.Context, desired []*unstructured.Unstructured) Report {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()

	first := a.foundations(ctx, desired)
	objs, results := a.prepare(desired)
	a.mu.RLock()
	previous := a.desired
	a.mu.RUnlock()
	held := hold(objs, previous)
	newKinds := a.setDesired(objs)
	if newKinds {
		select {
		case a.kindsChanged <- struct{}{}:
		default:
		}
	}

	live, unlisted, listResults := a.listManaged(ctx, a.knownKinds())
	results = append(results, listResults...)
	a.catchUp(ctx, live)
	// An informer may not have seen an object the last Apply wrote yet: the
	// ones it desired and this one does not are read directly, so that
	// they are pruned all the same.
	for k, d := range previous {
		if _, still := objs[k]; still || live[k] != nil || unlisted[k.groupKind()] || d.mapping == nil || !d.applied.Load() {
			continue
		}
		got, err := a.resource(d.mapping, k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err == nil && got.GetLabels()[ManagedByLabel] == ManagedByValue {
			live[k] = got
		}
	}

	absent := a.absent(ctx, objs, live, unlisted)
	for _, k := range slices.SortedFunc(maps.Keys(objs), compareKeys) {
		d := objs[k]
		h, isHeld := held[k]
		if d.mapping == nil {
			if isHeld {
				res := d.result(Held, heldMessage(h.why, false, live[k] != nil))
				res.Owner = h.owner
				results = append(results, res)
			}
			continue // prepare reported why, or held with nothing applied before
		}
		var known *unstructured.Unstructured
		if !unlisted[k.groupKind()] {
			known = live[k]
		}
		res, _ := a.ensure(ctx, d, known, absent[k])
		if f, ok := first[k]; ok && res.Action == Unchanged {
			res = f // written a moment ago, by foundations
		}
		if res.Action != Failed {
			d.applied.Store(true)
			if isHeld {
				res.Action, res.Message, res.Owner = Held, heldMessage(h.why, true, true), h.owner
			}
		}
		results = append(results, res)
	}

	results = append(results, a.prune(ctx, objs, live)...)
	sortResults(results)
	return Report{Results: results}
}

var (
	crdKind       = schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}
	namespaceKind = schema.GroupKind{Kind: "Namespace"}
)

// establishWait bounds how long Apply waits for new CRDs to be served.
const establishWait = 30 * time.Second

// foundations applies, before anything else is mapped, the desired CRDs and
// namespaces that no Apply has written yet: what the rest may need (Istio's
// CRDs, before the Istio objects compiled from intent, on a cluster that had
// none). It waits, within establishWait, for new CRDs to be served, then
// forgets the cached discovery. It returns what it wrote; failures are left
// to the main pass, which tries again and reports them.
func (a *Applier) foundations(ctx context.Context, desired []*unstructured.Unstructured) map[objKey]ObjectResult {
	out := map[objKey]ObjectResult{}
	var crds []string
	for _, in := range desired {
		gk := in.GroupVersionKind().GroupKind()
		if gk != crdKind && gk != namespaceKind || in.GetAnnotations()[HoldAnnotation] != "" {
			continue
		}
		d, err := a.prepareOne(in)
		if d == nil || err != nil {
			continue
		}
		if prev := a.lookup(d.key); prev != nil && prev.applied.Load() && prev.hash == d.hash {
			continue // in place since an earlier Apply: the main pass keeps it
		}
		res, err := a.ensure(ctx, d, nil, false)
		if err != nil || res.Action == Unchanged {
			continue
		}
		out[d.key] = res
		if gk == crdKind {
			crds = append(crds, d.key.Name)
		}
	}
	if len(crds) > 0 {
		a.waitEstablished(ctx, crds)
		a.mapper.Reset()
	}
	return out
}

// waitEstablished waits until the API server serves each CRD (its
// Established condition), or establishWait passes.
func (a *Applier) waitEstablished(ctx context.Context, names []string) {
	ctx, cancel := context.WithTimeout(ctx, establishWait)
	defer cancel()
	crds := a.dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, name := range names {
		for {
			got, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(got) {
				break
			}
			select {
			case <-ctx.Done():
				a.log.Warn("CRDs not served yet; objects of their kinds fail until the next apply", "waited", establishWait, "crd", name)
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// prepare checks and maps every desired object and computes its hash.
// Objects that cannot be applied get a Failed result and a nil mapping; they
// are still returned, so that they are not pruned.
func (a *Applier) prepare(desired []*unstructured.Unstructured) (map[objKey]*desiredObject, []ObjectResult) {
	objs := map[objKey]*desiredObject{}
	var results []ObjectResult
	for _, in := range desired {
		d, err := a.prepareOne(in)
		if d == nil {
			results = append(results, ObjectResult{
				Owner: in.GetAnnotations()[OwnerAnnotation], APIVersion: in.GetAPIVersion(), Kind: in.GetKind(),
				Namespace: in.GetNamespace(), Name: in.GetName(), Action: Failed, Message: err.Error(),
			})
			continue
		}
		if prev, dup := objs[d.key]; dup {
			results = append(results, d.failed(fmt.Errorf("%s is desired twice (owners %q and %q); applied the first only", d.id(), prev.owner, d.owner)))
			continue
		}
		if err != nil {
			results = append(results, d.failed(err))
			d.mapping = nil
		}
		objs[d.key] = d
	}
	return objs, results
}

// prepareOne returns the prepared object, or nil if it cannot even be
// identified. A non-nil object with an error is desired (not to be pruned)
// but cannot be applied.
func (a *Applier) prepareOne(in *unstructured.Unstructured) (*desiredObject, error) {
	gvk := in.GroupVersionKind()
	name := id(gvk.Kind, in.GetNamespace(), in.GetName())
	if gvk.Kind == "" || gvk.Version == "" || in.GetName() == "" {
		return nil, fmt.Errorf("desired object %q has no apiVersion, kind or name: it cannot be applied", name)
	}
	obj := in.DeepCopy()
	dropNulls(obj.Object)
	for _, f := range []string{"resourceVersion", "uid", "managedFields", "creationTimestamp", "generation"} {
		unstructured.RemoveNestedField(obj.Object, "metadata", f)
	}
	delete(obj.Object, "status")
	d := &desiredObject{key: keyOf(obj), obj: obj, owner: obj.GetAnnotations()[OwnerAnnotation]}

	labels := obj.GetLabels()
	if labels[ManagedByLabel] != ManagedByValue {
		return d, fmt.Errorf("desired %s lacks label %s=%s: it would be invisible to pruning and drift repair", name, ManagedByLabel, ManagedByValue)
	}
	if d.owner == "" {
		return d, fmt.Errorf("desired %s lacks annotation %s naming its Flotilla resource", name, OwnerAnnotation)
	}
	m, err := a.restMapping(gvk)
	if err != nil {
		return d, fmt.Errorf("apply %s: the cluster serves no such kind (is its CRD installed?): %w", name, err)
	}
	namespaced := m.Scope.Name() == meta.RESTScopeNameNamespace
	if namespaced && in.GetNamespace() == "" {
		return d, fmt.Errorf("desired %s is namespaced but has no namespace", name)
	}
	if !namespaced && in.GetNamespace() != "" {
		obj.SetNamespace("")
		d.key.Namespace = ""
	}
	annotations := obj.GetAnnotations()
	delete(annotations, HashAnnotation)
	d.hold = annotations[HoldAnnotation]
	delete(annotations, HoldAnnotation)
	obj.SetAnnotations(annotations)
	if d.hash, err = contentHash(obj.Object); err != nil {
		return d, fmt.Errorf("hash %s: %w", name, err)
	}
	annotations[HashAnnotation] = d.hash
	obj.SetAnnotations(annotations)
	d.mapping = m
	return d, nil
}

// hold replaces each held desired object (HoldAnnotation) by the one the
// previous Apply made the cluster hold under its key, if any, so that it
// stays at that content, drift repair included; one without is kept
// unmapped, so that it is neither written nor pruned. It returns what each
// held object waits for.
func hold(objs, previous map[objKey]*desiredObject) map[objKey]heldObject {
	held := map[objKey]heldObject{}
	for k, d := range objs {
		if d.hold == "" {
			continue
		}
		held[k] = heldObject{why: d.hold, owner: d.owner}
		if p := previous[k]; p != nil && p.mapping != nil && p.applied.Load() && p.hold == "" {
			objs[k] = p
			continue
		}
		d.mapping = nil
	}
	return held
}

// heldObject is what a held object waits for, and the owner that wants
// it moved (the one its result goes to).
type heldObject struct{ why, owner string }

// heldMessage says what a held object waits for and what became of it.
func heldMessage(why string, kept, exists bool) string {
	switch {
	case kept:
		return why + "; kept at the content applied before"
	case exists:
		return why + "; left as it is"
	default:
		return why + "; not created until then"
	}
}

// setDesired records objs as the desired set and reports whether it holds
// a kind that the previous set did not.
func (a *Applier) setDesired(objs map[objKey]*desiredObject) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	had := map[schema.GroupKind]bool{}
	for k := range a.desired {
		had[k.groupKind()] = true
	}
	grew := false
	for k := range objs {
		if !had[k.groupKind()] {
			grew = true
		}
	}
	a.desired = objs
	return grew
}

// lookup returns the desired object for k, or nil.
func (a *Applier) lookup(k objKey) *desiredObject {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.desired[k]
}

// knownKinds returns one GVK per group and kind of the desired set and of
// Options.GVKs, preferring the desired objects' versions, sorted.
func (a *Applier) knownKinds() []schema.GroupVersionKind {
	byGK := map[schema.GroupKind]schema.GroupVersionKind{}
	a.mu.RLock()
	for _, d := range a.desired {
		if d.mapping != nil {
			byGK[d.key.groupKind()] = d.obj.GroupVersionKind()
		}
	}
	a.mu.RUnlock()
	for _, gvk := range a.extra {
		if _, ok := byGK[gvk.GroupKind()]; !ok {
			byGK[gvk.GroupKind()] = gvk
		}
	}
	return slices.SortedFunc(maps.Values(byGK), func(x, y schema.GroupVersionKind) int {
		return cmp.Or(cmp.Compare(x.Group, y.Group), cmp.Compare(x.Kind, y.Kind))
	})
}

// listManaged lists the managed objects of every kind in all namespaces.
// Kinds the cluster does not serve are skipped; kinds whose list fails are
// returned in unlisted, with a Failed result each.
func (a *Applier) listManaged(ctx context.Context, kinds []schema.GroupVersionKind) (map[objKey]*unstructured.Unstructured, map[schema.GroupKind]bool, []ObjectResult) {
	// The kinds are listed concurrently: one round trip instead of one per
	// kind dominates an apply's latency.
	type listed struct {
		items  []*unstructured.Unstructured
		failed *ObjectResult
	}
	out := make([]listed, len(kinds))
	var wg sync.WaitGroup
	for i, gvk := range kinds {
		if items, ok := a.cached(gvk.GroupKind()); ok {
			out[i].items = items
			continue
		}
		m, err := a.restMapping(gvk)
		if err != nil {
			a.log.Debug("kind not served; nothing to prune", "kind", gvk.String(), "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			opts := metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + ManagedByValue, Limit: listPageSize}
			for {
				list, err := a.dyn.Resource(m.Resource).List(ctx, opts)
				if err != nil {
					out[i] = listed{failed: &ObjectResult{
						APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind, Action: Failed,
						Message: fmt.Errorf("list managed %s objects (nothing of this kind was pruned): %w", gvk.Kind, err).Error(),
					}}
					return
				}
				for j := range list.Items {
					out[i].items = append(out[i].items, &list.Items[j])
				}
				if opts.Continue = list.GetContinue(); opts.Continue == "" {
					return
				}
			}
		}()
	}
	wg.Wait()
	live := map[objKey]*unstructured.Unstructured{}
	unlisted := map[schema.GroupKind]bool{}
	var results []ObjectResult
	for i, l := range out {
		if l.failed != nil {
			unlisted[kinds[i].GroupKind()] = true
			results = append(results, *l.failed)
			continue
		}
		for _, obj := range l.items {
			live[keyOf(obj)] = obj
		}
	}
	return live, unlisted, results
}

// catchUp replaces the copies in live that do not carry the hash of
// Flotilla's own last write (an informer behind it, or a change by someone
// else) with the objects as the API server has them now.
func (a *Applier) catchUp(ctx context.Context, live map[objKey]*unstructured.Unstructured) {
	for k, obj := range live {
		w, ok := a.written.Load(k)
		if !ok || obj.GetAnnotations()[HashAnnotation] == w.(string) {
			continue
		}
		m, err := a.restMapping(obj.GroupVersionKind())
		if err != nil {
			continue
		}
		got, err := a.resource(m, k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			delete(live, k)
		case err == nil && got.GetLabels()[ManagedByLabel] == ManagedByValue:
			live[k] = got
		default:
			delete(live, k) // ensure reads it itself
		}
	}
}

// cached returns the managed objects of a kind from Run's informer, once it
// has synced; the objects are the cache's and must not be changed.
func (a *Applier) cached(gk schema.GroupKind) ([]*unstructured.Unstructured, bool) {
	w := a.watch.Load()
	if w == nil {
		return nil, false
	}
	inf := w.informer(gk)
	if inf == nil || !inf.HasSynced() {
		return nil, false
	}
	objs := inf.GetStore().List()
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	return out, true
}

// errUnmanaged is wrapped by the failure for an object that exists without
// the managed-by label.
var errUnmanaged = errors.New("not managed by Flotilla")

// ensure makes the cluster hold d. live is d's managed live object if the
// caller knows it, or nil, in which case ensure reads the object first,
// unless absent says a list just showed there is none. The error is the
// cause of a Failed result.
func (a *Applier) ensure(ctx context.Context, d *desiredObject, live *unstructured.Unstructured, absent bool) (ObjectResult, error) {
	client := a.resource(d.mapping, d.key.Namespace)
	if live == nil && !absent {
		got, err := client.Get(ctx, d.key.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			err = fmt.Errorf("read %s: %w", d.id(), err)
			return d.failed(err), err
		default:
			live = got
		}
	}
	if live != nil {
		if live.GetLabels()[ManagedByLabel] != ManagedByValue && !adoptable(d, live) {
			err := fmt.Errorf("%s exists and is %w (no %s=%s label): rename one of them or delete it",
				d.id(), errUnmanaged, ManagedByLabel, ManagedByValue)
			return d.failed(err), err
		}
		if upToDate(live, d) {
			return d.result(Unchanged, ""), nil
		}
	}
	_, err := client.Apply(ctx, d.key.Name, d.obj, metav1.ApplyOptions{FieldManager: a.manager, Force: true})
	if err != nil {
		err = fmt.Errorf("apply %s: %w", d.id(), err)
		return d.failed(err), err
	}
	a.written.Store(d.key, d.hash)
	if live == nil {
		a.log.Info("created", "object", d.id(), "owner", d.owner)
		return d.result(Created, ""), nil
	}
	a.log.Info("updated", "object", d.id(), "owner", d.owner)
	return d.result(Updated, ""), nil
}

// absentListThreshold is how many desired objects of one kind, unknown to
// the managed list, make Apply list every object of that kind (metadata
// only, a page per 500) rather than read each one by name before it
// creates it: at the chart's 50 requests a second, reading 1,000 new
// objects first doubles the time they take.
const absentListThreshold = 16

// absent returns the desired objects that no object of the cluster has the
// key of, for the kinds with at least absentListThreshold desired objects
// not in live: those are created without a read first. An object that
// exists unmanaged is not in it (ensure reads it and refuses it, as
// before). A list that fails leaves its kind out: its objects are read
// one by one. Between the list and the apply someone may create an object
// of the same name, as between a read and the apply: the window is the
// same.
func (a *Applier) absent(ctx context.Context, objs map[objKey]*desiredObject, live map[objKey]*unstructured.Unstructured, unlisted map[schema.GroupKind]bool) map[objKey]bool {
	missing := map[schema.GroupKind][]objKey{}
	mappings := map[schema.GroupKind]*meta.RESTMapping{}
	for k, d := range objs {
		if d.mapping == nil || live[k] != nil || unlisted[k.groupKind()] {
			continue
		}
		missing[k.groupKind()] = append(missing[k.groupKind()], k)
		mappings[k.groupKind()] = d.mapping
	}
	out := map[objKey]bool{}
	for gk, keys := range missing {
		if len(keys) < absentListThreshold {
			continue
		}
		existing, err := a.listKeys(ctx, mappings[gk])
		if err != nil {
			a.log.Debug("list of every object of a kind failed; reading its new objects one by one", "kind", gk.String(), "err", err)
			continue
		}
		for _, k := range keys {
			if !existing[k] {
				out[k] = true
			}
		}
	}
	return out
}

// listKeys lists the keys of every object of a kind in the cluster,
// metadata only.
func (a *Applier) listKeys(ctx context.Context, m *meta.RESTMapping) (map[objKey]bool, error) {
	out := map[objKey]bool{}
	opts := metav1.ListOptions{Limit: listPageSize}
	for {
		list, err := a.md.Resource(m.Resource).List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for _, o := range list.Items {
			out[objKey{Group: m.GroupVersionKind.Group, Kind: m.GroupVersionKind.Kind, Namespace: o.Namespace, Name: o.Name}] = true
		}
		if opts.Continue = list.GetContinue(); opts.Continue == "" {
			return out, nil
		}
	}
}

// prune deletes the live managed objects that carry an owner annotation and
// are not desired.
// KeepAnnotation=KeepValue on an object (Helm's resource policy) makes
// pruning release it instead of deleting it: Flotilla's label and
// annotations are removed, and the object stays as its own.
const (
	KeepAnnotation = "helm.sh/resource-policy"
	KeepValue      = "keep"
)

// adoptable reports whether an object that is not Flotilla's may be taken
// over: both it and the desired one say they outlive their owner
// (KeepAnnotation), as Istio's CRDs do, whether an earlier Istio install
// left them or Flotilla released them.
func adoptable(d *desiredObject, live *unstructured.Unstructured) bool {
	return d.obj.GetAnnotations()[KeepAnnotation] == KeepValue && live.GetAnnotations()[KeepAnnotation] == KeepValue
}

// release removes Flotilla's label and annotations from a live object.
func (a *Applier) release(ctx context.Context, m *meta.RESTMapping, obj *unstructured.Unstructured) error {
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:null},"annotations":{%q:null,%q:null}}}`, ManagedByLabel, OwnerAnnotation, HashAnnotation))
	_, err := a.resource(m, obj.GetNamespace()).Patch(ctx, obj.GetName(), types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

func (a *Applier) prune(ctx context.Context, desired map[objKey]*desiredObject, live map[objKey]*unstructured.Unstructured) []ObjectResult {
	var results []ObjectResult
	for _, k := range slices.SortedFunc(maps.Keys(live), compareKeys) {
		obj := live[k]
		owner := obj.GetAnnotations()[OwnerAnnotation]
		if _, ok := desired[k]; ok || owner == "" {
			continue
		}
		res := ObjectResult{Owner: owner, APIVersion: obj.GetAPIVersion(), Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Action: Deleted}
		m, err := a.restMapping(obj.GroupVersionKind())
		if err == nil && obj.GetAnnotations()[KeepAnnotation] == KeepValue {
			// Released, not deleted: Istio's CRDs carry this, since
			// deleting one deletes every object of its kind.
			if err = a.release(ctx, m, obj); err == nil {
				a.written.Delete(k)
				a.log.Info("released, not pruned (resource policy keep)", "object", id(k.Kind, k.Namespace, k.Name), "owner", owner)
				results = append(results, ObjectResult{Owner: owner, APIVersion: obj.GetAPIVersion(), Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Action: Released})
				continue
			}
		} else if err == nil {
			err = a.deleteIfUnchanged(ctx, m, obj)
			if apierrors.IsConflict(err) {
				// The copy may be an informer's, behind the object: read it
				// again, and delete it if it is still ours and undesired.
				fresh, gerr := a.resource(m, k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
				switch {
				case apierrors.IsNotFound(gerr):
					err = gerr
				case gerr == nil && (fresh.GetLabels()[ManagedByLabel] != ManagedByValue || fresh.GetAnnotations()[OwnerAnnotation] == ""):
					continue // no longer Flotilla's: not ours to delete
				case gerr == nil:
					err = a.deleteIfUnchanged(ctx, m, fresh)
				}
			}
		}
		switch {
		case err == nil:
			a.written.Delete(k)
			a.log.Info("pruned", "object", id(k.Kind, k.Namespace, k.Name), "owner", owner)
		case apierrors.IsNotFound(err):
			// Already gone: the outcome is the one wanted.
		case apierrors.IsConflict(err):
			res.Action, res.Message = Failed, fmt.Errorf("prune %s: it changed since it was listed; the next apply retries: %w", id(k.Kind, k.Namespace, k.Name), err).Error()
		default:
			res.Action, res.Message = Failed, fmt.Errorf("prune %s: %w", id(k.Kind, k.Namespace, k.Name), err).Error()
		}
		results = append(results, res)
	}
	return results
}

// deleteIfUnchanged deletes obj, provided it is still the very version
// given (same UID and resource version).
func (a *Applier) deleteIfUnchanged(ctx context.Context, m *meta.RESTMapping, obj *unstructured.Unstructured) error {
	uid, rv := obj.GetUID(), obj.GetResourceVersion()
	return a.resource(m, obj.GetNamespace()).Delete(ctx, obj.GetName(), metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
}

func compareKeys(x, y objKey) int {
	return cmp.Or(cmp.Compare(x.Group, y.Group), cmp.Compare(x.Kind, y.Kind),
		cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
}
