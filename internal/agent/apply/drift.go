package apply

import (
	"context"
	"errors"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// kindRetryPeriod is how often Run retries watching kinds whose resource the
// cluster did not serve yet (a CRD installed later).
const kindRetryPeriod = 30 * time.Second

// syncPollPeriod is how often a sweep waits for an informer's first list.
const syncPollPeriod = 100 * time.Millisecond

// maxRepairRetries bounds the retries of a repair that failed transiently
// before OnDrift hears of the failure; the next resync starts over.
const maxRepairRetries = 10

// Run watches the managed objects of the known kinds (those of the last
// Apply's desired set and Options.GVKs) and repairs drift until ctx ends:
// when a desired object that Apply had put in place is deleted or its
// content stops matching, Run re-applies it within seconds and reports a
// Drift to Options.OnDrift. Run returns nil once ctx is cancelled and every
// goroutine it started has stopped. It may be called once per Applier.
func (a *Applier) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("apply: run called twice on one applier")
	}
	w := &watcher{
		a: a,
		factory: dynamicinformer.NewFilteredDynamicSharedInformerFactory(a.dyn, a.resync, metav1.NamespaceAll,
			func(o *metav1.ListOptions) { o.LabelSelector = ManagedByLabel + "=" + ManagedByValue }),
		queue:   workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[objKey]()),
		watched: map[schema.GroupKind]cache.SharedIndexInformer{},
	}
	a.watch.Store(w)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.work(ctx)
	}()
	defer func() {
		a.watch.Store(nil)
		w.factory.Shutdown() // waits for the informers, which stop with ctx
		w.queue.ShutDown()
		wg.Wait()
	}()

	retry := time.NewTicker(kindRetryPeriod)
	defer retry.Stop()
	for {
		w.watchKinds(ctx)
		// States:
		//   ctx done      -> stop informers and worker, return nil
		//   kindsChanged  -> an Apply brought kinds; watch those not watched yet
		//   retry tick    -> watch kinds the cluster did not serve before
		// Events and repairs flow meanwhile: informers -> queue -> worker.
		select {
		case <-ctx.Done():
			return nil
		case <-a.kindsChanged:
		case <-retry.C:
		}
	}
}

// watcher is Run's state: one informer per watched kind feeding one queue
// of object keys, drained by one worker. A key with an empty Name is a
// sweep of its kind: once the kind's informer has listed, every desired
// object of the kind is examined, so a deletion that happened before the
// watch began is repaired too.
type watcher struct {
	a       *Applier
	factory dynamicinformer.DynamicSharedInformerFactory
	queue   workqueue.TypedRateLimitingInterface[objKey]

	mu      sync.RWMutex                                   // guards watched
	watched map[schema.GroupKind]cache.SharedIndexInformer // written by Run's loop, read by the worker
}

// watchKinds starts informers for the known kinds not watched yet. Kinds
// the cluster does not serve are left for a later call.
func (w *watcher) watchKinds(ctx context.Context) {
	started := false
	for _, gvk := range w.a.knownKinds() {
		gk := gvk.GroupKind()
		if w.informer(gk) != nil {
			continue
		}
		m, err := w.a.restMapping(gvk)
		if err != nil {
			w.a.log.Debug("not watching a kind the cluster does not serve; will retry", "kind", gvk.String(), "err", err)
			continue
		}
		inf := w.factory.ForResource(m.Resource).Informer()
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    w.enqueue,
			UpdateFunc: func(_, obj any) { w.enqueue(obj) },
			DeleteFunc: w.enqueue,
		}); err != nil {
			w.a.log.Warn("cannot watch kind", "kind", gvk.String(), "err", err)
			continue
		}
		w.mu.Lock()
		w.watched[gk] = inf
		w.mu.Unlock()
		w.queue.Add(objKey{Group: gk.Group, Kind: gk.Kind})
		w.a.log.Debug("watching kind", "kind", gvk.String())
		started = true
	}
	if started {
		w.factory.Start(ctx.Done())
	}
}

