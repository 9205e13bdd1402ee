// Package registry is the fleet service registry: what runs in every
// cluster, as agents report it, merged into one view of the fleet's
// services. It is runtime state, kept in memory and apart from intent: it
// never enters the store's event log, and watchers of intent never see it.
//
//	agent ──Runtime{seq, full | delta}──▶ Apply ──▶ per-cluster state ──Services──▶ fleet view
//	agent ──RuntimeDigest{seq, sha256}──▶ Check ──(differs)──▶ ErrOutOfSync: ask for a full report
//
// A service is identified by namespace and name: the same namespace/name in
// several clusters is one service (namespace sameness). Ports that disagree
// between clusters are reported as conflicts, never merged silently.
//
// The registry is safe for concurrent use. It does no I/O.
package registry

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

// ErrOutOfSync says a report cannot be applied or does not match: a delta
// whose seq does not follow the last one, or a digest that differs. The
// caller asks the agent for a full report; the registry keeps its state.
var ErrOutOfSync = errors.New("runtime state out of sync")

// Registry holds the runtime state of every cluster.
type Registry struct {
	mu       sync.Mutex
	clusters map[string]*cluster // by cluster FQN
	changed  chan struct{}       // capacity 1: a pending signal coalesces the next ones
	gen      uint64              // counts changes of content
	pending  Changes             // what moved since the last TakeChanges
}

// Changes says what moved in the registry: the services (by Key) whose
// instances changed in some cluster, including their liveness, and the
// clusters (FQNs) whose east-west gateway did.
type Changes struct {
	Services map[string]bool
	Gateways map[string]bool
}

// Empty reports whether nothing moved.
func (c Changes) Empty() bool { return len(c.Services) == 0 && len(c.Gateways) == 0 }

// gatewayMoved notes that cluster's east-west gateway changed. Callers
// hold r.mu.
func (r *Registry) gatewayMoved(clusterFQN string) {
	if r.pending.Gateways == nil {
		r.pending.Gateways = map[string]bool{}
	}
	r.pending.Gateways[clusterFQN] = true
}

// ServiceKeys returns the keys of the services cluster runs, sorted.
func (r *Registry) ServiceKeys(clusterFQN string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterFQN]; c != nil {
		return slices.Sorted(maps.Keys(c.services))
	}
	return nil
}

// TakeChanges returns what moved since its last call, and forgets it.
func (r *Registry) TakeChanges() Changes {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.pending
	r.pending = Changes{}
	return out
}

// moved notes that the service with key changed. Callers hold r.mu.
func (r *Registry) moved(key string) {
	if r.pending.Services == nil {
		r.pending.Services = map[string]bool{}
	}
	r.pending.Services[key] = true
}

// movedAll notes that every service of the cluster changed (its liveness
// or its whole state), and its gateway if it has one. Callers hold r.mu.
func (r *Registry) movedAll(fqn string, c *cluster) {
	if c == nil {
		return
	}
	for k := range c.services {
		r.moved(k)
	}
	if c.gateway != nil {
		r.gatewayMoved(fqn)
	}
}

// replaced notes what differs between a cluster's old and new state.
// Callers hold r.mu.
func (r *Registry) replaced(fqn string, old, c *cluster) {
	if old == nil {
		r.movedAll(fqn, c)
		return
	}
	for k, s := range c.services {
		if o := old.services[k]; o == nil || !proto.Equal(o, s) {
			r.moved(k)
		}
	}
	for k := range old.services {
		if c.services[k] == nil {
			r.moved(k)
		}
	}
	if old.connected != c.connected {
		r.movedAll(fqn, c)
	}
	if !proto.Equal(old.gateway, c.gateway) {
		r.gatewayMoved(fqn)
	}
}

// cluster is one cluster's reported state.
type cluster struct {
	seq       uint64
	services  map[string]*agentv1.ServiceState // by "<namespace>/<name>"
	gateway   *agentv1.EastWestGateway
	connected bool
	lastSeen  time.Time // the last report, or the disconnect
	gen       uint64    // Registry.gen at the last change of services or gateway
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{clusters: map[string]*cluster{}, changed: make(chan struct{}, 1)}
}

