package agent

import (
	"context"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"flotilla.io/flotilla/internal/compile"
)

var (
	destinationRules    = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	peerAuthentications = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
	sidecars            = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "sidecars"}
)

// userRules watches the DestinationRules, PeerAuthentications and Sidecars
// that someone other than Flotilla keeps in the cluster, so that the
// compiler leaves their hosts and namespaces alone; a change pokes the
// reconcile loop.
type userRules struct {
	factory dynamicinformer.DynamicSharedInformerFactory
	inf     cache.SharedIndexInformer
	// wide holds the PeerAuthentication and Sidecar informers, by kind.
	wide map[string]cache.SharedIndexInformer
}

func newUserRules(dyn dynamic.Interface, poke func()) *userRules {
	f := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 30*time.Minute)
	u := &userRules{factory: f, inf: f.ForResource(destinationRules).Informer(), wide: map[string]cache.SharedIndexInformer{
		"PeerAuthentication": f.ForResource(peerAuthentications).Informer(),
		"Sidecar":            f.ForResource(sidecars).Informer(),
	}}
	onUser := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if o, ok := obj.(*unstructured.Unstructured); ok && o.GetLabels()[compile.LabelManagedBy] != compile.ManagedBy {
			poke()
		}
	}
	for _, inf := range append([]cache.SharedIndexInformer{u.inf}, u.wide["PeerAuthentication"], u.wide["Sidecar"]) {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onUser, UpdateFunc: func(_, obj any) { onUser(obj) }, DeleteFunc: onUser})
	}
	return u
}

// namespaceWide maps "<Kind>/<namespace>" to the first "<ns>/<name>" of a
// PeerAuthentication or Sidecar without a selector that Flotilla does not
// manage (compile.Cluster.NamespaceWide).
func (u *userRules) namespaceWide() map[string]string {
	out := map[string]string{}
	for kind, inf := range u.wide {
		field := map[string]string{"PeerAuthentication": "selector", "Sidecar": "workloadSelector"}[kind]
		keys := inf.GetStore().ListKeys()
		sort.Strings(keys)
		for _, k := range keys {
			obj, ok, _ := inf.GetStore().GetByKey(k)
			if !ok {
				continue
			}
			o := obj.(*unstructured.Unstructured)
			if o.GetLabels()[compile.LabelManagedBy] == compile.ManagedBy {
				continue
			}
			if _, scoped, _ := unstructured.NestedFieldNoCopy(o.Object, "spec", field); scoped {
				continue
			}
			key := kind + "/" + o.GetNamespace()
			if _, seen := out[key]; !seen {
				out[key] = o.GetNamespace() + "/" + o.GetName()
			}
		}
	}
	return out
}

// run starts the informer until ctx ends. A cluster without Istio's CRDs
// never syncs: hosts then returns no rules, as there are none.
func (u *userRules) run(ctx context.Context) error {
	u.factory.Start(ctx.Done())
	<-ctx.Done()
	u.factory.Shutdown()
	return nil
}

// hosts maps each host (as a svc.cluster.local name when it is short) to
// the first "<ns>/<name>" of a DestinationRule for it that Flotilla does
// not manage.
func (u *userRules) hosts() map[string]string {
	out := map[string]string{}
	keys := u.inf.GetStore().ListKeys()
	sort.Strings(keys)
	for _, k := range keys {
		obj, ok, _ := u.inf.GetStore().GetByKey(k)
		if !ok {
			continue
		}
		o := obj.(*unstructured.Unstructured)
		if o.GetLabels()[compile.LabelManagedBy] == compile.ManagedBy {
			continue
		}
		host, _, _ := unstructured.NestedString(o.Object, "spec", "host")
		if host == "" {
			continue
		}
		host = fullHost(host, o.GetNamespace())
		if _, seen := out[host]; !seen {
			out[host] = o.GetNamespace() + "/" + o.GetName()
		}
	}
	return out
}

// fullHost completes a short Kubernetes service name ("reviews",
// "reviews.shop") to its svc.cluster.local name, as Istio does.
func fullHost(host, namespace string) string {
	switch strings.Count(host, ".") {
	case 0:
		return host + "." + namespace + ".svc.cluster.local"
	case 1:
		return host + ".svc.cluster.local"
	}
	return host
}
