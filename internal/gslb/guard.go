package gslb

import (
	"net/netip"
	"slices"
	"strings"
	"sync"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/gslb/rule"
)

// Fleet is what the agents report of their clusters: the central control
// plane's service registry (package registry) is one. Its methods are safe
// for concurrent use.
type Fleet interface {
	// Generation changes whenever the cluster's reported state does; 0
	// when there is none.
	Generation(clusterFQN string) uint64
	// Snapshot is the cluster's reported state as one full report, and its
	// Generation; nil when there is none.
	Snapshot(clusterFQN string) (*agentv1.Runtime, uint64)
}

// fleetGuard is the service's Guard: an entry point may be probed when
// a --gslb-allow-cidr range covers it, or when it is of no refused class
// (rule.Probes) and one of its clusters reports it as an external address
// (its east-west gateway's, or a Service's: flotilla.io/external-address
// or its LoadBalancer address). Only clusters of the record set's own
// organization count: ClusterFQN names them.
type fleetGuard struct {
	probes rule.Probes

	mu    sync.Mutex
	fleet Fleet                 // nil until UseFleet: no address is known
	known map[string]knownAddrs // by cluster FQN, as of a Generation
}

type knownAddrs struct {
	gen   uint64
	addrs []netip.Addr
}

func newFleetGuard(p rule.Probes) *fleetGuard {
	return &fleetGuard{probes: p, known: map[string]knownAddrs{}}
}

// why is the Guard.
func (g *fleetGuard) why(addr netip.Addr, clusters []string) string {
	if why := g.probes.Refused(addr); why != "" {
		return why
	}
	if g.probes.Allowed(addr) {
		return ""
	}
	names := make([]string, 0, len(clusters))
	for _, c := range clusters {
		if slices.Contains(g.addresses(c), addr.Unmap()) {
			return ""
		}
		names = append(names, c[strings.LastIndex(c, "/")+1:])
	}
	return "not an external address that cluster " + strings.Join(names, " or ") + " reports (its gateways' LoadBalancer address or flotilla.io/external-address)"
}

// addresses are the external addresses cluster reports, re-read only when
// its Generation moved.
func (g *fleetGuard) addresses(cluster string) []netip.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fleet == nil {
		return nil
	}
	gen := g.fleet.Generation(cluster)
	if k, ok := g.known[cluster]; ok && k.gen == gen {
		return k.addrs
	}
	snap, gen := g.fleet.Snapshot(cluster)
	var addrs []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil { // a LoadBalancer hostname is no address
			addrs = append(addrs, a.Unmap())
		}
	}
	add(snap.GetEastWestGateway().GetAddress())
	for _, s := range snap.GetServices() {
		add(s.GetExternalAddress())
	}
	g.known[cluster] = knownAddrs{gen: gen, addrs: addrs}
	return addrs
}

func (g *fleetGuard) useFleet(f Fleet) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fleet, g.known = f, map[string]knownAddrs{}
}