// Changed receives a value after the registry changed; signals coalesce.
func (r *Registry) Changed() <-chan struct{} { return r.changed }

func (r *Registry) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Apply applies one Runtime report of cluster. A full report replaces what
// the registry holds; a delta must carry the seq after the last one applied,
// or Apply returns ErrOutOfSync and changes nothing. A report over the
// bounds (limits.go) is refused whole with ErrTooLarge, naming what is over.
func (r *Registry) Apply(clusterFQN string, m *agentv1.Runtime, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterFQN]
	var have map[string]*agentv1.ServiceState
	if c != nil && !m.GetFull() {
		have = c.services
	}
	if err := checkBounds(m, have); err != nil {
		return fmt.Errorf("%s: %w", clusterFQN, err)
	}
	old := c
	if m.GetFull() {
		c = &cluster{services: map[string]*agentv1.ServiceState{}, connected: true}
		r.clusters[clusterFQN] = c
	} else if c == nil || m.GetSeq() != c.seq+1 {
		have := uint64(0)
		if c != nil {
			have = c.seq
		}
		return fmt.Errorf("%w: %s sent delta %d after %d", ErrOutOfSync, clusterFQN, m.GetSeq(), have)
	}
	if !m.GetFull() && !c.connected { // its services are live again
		r.movedAll(clusterFQN, c)
	}
	c.seq = m.GetSeq()
	c.connected = true
	c.lastSeen = now
	gateway := c.gateway
	for _, s := range m.GetServices() {
		c.services[Key(s.GetNamespace(), s.GetName())] = s
	}
	for _, k := range m.GetRemoved() {
		delete(c.services, k)
	}
	if m.GetEastWestGatewayRemoved() {
		c.gateway = nil
	}
	if g := m.GetEastWestGateway(); g != nil {
		c.gateway = g
	}
	if m.GetFull() {
		c.gateway = m.GetEastWestGateway()
		if old != nil {
			gateway = old.gateway
		}
		r.replaced(clusterFQN, old, c)
	} else {
		for _, s := range m.GetServices() {
			r.moved(Key(s.GetNamespace(), s.GetName()))
		}
		for _, k := range m.GetRemoved() {
			r.moved(k)
		}
		if !proto.Equal(gateway, c.gateway) {
			r.gatewayMoved(clusterFQN)
		}
	}
	r.gen++
	c.gen = r.gen
	r.signal()
	return nil
}

// Generation tells whether cluster's services or gateway changed: it
// differs after every change, and is 0 for a cluster the registry lacks.
// Liveness (Disconnected, SetLive) does not change it.
func (r *Registry) Generation(clusterFQN string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterFQN]; c != nil {
		return c.gen
	}
	return 0
}

// Snapshot returns cluster's state as one full report, services in key
// order, and its Generation; nil when the registry lacks the cluster.
// Restore takes it back, here or in another process.
func (r *Registry) Snapshot(clusterFQN string) (*agentv1.Runtime, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterFQN]
	if c == nil {
		return nil, 0
	}
	m := &agentv1.Runtime{Full: true, Seq: c.seq, EastWestGateway: c.gateway, Services: make([]*agentv1.ServiceState, 0, len(c.services))}
	for _, k := range slices.Sorted(maps.Keys(c.services)) {
		m.Services = append(m.Services, c.services[k])
	}
	return m, c.gen
}

// Restore replaces cluster's state with a Snapshot taken elsewhere: by
// another server replica that serves the cluster, or by this server before
// it restarted. connected and lastSeen say whether that cluster's agent is
// live. The next report of the cluster's own agent must be a full one.
func (r *Registry) Restore(clusterFQN string, snap *agentv1.Runtime, connected bool, lastSeen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := &cluster{seq: snap.GetSeq(), services: make(map[string]*agentv1.ServiceState, len(snap.GetServices())),
		gateway: snap.GetEastWestGateway(), connected: connected, lastSeen: lastSeen}
	for _, s := range snap.GetServices() {
		c.services[Key(s.GetNamespace(), s.GetName())] = s
	}
	r.replaced(clusterFQN, r.clusters[clusterFQN], c)
	r.gen++
	c.gen = r.gen
	r.clusters[clusterFQN] = c
	r.signal()
}

