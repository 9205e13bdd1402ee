package discovery

import (
	"cmp"
	"maps"
	"slices"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
)

// part is one service as one setting exposes it, shared by every cluster
// the setting exposes services to (see the package doc).
type part struct {
	setting    string
	header     bundle.RemoteService // without remotes, Local or Selector
	headerHash bundle.Hash
	remotes    map[string]bundle.RemoteInstance // by cluster FQN: the exposed instances
	order      []string                         // remotes' cluster FQNs, sorted (so by name: one organization)
	hashes     map[string]bundle.Hash           // by cluster FQN: bundle.RemoteHash of each remote
	sum        bundle.Sum                       // Σ hashes
	hosts      map[string]map[string]string     // cluster FQN → the Service's selector there, wherever it runs
	hostHashes map[string]bundle.Hash           // by host: the header's hash as that host sees it
}

// buildPart is the service as setting s exposes it; nil when it exposes no
// instance of it. old, the part it replaces, lends the hashes of what did
// not change. Callers hold d.mu.
func (d *Discovery) buildPart(s setting, svc registry.Service, old *part) *part {
	sel := d.in.workspaces[s.workspace]
	p := &part{setting: s.fqn, remotes: map[string]bundle.RemoteInstance{}, hashes: map[string]bundle.Hash{},
		hosts: map[string]map[string]string{}, hostHashes: map[string]bundle.Hash{},
		header: bundle.RemoteService{Owner: s.fqn, Namespace: svc.Namespace, Name: svc.Name, FailoverPriority: s.ew.GetFailoverPriority(), Conflicts: svc.Conflicts}}
	for _, pt := range svc.Ports {
		p.header.Ports = append(p.header.Ports, bundle.ServicePort{Name: pt.Name, Number: pt.Number, Protocol: pt.Protocol})
	}
	for _, in := range svc.Instances {
		p.hosts[in.Cluster] = in.Selector
		ce, ok := d.in.clusters[in.Cluster]
		if !ok || ce.org != s.org || !sel.Match(ce.name, svc.Namespace) || !exposes(s.ew, in.Labels) {
			continue
		}
		r := bundle.RemoteInstance{Cluster: ce.name, Ready: in.Ready, Stale: in.Stale}
		if g := d.gatewayOf(in.Cluster, s); g != nil {
			r.Address, r.Port = g.GetAddress(), g.GetPort()
			// An address outside the ranges its cluster's owner declared
			// is the agent's word only: not used.
			if ranges := d.in.edges.clusters[in.Cluster].addresses; r.Address != "" && !ranges.Allows(r.Address) {
				r.Address, r.Refused = "", g.GetAddress()+" (outside "+ranges.String()+")"
			}
		}
		r.Region, r.Zone = mainLocality(in)
		p.remotes[in.Cluster] = r
	}
	if len(p.remotes) == 0 {
		return nil
	}
	key := p.header.Key()
	p.order = slices.Sorted(maps.Keys(p.remotes))
	for _, c := range p.order {
		r := p.remotes[c]
		if old != nil && old.remotes[c] == r {
			p.hashes[c] = old.hashes[c]
		} else {
			p.hashes[c] = bundle.RemoteHash(key, r)
		}
		p.sum = p.sum.Add(p.hashes[c])
	}
	p.headerHash = p.header.HeaderHash()
	for c, selector := range p.hosts {
		if old != nil && old.headerHash == p.headerHash && maps.Equal(old.hosts[c], selector) {
			if h, ok := old.hostHashes[c]; ok {
				p.hostHashes[c] = h
				continue
			}
		}
		h := p.header
		h.Local, h.Selector = true, selector
		p.hostHashes[c] = h.HeaderHash()
	}
	return p
}

// contribution is the part's share of a cluster's digest: its view's
// header hash and remotes' hashes (bundle.ServiceSum). fqn "" is any
// cluster that neither runs the service nor is one of its instances.
func (p *part) contribution(fqn string) bundle.Sum {
	n := len(p.remotes)
	_, own := p.remotes[fqn]
	if own {
		n--
	}
	if n == 0 {
		return bundle.Sum{}
	}
	h := p.headerHash
	if hh, ok := p.hostHashes[fqn]; ok {
		h = hh
	}
	s := p.sum.Add(h)
	if own {
		s = s.Sub(p.hashes[fqn])
	}
	return s
}

// special are the clusters whose view differs from the generic one: the
// hosts and the instances.
func (p *part) special() map[string]bool {
	out := make(map[string]bool, len(p.hosts)+len(p.remotes))
	for c := range p.hosts {
		out[c] = true
	}
	for c := range p.remotes {
		out[c] = true
	}
	return out
}

