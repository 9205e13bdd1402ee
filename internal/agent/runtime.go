package agent

import (
	"cmp"
	"slices"
	"sort"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/registry"
)

// Labels and annotations the runtime watch reads.
const (
	// labelEastWestGateway marks the east-west gateway's Service (Istio's
	// own convention for the gateway it installs for multi-network meshes).
	labelEastWestGateway = "istio"
	eastWestGatewayValue = "eastwestgateway"
	// AnnotationExternalAddress overrides the east-west gateway's address,
	// for clusters without a load-balancer controller (the local fleet).
	AnnotationExternalAddress = "flotilla.io/external-address"
	labelRegion               = "topology.kubernetes.io/region"
	// defaultEastWestPort is Istio's AUTO_PASSTHROUGH port.
	defaultEastWestPort = 15443
)

// sliceByService indexes EndpointSlices by "<namespace>/<service>".
const sliceByService = "service"

// runtimeWatch keeps what runs in the cluster: its services, their ready
// endpoints per locality (EndpointSlices, with each node's region), and the
// east-west gateway. Changes mark services dirty; a session turns the dirty
// set into the next delta, so nothing is dropped however fast things change:
// what goes out is the current state of each changed service.
type runtimeWatch struct {
	svcInf, sliceInf, nodeInf cache.SharedIndexInformer

	mu      sync.Mutex
	dirty   map[string]bool // service keys changed since the last report
	changed chan struct{}   // capacity 1: a pending signal coalesces the next ones
}

func newRuntimeWatch(f informers.SharedInformerFactory) *runtimeWatch {
	w := &runtimeWatch{
		svcInf:   f.Core().V1().Services().Informer(),
		sliceInf: f.Discovery().V1().EndpointSlices().Informer(),
		nodeInf:  f.Core().V1().Nodes().Informer(),
		dirty:    map[string]bool{},
		changed:  make(chan struct{}, 1),
	}
	_ = w.sliceInf.AddIndexers(cache.Indexers{sliceByService: func(obj any) ([]string, error) {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
			return nil, nil
		}
		return []string{registry.Key(s.Namespace, s.Labels[discoveryv1.LabelServiceName])}, nil
	}})
	mark := func(key func(obj any) string) cache.ResourceEventHandlerFuncs {
		on := func(obj any) {
			if k := key(obj); k != "" {
				w.markDirty(k)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, obj any) { on(obj) }, DeleteFunc: on}
	}
	_, _ = w.svcInf.AddEventHandler(mark(func(obj any) string {
		k, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		return k
	}))
	_, _ = w.sliceInf.AddEventHandler(mark(func(obj any) string {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok && s.Labels[discoveryv1.LabelServiceName] != "" {
			return registry.Key(s.Namespace, s.Labels[discoveryv1.LabelServiceName])
		}
		return ""
	}))
	// A node's region is the region of every endpoint on it: a node change
	// may move endpoints of any service.
	_, _ = w.nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.markAll() },
		UpdateFunc: func(old, obj any) { w.nodeUpdated(old, obj) },
		DeleteFunc: func(any) { w.markAll() },
	})
	return w
}

func (w *runtimeWatch) markDirty(key string) {
	w.mu.Lock()
	w.dirty[key] = true
	w.mu.Unlock()
	w.signal()
}

func (w *runtimeWatch) markAll() {
	w.mu.Lock()
	for _, k := range w.svcInf.GetStore().ListKeys() {
		w.dirty[k] = true
	}
	w.mu.Unlock()
	w.signal()
}

func (w *runtimeWatch) nodeUpdated(old, obj any) {
	o, ok1 := old.(*corev1.Node)
	n, ok2 := obj.(*corev1.Node)
	if ok1 && ok2 && o.Labels[labelRegion] == n.Labels[labelRegion] {
		return // heartbeats and status: no endpoint moves
	}
	w.markAll()
}

func (w *runtimeWatch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *runtimeWatch) synced() bool {
	return w.svcInf.HasSynced() && w.sliceInf.HasSynced() && w.nodeInf.HasSynced()
}

// state is a runtime state: services by key, and the gateway.
type runtimeState struct {
	services map[string]*agentv1.ServiceState
	gateway  *agentv1.EastWestGateway
}

// full returns the whole current state and clears the dirty set.
func (w *runtimeWatch) full() runtimeState {
	w.mu.Lock()
	clear(w.dirty)
	w.mu.Unlock()
	st := runtimeState{services: map[string]*agentv1.ServiceState{}}
	for _, k := range w.svcInf.GetStore().ListKeys() {
		if s := w.service(k); s != nil {
			st.services[k] = s
		}
	}
	st.gateway = w.eastWestGateway()
	return st
}

// takeDirty returns the services changed since the last call (nil when
// gone) and clears the set.
func (w *runtimeWatch) takeDirty() map[string]*agentv1.ServiceState {
	w.mu.Lock()
	keys := make([]string, 0, len(w.dirty))
	for k := range w.dirty {
		keys = append(keys, k)
	}
	clear(w.dirty)
	w.mu.Unlock()
	out := make(map[string]*agentv1.ServiceState, len(keys))
	for _, k := range keys {
		out[k] = w.service(k)
	}
	return out
}

