package agent

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

// inventoryWatch watches the cluster's namespaces and reports deltas; a
// namespace appearing or going also pokes the reconcile loop. Services and
// their endpoints are runtime state (runtimeWatch), on the same informer
// factory.
type inventoryWatch struct {
	kube    kubernetes.Interface
	factory informers.SharedInformerFactory
	// policies, when set, gives the cluster's own Istio objects that
	// Flotilla leaves alone, for full reports.
	policies func() *agentv1.ClusterPolicies
	nsInf    cache.SharedIndexInformer
	report   func(*agentv1.ConnectRequest)
	poke     func()
	// proxies counts the pods each Istio revision injected.
	proxies func() map[string]int32
	// webhooks says the agent may read mutating webhooks (it manages
	// Istio's lifecycle), to report the revisions' webhooks and tags.
	webhooks bool

	mu        sync.Mutex
	lastIstio *agentv1.Istio // what the last report said of Istio
}

func newInventoryWatch(kube kubernetes.Interface, report func(*agentv1.ConnectRequest), poke func()) *inventoryWatch {
	f := informers.NewSharedInformerFactory(kube, 30*time.Minute)
	w := &inventoryWatch{kube: kube, factory: f, nsInf: f.Core().V1().Namespaces().Informer(), report: report, poke: poke,
		proxies: func() map[string]int32 { return nil }}
	w.nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if ns, ok := obj.(*corev1.Namespace); ok {
				w.send(&agentv1.Inventory{Namespaces: []*agentv1.Namespace{namespaceOf(ns)}})
				poke()
			}
		},
		UpdateFunc: func(_, obj any) {
			if ns, ok := obj.(*corev1.Namespace); ok {
				w.send(&agentv1.Inventory{Namespaces: []*agentv1.Namespace{namespaceOf(ns)}})
			}
		},
		DeleteFunc: func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				w.send(&agentv1.Inventory{RemovedNamespaces: []string{key}})
				poke()
			}
		},
	})
	return w
}

func (w *inventoryWatch) send(inv *agentv1.Inventory) {
	if !w.synced() {
		return // the initial list goes out as one full report
	}
	w.report(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inv}})
}

func (w *inventoryWatch) synced() bool { return w.nsInf.HasSynced() }

// run starts the informers (its own and runtimeWatch's) and pokes the
// reconcile loop once the namespaces sync.
func (w *inventoryWatch) run(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.nsInf.HasSynced) {
		return nil // ctx ended
	}
	w.poke()
	w.istioLoop(ctx)
	w.factory.Shutdown()
	return nil
}

// namespaces lists the cluster's namespaces; ok is false until synced.
func (w *inventoryWatch) namespaces() ([]string, bool) {
	if !w.nsInf.HasSynced() {
		return nil, false
	}
	out := w.nsInf.GetStore().ListKeys()
	sort.Strings(out)
	return out, true
}

// full builds a complete inventory report.
func (w *inventoryWatch) full(ctx context.Context) (*agentv1.Inventory, error) {
	if !w.synced() {
		return nil, errors.New("informers not synced yet")
	}
	inv := &agentv1.Inventory{Full: true}
	if w.policies != nil {
		inv.ClusterPolicies = w.policies()
	}
	if v, err := w.kube.Discovery().ServerVersion(); err == nil {
		inv.KubernetesVersion = v.GitVersion
	}
	inv.Istio = istioState(ctx, w.kube, w.webhooks, w.proxies())
	w.mu.Lock()
	w.lastIstio = inv.Istio
	w.mu.Unlock()
	for _, obj := range w.nsInf.GetStore().List() {
		inv.Namespaces = append(inv.Namespaces, namespaceOf(obj.(*corev1.Namespace)))
	}
	sort.Slice(inv.Namespaces, func(i, j int) bool { return inv.Namespaces[i].GetName() < inv.Namespaces[j].GetName() })
	return inv, nil
}

func namespaceOf(ns *corev1.Namespace) *agentv1.Namespace {
	return &agentv1.Namespace{Name: ns.Name, Labels: ns.Labels}
}