// SetLive says whether cluster's agent is live, as another server replica
// reports it, and when it was last seen. Only a change of liveness
// signals Changed.
func (r *Registry) SetLive(clusterFQN string, connected bool, lastSeen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterFQN]
	if c == nil {
		return
	}
	c.lastSeen = lastSeen
	if c.connected != connected {
		c.connected = connected
		r.movedAll(clusterFQN, c)
		r.signal()
	}
}

// Check compares the agent's digest with the registry's state for cluster:
// ErrOutOfSync when they differ.
func (r *Registry) Check(clusterFQN string, d *agentv1.RuntimeDigest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterFQN]
	if c == nil {
		return fmt.Errorf("%w: %s has no runtime state yet", ErrOutOfSync, clusterFQN)
	}
	if c.seq != d.GetSeq() {
		return fmt.Errorf("%w: %s digest at seq %d, registry at %d", ErrOutOfSync, clusterFQN, d.GetSeq(), c.seq)
	}
	if got := Digest(c.services, c.gateway); got != d.GetSha256() {
		return fmt.Errorf("%w: %s digest differs at seq %d", ErrOutOfSync, clusterFQN, c.seq)
	}
	return nil
}

// Disconnected marks cluster's state stale from now on: it is kept (a lost
// control connection is not an outage), and its age is shown.
func (r *Registry) Disconnected(clusterFQN string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterFQN]; c != nil && c.connected {
		c.connected = false
		c.lastSeen = now
		r.movedAll(clusterFQN, c)
		r.signal()
	}
}

// Gateway returns the east-west gateway cluster reported, or nil.
func (r *Registry) Gateway(clusterFQN string) *agentv1.EastWestGateway {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterFQN]; c != nil {
		return c.gateway
	}
	return nil
}

// Remove forgets a deleted cluster.
func (r *Registry) Remove(clusterFQN string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clusters[clusterFQN]; ok {
		r.movedAll(clusterFQN, c)
		delete(r.clusters, clusterFQN)
		r.signal()
	}
}

// Key is a service's key: "<namespace>/<name>".
func Key(namespace, name string) string { return namespace + "/" + name }