// service builds the current state of the service at key; nil when there
// is no such Service.
func (w *runtimeWatch) service(key string) *agentv1.ServiceState {
	obj, ok, _ := w.svcInf.GetStore().GetByKey(key)
	if !ok {
		return nil
	}
	svc := obj.(*corev1.Service)
	out := &agentv1.ServiceState{Namespace: svc.Namespace, Name: svc.Name, Labels: svc.Labels, Selector: svc.Spec.Selector,
		ExternalAddress: externalAddress(svc)}
	for _, p := range svc.Spec.Ports {
		out.Ports = append(out.Ports, &agentv1.ServicePort{Name: p.Name, Port: uint32(p.Port), Protocol: string(p.Protocol)})
	}
	type loc struct{ region, zone string }
	ready := map[loc]uint32{}
	eps, _ := w.sliceInf.GetIndexer().ByIndex(sliceByService, key)
	seen := map[string]bool{} // an address in two slices (one per family) counts once
	for _, o := range eps {
		for _, ep := range o.(*discoveryv1.EndpointSlice).Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready || len(ep.Addresses) == 0 {
				continue
			}
			id := ep.Addresses[0]
			if ep.TargetRef != nil {
				id = string(ep.TargetRef.UID)
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			l := loc{}
			if ep.Zone != nil {
				l.zone = *ep.Zone
			}
			if ep.NodeName != nil {
				if n, ok, _ := w.nodeInf.GetStore().GetByKey(*ep.NodeName); ok {
					l.region = n.(*corev1.Node).Labels[labelRegion]
				}
			}
			ready[l]++
		}
	}
	for l, n := range ready {
		out.Endpoints = append(out.Endpoints, &agentv1.LocalityEndpoints{Region: l.region, Zone: l.zone, Ready: n})
	}
	sort.Slice(out.Endpoints, func(i, j int) bool {
		a, b := out.Endpoints[i], out.Endpoints[j]
		return cmp.Or(cmp.Compare(a.GetRegion(), b.GetRegion()), cmp.Compare(a.GetZone(), b.GetZone())) < 0
	})
	return out
}

// eastWestGateway finds the Service labelled istio=eastwestgateway (the
// first by key when there are several) and where other clusters reach it.
func (w *runtimeWatch) eastWestGateway() *agentv1.EastWestGateway {
	keys := w.svcInf.GetStore().ListKeys()
	slices.Sort(keys)
	for _, k := range keys {
		obj, ok, _ := w.svcInf.GetStore().GetByKey(k)
		if !ok {
			continue
		}
		svc := obj.(*corev1.Service)
		if svc.Labels[labelEastWestGateway] != eastWestGatewayValue {
			continue
		}
		g := &agentv1.EastWestGateway{Namespace: svc.Namespace, Name: svc.Name, Port: defaultEastWestPort}
		for _, p := range svc.Spec.Ports {
			if p.Name == "tls" {
				g.Port = uint32(p.Port)
			}
		}
		g.Address = externalAddress(svc)
		return g
	}
	return nil
}

// externalAddress is where clients outside the cluster reach svc: the
// annotation flotilla.io/external-address when set, else its first
// LoadBalancer address; "" when neither.
func externalAddress(svc *corev1.Service) string {
	if a := svc.Annotations[AnnotationExternalAddress]; a != "" {
		return a
	}
	if ing := svc.Status.LoadBalancer.Ingress; len(ing) > 0 {
		return cmp.Or(ing[0].IP, ing[0].Hostname)
	}
	return ""
}

// runtimeReporter is one session's view of what it sent: the sequence
// number and the state as sent, whose digest it reports.
type runtimeReporter struct {
	w    *runtimeWatch
	seq  uint64
	sent runtimeState
}

// fullReport returns the next report as a full one.
func (r *runtimeReporter) fullReport() *agentv1.Runtime {
	r.sent = r.w.full()
	r.seq++
	m := &agentv1.Runtime{Seq: r.seq, Full: true, EastWestGateway: r.sent.gateway}
	keys := make([]string, 0, len(r.sent.services))
	for k := range r.sent.services {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		m.Services = append(m.Services, r.sent.services[k])
	}
	return m
}

// delta returns the next report with what changed, or nil when nothing did.
func (r *runtimeReporter) delta() *agentv1.Runtime {
	changed := r.w.takeDirty()
	// The gateway is looked for again only when a changed service is, or
	// was, an east-west gateway: a delta should not cost a scan of every
	// service.
	gw := r.sent.gateway
	for k, s := range changed {
		if s.GetLabels()[labelEastWestGateway] == eastWestGatewayValue || gw != nil && k == registry.Key(gw.GetNamespace(), gw.GetName()) {
			gw = r.w.eastWestGateway()
			break
		}
	}
	m := &agentv1.Runtime{}
	keys := make([]string, 0, len(changed))
	for k := range changed {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		s := changed[k]
		switch {
		case s == nil && r.sent.services[k] != nil:
			m.Removed = append(m.Removed, k)
			delete(r.sent.services, k)
		case s != nil:
			m.Services = append(m.Services, s)
			r.sent.services[k] = s
		}
	}
	switch {
	case gw == nil && r.sent.gateway != nil:
		m.EastWestGatewayRemoved = true
	case gw != nil && (r.sent.gateway == nil || !gatewayEqual(gw, r.sent.gateway)):
		m.EastWestGateway = gw
	}
	r.sent.gateway = gw
	if len(m.Services) == 0 && len(m.Removed) == 0 && m.EastWestGateway == nil && !m.EastWestGatewayRemoved {
		return nil
	}
	r.seq++
	m.Seq = r.seq
	return m
}

// digest reports what the state as sent hashes to.
func (r *runtimeReporter) digest() *agentv1.RuntimeDigest {
	return &agentv1.RuntimeDigest{Seq: r.seq, Sha256: registry.Digest(r.sent.services, r.sent.gateway)}
}

func gatewayEqual(a, b *agentv1.EastWestGateway) bool {
	return a.GetNamespace() == b.GetNamespace() && a.GetName() == b.GetName() && a.GetAddress() == b.GetAddress() && a.GetPort() == b.GetPort()
}
