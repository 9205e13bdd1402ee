package central

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// multicluster joins the fleet service registry with the workspace settings
// into each cluster's Multicluster slice of its bundle: the east-west
// gateways to open there and the remote instances of the services exposed
// to it. Guarded by Central.mu.
//
//	registry change ─┐
//	setting/workspace change ─┴─(50 ms)─▶ recompute every slice ─▶ changed slices change the cluster's bundle version
type multicluster struct {
	workspaces map[string]selector.Set // workspace FQN → its namespace selector
	settings   map[string]mcSetting    // WorkspaceSetting FQN → setting
	slices     map[string]*bundle.Multicluster
	raw        map[string][]byte // slices as JSON, to tell a change
	wake       chan struct{}     // capacity 1
	edges      edges
}

type mcSetting struct {
	fqn, workspace, org string
	ew                  *pb.EastWestGatewaySettings
}

func newMulticluster() *multicluster {
	return &multicluster{workspaces: map[string]selector.Set{}, settings: map[string]mcSetting{},
		slices: map[string]*bundle.Multicluster{}, raw: map[string][]byte{}, wake: make(chan struct{}, 1), edges: newEdges()}
}

func (m *multicluster) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// relevant reports whether records of kind feed the slices.
func (m *multicluster) relevant(kind string) bool {
	return kind == resource.KindWorkspace || kind == resource.KindWorkspaceSetting || kind == resource.KindGroup || edgeKind(kind)
}

// now reports whether an event changed what edge slices are made of, so
// that the slices must be recomputed before the bundles of its revision
// are sent: a drain, or an edge gateway, is then in every bundle of a
// later revision (what `cluster drain --wait` and status rely on).
func (m *multicluster) now(ev store.Event, changed bool) bool {
	return changed && len(m.edges.gateways) > 0 || ev.Record.Kind == resource.KindEdgeGateway
}

// apply takes one event of a relevant kind and reports whether the slices
// must be recomputed at once (see now). A record it cannot decode is
// dropped from the slices' inputs and reported.
func (m *multicluster) apply(ev store.Event) (bool, error) {
	r := ev.Record
	switch {
	case r.Kind == resource.KindGroup: // a group's reach moves edge targets
		if len(m.edges.gateways) > 0 {
			m.poke()
		}
		return false, nil
	case edgeKind(r.Kind):
		changed, err := m.edges.apply(ev)
		if changed {
			m.poke()
		}
		return m.now(ev, changed), err
	}
	defer m.poke()
	if ev.Type == store.EventDelete {
		delete(m.workspaces, r.FQN)
		delete(m.settings, r.FQN)
		return false, nil
	}
	switch r.Kind {
	case resource.KindWorkspace:
		sel, err := resource.StoredWorkspaceSelector(r)
		if err != nil {
			delete(m.workspaces, r.FQN)
			return false, err
		}
		m.workspaces[r.FQN] = sel
	case resource.KindWorkspaceSetting:
		spec := &pb.WorkspaceSettingSpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			delete(m.settings, r.FQN)
			return false, fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		m.settings[r.FQN] = mcSetting{fqn: r.FQN, workspace: r.Parent, org: orgOf(r.FQN), ew: spec.GetEastWestGateway()}
	}
	return false, nil
}

// load reads every workspace and setting.
func (m *multicluster) load(ctx context.Context, st store.Reader) error {
	m.workspaces, m.settings, m.edges = map[string]selector.Set{}, map[string]mcSetting{}, newEdges()
	for _, kind := range []string{resource.KindWorkspace, resource.KindWorkspaceSetting, resource.KindCluster, resource.KindIngressGateway, resource.KindEdgeGateway} {
		recs, err := st.List(ctx, store.Query{Kind: kind})
		if err != nil {
			return err
		}
		for _, r := range recs {
			_, _ = m.apply(store.Event{Type: store.EventPut, Record: r}) // an undecodable record is left out; the API refuses to write one
		}
	}
	return nil
}