// Digest is the SHA-256, in hex, of a runtime state: every service in key
// order, each as its deterministic protobuf encoding, then the gateway. The
// agent computes it over what it sent, the registry over what it applied.
func Digest(services map[string]*agentv1.ServiceState, gateway *agentv1.EastWestGateway) string {
	keys := make([]string, 0, len(services))
	for k := range services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	det := proto.MarshalOptions{Deterministic: true}
	var n [8]byte
	write := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, k := range keys {
		b, _ := det.Marshal(services[k]) // a message of known fields does not fail
		write([]byte(k))
		write(b)
	}
	if gateway != nil {
		b, _ := det.Marshal(gateway)
		write([]byte("east-west-gateway"))
		write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Service is one service of the fleet: one namespace/name, in every cluster
// that runs it.
type Service struct {
	Namespace, Name string
	// Ports are the ports of every cluster, by number; a port that
	// disagrees between clusters is listed as the first cluster has it, and
	// in Conflicts.
	Ports []Port
	// Instances are the clusters that have the service, by cluster FQN.
	Instances []Instance
	// Conflicts say, in words, where the clusters disagree.
	Conflicts []string
}

// Port is one service port.
type Port struct {
	Name     string
	Number   uint32
	Protocol string
}

// Instance is the service in one cluster.
type Instance struct {
	Cluster string
	// Ready counts the ready endpoints; Localities splits them by locality.
	Ready      uint32
	Localities []*agentv1.LocalityEndpoints
	// Stale is set while the cluster's agent is disconnected: the state is
	// its last report, from LastSeen.
	Stale    bool
	LastSeen time.Time
	// Gateway is the cluster's east-west gateway, if it has one.
	Gateway *agentv1.EastWestGateway
	// Labels and Selector are the Service's in that cluster.
	Labels, Selector map[string]string
	// Address is where clients outside the cluster reach the Service (its
	// external address); "" when it has none.
	Address string
}

// Filter narrows Services; empty fields match everything.
type Filter struct {
	Namespace, Name string
}

func (f Filter) match(s *agentv1.ServiceState) bool {
	return (f.Namespace == "" || s.GetNamespace() == f.Namespace) && (f.Name == "" || s.GetName() == f.Name)
}

// Services returns the fleet's services that f matches, by namespace and
// name, with their instances by cluster. visible, when not nil, limits the
// clusters included; it is asked once per cluster that has a match, with
// the registry locked, so it must not block (no store reads: decide what
// the caller sees before, as access.View does), or every agent's runtime
// report waits.
func (r *Registry) Services(visible func(clusterFQN string) bool, f Filter) []Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	byKey := map[string]*Service{}
	for fqn, c := range r.clusters {
		candidates := c.services
		if f.Namespace != "" && f.Name != "" { // one service: look it up
			candidates = nil
			if s := c.services[Key(f.Namespace, f.Name)]; s != nil {
				candidates = map[string]*agentv1.ServiceState{Key(f.Namespace, f.Name): s}
			}
		}
		checked := false
		for k, s := range candidates {
			if !f.match(s) {
				continue
			}
			if !checked {
				if visible != nil && !visible(fqn) {
					break
				}
				checked = true
			}
			svc := byKey[k]
			if svc == nil {
				svc = &Service{Namespace: s.GetNamespace(), Name: s.GetName()}
				byKey[k] = svc
			}
			in := Instance{Cluster: fqn, Localities: s.GetEndpoints(), Stale: !c.connected, LastSeen: c.lastSeen, Gateway: c.gateway,
				Labels: s.GetLabels(), Selector: s.GetSelector(), Address: s.GetExternalAddress()}
			for _, l := range s.GetEndpoints() {
				in.Ready += l.GetReady()
			}
			svc.Instances = append(svc.Instances, in)
		}
	}
	out := make([]Service, 0, len(byKey))
	for _, svc := range byKey {
		slices.SortFunc(svc.Instances, func(a, b Instance) int { return cmp.Compare(a.Cluster, b.Cluster) })
		svc.Ports, svc.Conflicts = r.mergePorts(Key(svc.Namespace, svc.Name), svc.Instances)
		out = append(out, *svc)
	}
	slices.SortFunc(out, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// mergePorts merges the ports of a service's instances, in cluster order,
// and describes every disagreement: the same number with another name or
// protocol, or the same name on another number. Callers hold r.mu.
func (r *Registry) mergePorts(key string, instances []Instance) ([]Port, []string) {
	type seen struct {
		p       Port
		cluster string
	}
	byNumber := map[uint32]seen{}
	byName := map[string]seen{}
	var ports []Port
	var conflicts []string
	for _, in := range instances {
		for _, sp := range r.clusters[in.Cluster].services[key].GetPorts() {
			p := Port{Name: sp.GetName(), Number: sp.GetPort(), Protocol: sp.GetProtocol()}
			if first, ok := byNumber[p.Number]; ok {
				if first.p != p {
					conflicts = append(conflicts, fmt.Sprintf("port %d is %s in %s but %s in %s",
						p.Number, describe(first.p), clusterName(first.cluster), describe(p), clusterName(in.Cluster)))
				}
				continue
			}
			if first, ok := byName[p.Name]; ok && p.Name != "" {
				conflicts = append(conflicts, fmt.Sprintf("port %q is %d in %s but %d in %s",
					p.Name, first.p.Number, clusterName(first.cluster), p.Number, clusterName(in.Cluster)))
				continue
			}
			byNumber[p.Number] = seen{p, in.Cluster}
			byName[p.Name] = seen{p, in.Cluster}
			ports = append(ports, p)
		}
	}
	slices.SortFunc(ports, func(a, b Port) int { return cmp.Compare(a.Number, b.Number) })
	return ports, conflicts
}

func describe(p Port) string {
	if p.Name == "" {
		return "unnamed/" + p.Protocol
	}
	return p.Name + "/" + p.Protocol
}

// clusterName is the last segment of a cluster FQN.
func clusterName(fqn string) string { return fqn[strings.LastIndex(fqn, "/")+1:] }
