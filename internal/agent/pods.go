package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"flotilla.io/flotilla/internal/compile"
)

var podsGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// subsetWatch keeps the labels of the cluster's pods (metadata only) so the
// agent can warn about a ServiceRoute subset that matches no pod: traffic
// sent to it would fail. A pod change pokes the reconcile loop only when
// the pod matches (or matched) a subset of a route in its namespace.
type subsetWatch struct {
	poke    func()
	factory metadatainformer.SharedInformerFactory
	inf     cache.SharedIndexInformer
	mu      sync.Mutex
	watched map[string][]labels.Selector // namespace → the subsets' selectors
}

func newSubsetWatch(md metadata.Interface, poke func()) *subsetWatch {
	f := metadatainformer.NewSharedInformerFactory(md, 30*time.Minute)
	w := &subsetWatch{poke: poke, factory: f, inf: f.ForResource(podsGVR).Informer()}
	onPod := func(objs ...any) {
		for _, obj := range objs {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if m, ok := obj.(*metav1.PartialObjectMetadata); ok && w.relevant(m.Namespace, m.Labels) {
				poke()
				return
			}
		}
	}
	_, _ = w.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onPod(obj) },
		UpdateFunc: func(old, obj any) { onPod(old, obj) },
		DeleteFunc: func(obj any) { onPod(obj) },
	})
	return w
}

func (w *subsetWatch) run(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	if cache.WaitForCacheSync(ctx.Done(), w.inf.HasSynced) {
		w.poke() // warnings can be judged now
	}
	<-ctx.Done()
	w.factory.Shutdown()
	return nil
}

// proxiesByRevision counts the pods each Istio revision injected; nil
// before the pods have synced.
func (w *subsetWatch) proxiesByRevision() map[string]int32 {
	if !w.inf.HasSynced() {
		return nil
	}
	out := map[string]int32{}
	for _, obj := range w.inf.GetStore().List() {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			if rev := proxyRevision(m.Labels, m.Annotations); rev != "" {
				out[rev]++
			}
		}
	}
	return out
}

func (w *subsetWatch) relevant(ns string, l map[string]string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sel := range w.watched[ns] {
		if sel.Matches(labels.Set(l)) {
			return true
		}
	}
	return false
}

// warnings returns, by owner, a warning for each subset of a compiled
// ServiceRoute (its DestinationRule's subsets) that matches no pod in its
// namespace, and watches those namespaces' pods from now on. It says
// nothing until the pod informer has synced.
func (w *subsetWatch) warnings(cluster string, objs []*unstructured.Unstructured) map[string][]string {
	watched := map[string][]labels.Selector{}
	out := map[string][]string{}
	synced := w.inf.HasSynced()
	for _, o := range objs {
		owner := o.GetAnnotations()[compile.AnnotationOwner]
		if o.GetKind() != "DestinationRule" || !strings.Contains(owner, "/serviceroutes/") {
			continue
		}
		subsets, _, _ := unstructured.NestedSlice(o.Object, "spec", "subsets")
		for _, s := range subsets {
			m, _ := s.(map[string]any)
			raw, _ := m["labels"].(map[string]any)
			set := labels.Set{}
			for k, v := range raw {
				set[k], _ = v.(string)
			}
			sel := labels.SelectorFromSet(set)
			watched[o.GetNamespace()] = append(watched[o.GetNamespace()], sel)
			if synced && !w.anyPod(o.GetNamespace(), sel) {
				keys := slices.Sorted(maps.Keys(set))
				pairs := make([]string, len(keys))
				for i, k := range keys {
					pairs[i] = k + "=" + set[k]
				}
				out[owner] = append(out[owner], fmt.Sprintf("subset %v (%s) matches no pod in namespace %s of cluster %s: traffic routed to it fails until such pods run",
					m["name"], strings.Join(pairs, ","), o.GetNamespace(), cluster))
			}
		}
	}
	w.mu.Lock()
	w.watched = watched
	w.mu.Unlock()
	return out
}

func (w *subsetWatch) anyPod(ns string, sel labels.Selector) bool {
	objs, err := w.inf.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
	if err != nil {
		return true // no index: say nothing rather than something wrong
	}
	for _, obj := range objs {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok && sel.Matches(labels.Set(m.Labels)) {
			return true
		}
	}
	return false
}