// compute builds every cluster's slice from the index's clusters and the
// registry's services. A setting's east-west gateway in a cluster is the
// Service its workload selector names there (see eastWestIndex); gateway,
// the Service labelled istio=eastwestgateway that the agent reports, serves
// a setting that names no selector.
func (m *multicluster) compute(clusters map[string]*clusterEntry, services []registry.Service, gateway func(clusterFQN string) *agentv1.EastWestGateway) map[string]*bundle.Multicluster {
	out := map[string]*bundle.Multicluster{}
	settings := slices.SortedFunc(maps.Values(m.settings), func(a, b mcSetting) int { return cmp.Compare(a.fqn, b.fqn) })
	gateways := newEastWestIndex(settings, services)
	gatewayOf := func(cluster string, s mcSetting) *agentv1.EastWestGateway {
		ws := s.ew.GetWorkloadSelector()
		if ws == nil {
			return gateway(cluster)
		}
		if g := gateways.find(cluster, ws); g != nil {
			return g
		}
		// No Service's selector agrees with the setting's: the one labelled
		// istio=eastwestgateway in its namespace, if any.
		if g := gateway(cluster); g != nil && g.GetNamespace() == ws.GetNamespace() {
			return g
		}
		return nil
	}
	for _, s := range settings {
		sel := m.workspaces[s.workspace]
		if sel == nil || s.ew == nil {
			continue
		}
		// The services this setting exposes, with their instances in the
		// clusters of its organization that the workspace covers.
		type exposedService struct {
			svc       registry.Service
			instances map[string]registry.Instance // by cluster name
		}
		var exposed []exposedService
		for _, svc := range services {
			e := exposedService{svc: svc, instances: map[string]registry.Instance{}}
			for _, in := range svc.Instances {
				ce := clusters[in.Cluster]
				if ce == nil || ce.org != s.org || !sel.Match(ce.name, svc.Namespace) || !exposes(s.ew, in.Labels) {
					continue
				}
				e.instances[ce.name] = in
			}
			if len(e.instances) > 0 {
				exposed = append(exposed, e)
			}
		}
		for fqn, ce := range clusters {
			if ce.org != s.org || !sel.MatchCluster(ce.name) {
				continue
			}
			mc := out[fqn]
			if mc == nil {
				mc = &bundle.Multicluster{}
				out[fqn] = mc
			}
			if ws := s.ew.GetWorkloadSelector(); ws != nil {
				e := bundle.EastWest{Owner: s.fqn, Namespace: ws.GetNamespace(), Labels: ws.GetLabels()}
				if g := gatewayOf(fqn, s); g != nil {
					e.Service, e.Address, e.Port = g.GetNamespace()+"/"+g.GetName(), g.GetAddress(), g.GetPort()
					if ranges := m.edges.clusters[fqn].addresses; e.Address != "" && !ranges.Allows(e.Address) {
						e.Address, e.Refused = "", g.GetAddress()+" (outside "+ranges.String()+")"
					}
				}
				mc.EastWest = append(mc.EastWest, e)
			}
			for _, e := range exposed {
				rs := bundle.RemoteService{Owner: s.fqn, Namespace: e.svc.Namespace, Name: e.svc.Name, FailoverPriority: s.ew.GetFailoverPriority(),
					Conflicts: e.svc.Conflicts}
				for _, p := range e.svc.Ports {
					rs.Ports = append(rs.Ports, bundle.ServicePort{Name: p.Name, Number: p.Number, Protocol: p.Protocol})
				}
				for _, in := range e.svc.Instances {
					if in.Cluster == fqn {
						rs.Local, rs.Selector = true, in.Selector
					}
				}
				names := slices.Sorted(maps.Keys(e.instances))
				for _, name := range names {
					if name == ce.name {
						continue
					}
					in := e.instances[name]
					r := bundle.RemoteInstance{Cluster: name, Ready: in.Ready, Stale: in.Stale}
					if g := gatewayOf(in.Cluster, s); g != nil {
						r.Address, r.Port = g.GetAddress(), g.GetPort()
						// An address outside the ranges its cluster's owner
						// declared is the agent's word only: not used.
						if ranges := m.edges.clusters[in.Cluster].addresses; r.Address != "" && !ranges.Allows(r.Address) {
							r.Address, r.Refused = "", g.GetAddress()+" (outside "+ranges.String()+")"
						}
					}
					r.Region, r.Zone = mainLocality(in)
					rs.Remotes = append(rs.Remotes, r)
				}
				if len(rs.Remotes) > 0 {
					mc.Services = append(mc.Services, rs)
				}
			}
		}
	}
	return out
}

// eastWestIndex holds, per cluster, the Services that may be east-west
// gateways: those with a selector in a namespace that some setting's
// workload selector names.
type eastWestIndex map[string][]ewCandidate // cluster FQN → by namespace and name