func (w *watcher) informer(gk schema.GroupKind) cache.SharedIndexInformer {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.watched[gk]
}

// enqueue queues the key of an informer event's object if it is desired.
func (w *watcher) enqueue(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	if k := keyOf(u); w.a.lookup(k) != nil {
		w.queue.Add(k)
	}
}

// work drains the queue until it shuts down.
func (w *watcher) work(ctx context.Context) {
	for {
		k, shutdown := w.queue.Get()
		if shutdown {
			return
		}
		if ctx.Err() == nil {
			if k.Name == "" {
				w.sweep(k)
			} else {
				w.check(ctx, k)
			}
		}
		w.queue.Done(k)
	}
}

// sweep queues every applied desired object of k's kind once its informer
// has listed.
func (w *watcher) sweep(k objKey) {
	inf := w.informer(k.groupKind())
	if inf == nil {
		return
	}
	if !inf.HasSynced() {
		w.queue.AddAfter(k, syncPollPeriod)
		return
	}
	w.a.mu.RLock()
	defer w.a.mu.RUnlock()
	for dk, d := range w.a.desired {
		if dk.groupKind() == k.groupKind() && d.applied.Load() {
			w.queue.Add(dk)
		}
	}
}

// check compares one desired object with the informer's copy and repairs it
// if it drifted.
func (w *watcher) check(ctx context.Context, k objKey) {
	d := w.a.lookup(k)
	inf := w.informer(k.groupKind())
	if d == nil || !d.applied.Load() || inf == nil {
		w.queue.Forget(k)
		return
	}
	live, exists := w.cached(inf, d)
	if exists && upToDate(live, d) {
		w.queue.Forget(k)
		return
	}
	change := ChangeModified
	if !exists {
		change = ChangeDeleted
	}

	res, current, err := w.a.repair(ctx, d)
	switch {
	case !current || res.Action == Unchanged:
		// A later Apply took over, or the cache was behind the cluster.
		w.queue.Forget(k)
		return
	case res.Action == Created:
		change = ChangeDeleted
	case res.Action == Updated:
		change = ChangeModified
	case retryable(err) && w.queue.NumRequeues(k) < maxRepairRetries:
		w.a.log.Warn("drift repair failed; retrying", "object", d.id(), "change", string(change), "err", err)
		w.queue.AddRateLimited(k)
		return
	}
	w.queue.Forget(k)
	drift := Drift{
		Owner: d.owner, APIVersion: d.obj.GetAPIVersion(), Kind: k.Kind, Namespace: k.Namespace, Name: k.Name,
		Change: change, Restored: res.Action != Failed, Message: res.Message,
	}
	if drift.Restored {
		w.a.log.Info("drift repaired", "object", d.id(), "owner", d.owner, "change", string(change))
	} else {
		w.a.log.Warn("drift not repaired", "object", d.id(), "owner", d.owner, "change", string(change), "err", err)
	}
	if w.a.onDrift != nil {
		w.a.onDrift(drift)
	}
}

// cached returns the informer's copy of d's live object.
func (w *watcher) cached(inf cache.SharedIndexInformer, d *desiredObject) (*unstructured.Unstructured, bool) {
	key := d.key.Name
	if d.mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		key = d.key.Namespace + "/" + d.key.Name
	}
	obj, exists, err := inf.GetStore().GetByKey(key)
	if err != nil || !exists {
		return nil, false
	}
	u, ok := obj.(*unstructured.Unstructured)
	return u, ok
}

// repair re-applies d through Apply's path. current is false if d is no
// longer the desired object for its key, in which case nothing was done.
func (a *Applier) repair(ctx context.Context, d *desiredObject) (res ObjectResult, current bool, err error) {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if a.lookup(d.key) != d {
		return ObjectResult{}, false, nil
	}
	res, err = a.ensure(ctx, d, nil, false)
	return res, true, err
}

// retryable reports whether a failed repair may succeed if tried again.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	return !errors.Is(err, errUnmanaged) && !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) &&
		!apierrors.IsForbidden(err) && !errors.Is(err, context.Canceled)
}