// view is the service in the cluster's slice: nil when the part has no
// instance there but the cluster's own (or is nil).
func (p *part) view(fqn string) *bundle.RemoteService {
	if p == nil {
		return nil
	}
	rs := p.headerFor(fqn)
	for _, c := range p.order {
		if c != fqn {
			rs.Remotes = append(rs.Remotes, p.remotes[c])
		}
	}
	if len(rs.Remotes) == 0 {
		return nil
	}
	return &rs
}

// visible reports whether the cluster's view of the part has an instance:
// one besides its own.
func (p *part) visible(fqn string) bool {
	if p == nil {
		return false
	}
	n := len(p.remotes)
	if _, own := p.remotes[fqn]; own {
		n--
	}
	return n > 0
}

// headerFor is the service's header as the cluster sees it, without remotes.
func (p *part) headerFor(fqn string) bundle.RemoteService {
	rs := p.header
	if sel, ok := p.hosts[fqn]; ok {
		rs.Local, rs.Selector = true, sel
	}
	return rs
}

// diff says what moved from p to next: nil for nothing, else the clusters
// (FQNs) whose instance did, empty when only the header or the hosts did.
func (p *part) diff(next *part) []string {
	switch {
	case p == nil && next == nil:
		return nil
	case p == nil:
		return slices.Clone(next.order)
	case next == nil:
		return slices.Clone(p.order)
	}
	var out []string
	for _, c := range next.order {
		if o, ok := p.remotes[c]; !ok || o != next.remotes[c] {
			out = append(out, c)
		}
	}
	for _, c := range p.order {
		if _, ok := next.remotes[c]; !ok {
			out = append(out, c)
		}
	}
	if out == nil && p.headerHash == next.headerHash && maps.EqualFunc(p.hosts, next.hosts, func(a, b map[string]string) bool { return maps.Equal(a, b) }) {
		return nil
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// eastWestEntry is the east-west gateway setting s opens in the cluster.
// Callers hold d.mu.
func (d *Discovery) eastWestEntry(fqn string, s setting) bundle.EastWest {
	ws := s.ew.GetWorkloadSelector()
	e := bundle.EastWest{Owner: s.fqn, Namespace: ws.GetNamespace(), Labels: ws.GetLabels()}
	if g := d.gatewayOf(fqn, s); g != nil {
		e.Service, e.Address, e.Port = g.GetNamespace()+"/"+g.GetName(), g.GetAddress(), g.GetPort()
		if ranges := d.in.edges.clusters[fqn].addresses; e.Address != "" && !ranges.Allows(e.Address) {
			e.Address, e.Refused = "", g.GetAddress()+" (outside "+ranges.String()+")"
		}
	}
	return e
}

// gatewayOf is setting s's east-west gateway in the cluster: the Service
// its workload selector names there (see eastWestIndex), else the one
// labelled istio=eastwestgateway that the agent reports, in that
// namespace; for a setting that names no selector, the latter. Callers
// hold d.mu.
func (d *Discovery) gatewayOf(cluster string, s setting) *agentv1.EastWestGateway {
	ws := s.ew.GetWorkloadSelector()
	if ws == nil {
		return d.reg.Gateway(cluster)
	}
	if g := d.ewIndex.find(cluster, ws); g != nil {
		return g
	}
	// No Service's selector agrees with the setting's: the one labelled
	// istio=eastwestgateway in its namespace, if any.
	if g := d.reg.Gateway(cluster); g != nil && g.GetNamespace() == ws.GetNamespace() {
		return g
	}
	return nil
}

// eastWestIndex holds, per cluster, the Services that may be east-west
// gateways: those with a selector in a namespace that some setting's
// workload selector names.
type eastWestIndex struct {
	namespaces map[string]bool
	byCluster  map[string][]ewCandidate // cluster FQN → by namespace and name
}

type ewCandidate struct {
	namespace, name string
	selector        map[string]string
	address         string
	port            uint32
}

func newEastWestIndex(settings []setting, services []registry.Service) eastWestIndex {
	x := eastWestIndex{namespaces: map[string]bool{}, byCluster: map[string][]ewCandidate{}}
	for _, s := range settings {
		if ws := s.ew.GetWorkloadSelector(); ws != nil {
			x.namespaces[ws.GetNamespace()] = true
		}
	}
	if len(x.namespaces) == 0 {
		return x
	}
	for _, svc := range services {
		if !x.namespaces[svc.Namespace] {
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
			x.byCluster[in.Cluster] = append(x.byCluster[in.Cluster], ewCandidate{namespace: svc.Namespace, name: svc.Name, selector: in.Selector, address: in.Address, port: port})
		}
	}
	for _, cs := range x.byCluster {
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
	for _, c := range x.byCluster[cluster] {
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