type ewCandidate struct {
	namespace, name string
	selector        map[string]string
	address         string
	port            uint32
}

func newEastWestIndex(settings []mcSetting, services []registry.Service) eastWestIndex {
	namespaces := map[string]bool{}
	for _, s := range settings {
		if ws := s.ew.GetWorkloadSelector(); ws != nil {
			namespaces[ws.GetNamespace()] = true
		}
	}
	x := eastWestIndex{}
	if len(namespaces) == 0 {
		return x
	}
	for _, svc := range services {
		if !namespaces[svc.Namespace] {
			continue
		}
		port := uint32(defaultEastWestPort)
		for _, p := range svc.Ports {
			if p.Name == "tls" {
				port = p.Number
			}
		}
		for _, in := range svc.Instances {
			if len(in.Selector) == 0 {
				continue
			}
			x[in.Cluster] = append(x[in.Cluster], ewCandidate{namespace: svc.Namespace, name: svc.Name, selector: in.Selector, address: in.Address, port: port})
		}
	}
	for _, cs := range x {
		slices.SortFunc(cs, func(a, b ewCandidate) int {
			return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
		})
	}
	return x
}

// defaultEastWestPort is Istio's AUTO_PASSTHROUGH port, for a gateway
// Service with no port named "tls".
const defaultEastWestPort = 15443

// find returns the east-west gateway that ws names in the cluster: the
// first Service (by name) in ws's namespace whose selector and ws's labels
// pick the same pods, one containing the other (Istio's own gateway
// Service selects {istio: eastwestgateway, app: ..., network: ...}, a
// setting names {istio: eastwestgateway}; a gateway of one's own may be
// {app: my-ewgw} on both sides). Nil when none does.
func (x eastWestIndex) find(cluster string, ws *pb.WorkloadSelector) *agentv1.EastWestGateway {
	labels := ws.GetLabels()
	if len(labels) == 0 {
		return nil
	}
	for _, c := range x[cluster] {
		if c.namespace == ws.GetNamespace() && (contains(c.selector, labels) || contains(labels, c.selector)) {
			return &agentv1.EastWestGateway{Namespace: c.namespace, Name: c.name, Address: c.address, Port: c.port}
		}
	}
	return nil
}

// contains reports whether every label of sub is in m with its value.
func contains(m, sub map[string]string) bool {
	for k, v := range sub {
		if w, ok := m[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// exposedBy returns the settings that expose the service (in any of its
// instances' clusters), sorted. Callers hold c.mu.
func (c *Central) exposedBy(svc registry.Service) []string {
	var out []string
	for _, s := range c.mc.settings {
		sel := c.mc.workspaces[s.workspace]
		if sel == nil || s.ew == nil {
			continue
		}
		for _, in := range svc.Instances {
			ce := c.idx.clusters[in.Cluster]
			if ce != nil && ce.org == s.org && sel.Match(ce.name, svc.Namespace) && exposes(s.ew, in.Labels) {
				out = append(out, s.fqn)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// exposes reports whether a service with these labels is exposed: an empty
// list exposes every service, else one of its label sets must match.
func exposes(ew *pb.EastWestGatewaySettings, labels map[string]string) bool {
	if len(ew.GetExposedServices()) == 0 {
		return true
	}
	for _, e := range ew.GetExposedServices() {
		if selects(e.GetServiceLabels(), labels) {
			return true
		}
	}
	return false
}

// mainLocality is the locality holding most of the instance's ready
// endpoints (the first in order on a tie).
func mainLocality(in registry.Instance) (region, zone string) {
	best := uint32(0)
	for _, l := range in.Localities {
		if l.GetReady() > best || region == "" && zone == "" {
			best, region, zone = l.GetReady(), l.GetRegion(), l.GetZone()
		}
	}
	return region, zone
}

// recomputeMulticluster rebuilds the slices and moves the version of every
// cluster whose slice changed, and returns those clusters. Callers hold
// c.mu, and wake the clusters' streams (wake) once they want them to send.
func (c *Central) recomputeMulticluster() map[string]bool {
	next := map[string]*bundle.Multicluster{}
	if len(c.mc.settings) > 0 || len(c.mc.edges.gateways) > 0 { // nothing exposed, no edge: skip merging the registry
		services := c.services.Services(nil, registry.Filter{})
		next = c.mc.compute(c.idx.clusters, services, c.services.Gateway)
		c.mc.edges.compute(next, c.idx.clusters, c.idx.reach, services)
	}
	changed := map[string]bool{}
	for fqn := range c.idx.clusters {
		var raw []byte
		if mc := next[fqn]; mc != nil {
			raw, _ = json.Marshal(mc) // plain data
		}
		if string(raw) != string(c.mc.raw[fqn]) {
			changed[fqn] = true
			if raw == nil {
				delete(c.mc.raw, fqn)
				delete(c.mc.slices, fqn)
			} else {
				c.mc.raw[fqn], c.mc.slices[fqn] = raw, next[fqn]
			}
		}
	}
	for fqn := range c.mc.slices {
		if c.idx.clusters[fqn] == nil {
			delete(c.mc.slices, fqn)
			delete(c.mc.raw, fqn)
		}
	}
	for fqn := range changed {
		if cl := c.clusters[fqn]; cl != nil {
			if v := c.version(fqn); v != cl.version {
				cl.version = v
				cl.versionMoved()
			}
		}
	}
	return changed
}

// wake wakes the streams of the given clusters. Callers hold c.mu.
func (c *Central) wake(fqns map[string]bool) {
	for fqn := range fqns {
		if cl := c.clusters[fqn]; cl != nil && cl.conn != nil {
			cl.conn.poke()
		}
	}
}

// multiclusterDebounce gathers a burst of registry changes into one
// recompute.
const multiclusterDebounce = 50 * time.Millisecond

// runMulticluster recomputes the slices after every registry or setting
// change, until ctx ends.
func (c *Central) runMulticluster(ctx context.Context) {
	for {
		select {
		case <-c.services.Changed():
		case <-c.mc.wake:
		case <-ctx.Done():
			return
		}
		select {
		case <-time.After(multiclusterDebounce):
		case <-ctx.Done():
			return
		}
		c.mu.Lock()
		changed := c.recomputeMulticluster()
		c.mu.Unlock()
		// Store the runtime state before the streams send what was made of
		// it: a server that restarts then never knows less than its clusters
		// were sent (and other replicas' clusters need it now, not at the
		// next flush tick).
		if err := c.flushRuntime(ctx); err != nil && ctx.Err() == nil {
			c.log.Error("write runtime snapshots", "err", err)
		}
		c.mu.Lock()
		c.wake(changed)
		c.mu.Unlock()
	}
}

// version is the cluster's bundle version: its intent's, with its
// multicluster slice. Callers hold c.mu.
func (c *Central) version(fqn string) string {
	v := c.idx.version(fqn)
	if v == "" {
		return ""
	}
	return bundle.WithMulticlusterJSON(v, c.mc.raw[fqn]) // the slice as kept encoded: not marshalled again
}

// content is the cluster's bundle as JSON, with its multicluster slice.
// Callers hold c.mu.
func (c *Central) content(fqn string) ([]byte, error) {
	out, err := c.idx.content(fqn)
	if err != nil || c.mc.raw[fqn] == nil {
		return out, err
	}
	// The intent's JSON object ends in "}": add the slice as its last field.
	out = append(out[:len(out)-1:len(out)-1], `,"multicluster":`...)
	out = append(out, c.mc.raw[fqn]...)
	return append(out, '}'), nil
}

// sentBundle is what a stream delivered to its agent: the intent by group
// (see index.sent), and the multicluster slice's JSON.
type sentBundle struct {
	groups map[string]sentGroup
	mc     []byte
}

// delivered is what a stream that sends the cluster's bundle now will have
// delivered. Callers hold c.mu.
func (c *Central) delivered(fqn string) *sentBundle {
	return &sentBundle{groups: c.idx.sent(fqn), mc: c.mc.raw[fqn]}
}

// delta is the cluster's bundle as a delta against what a stream
// delivered. Callers hold c.mu.
func (c *Central) delta(fqn string, from *sentBundle) bundle.Delta {
	d := c.idx.delta(fqn, from.groups)
	if raw := c.mc.raw[fqn]; string(raw) != string(from.mc) {
		d.SetMulticluster, d.Multicluster = true, c.mc.slices[fqn]
	}
	return d
}

// bundleOf is the cluster's bundle, with its multicluster slice. Callers
// hold c.mu.
func (c *Central) bundleOf(fqn string) *bundle.Bundle {
	b := c.idx.bundle(fqn)
	if b != nil {
		b.Multicluster = c.mc.slices[fqn]
	}
	return b
}
