package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/addrrange"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// edges holds what the edge slices are computed from: the edge gateways,
// the ingress gateways that publish hostnames, and the clusters' regions
// and drain state. Part of the inputs, guarded by Discovery.mu.
//
//	EdgeGateway server (hostname) ─▶ IngressGateways publishing it ─▶ the clusters they reach
//	  ─▶ each cluster's ingress gateway Service in the registry (address, ready)
//	  ─▶ targets (drained clusters left out) in the bundle of every edge cluster
type edges struct {
	gateways  map[string]edgeGateway    // EdgeGateway FQN → gateway
	ingresses map[string]ingressGateway // IngressGateway FQN → gateway
	clusters  map[string]clusterInfo    // Cluster FQN → info
}

type edgeGateway struct {
	fqn, group, org string
	servers         []*pb.ExternalServer
}

type ingressGateway struct {
	fqn, group, org string
	namespace       string
	labels          map[string]string
	servers         []*pb.HTTPServer
}

type clusterInfo struct {
	region, zone string
	drained      bool
	// addresses are where the cluster's reported addresses may lie
	// (spec.addressRanges).
	addresses addrrange.Set
}

func (a clusterInfo) equal(b clusterInfo) bool {
	return a.region == b.region && a.zone == b.zone && a.drained == b.drained && a.addresses.Equal(b.addresses)
}

func newEdges() edges {
	return edges{gateways: map[string]edgeGateway{}, ingresses: map[string]ingressGateway{}, clusters: map[string]clusterInfo{}}
}

// edgeKind reports whether records of kind feed the edge slices.
func edgeKind(kind string) bool {
	return kind == resource.KindEdgeGateway || kind == resource.KindIngressGateway || kind == resource.KindCluster
}

// apply takes one event of an edge kind and reports whether it changed
// an input of the slices.
func (e *edges) apply(ev store.Event) (bool, error) {
	r := ev.Record
	if ev.Type == store.EventDelete {
		_, g := e.gateways[r.FQN]
		_, i := e.ingresses[r.FQN]
		_, c := e.clusters[r.FQN]
		delete(e.gateways, r.FQN)
		delete(e.ingresses, r.FQN)
		delete(e.clusters, r.FQN)
		return g || i || c, nil
	}
	switch r.Kind {
	case resource.KindCluster:
		spec := &pb.ClusterSpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			return false, fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		info := clusterInfo{region: spec.GetRegion(), zone: spec.GetZone(), drained: spec.GetDrained()}
		var err error
		if info.addresses, err = addrrange.Parse(spec.GetAddressRanges()); err != nil {
			// Validated on write; a stored one that does not parse allows
			// nothing rather than everything.
			info.addresses = addrrange.None()
			err = fmt.Errorf("stored %s: spec.addressRanges%w", r.FQN, err)
		}
		old, had := e.clusters[r.FQN]
		e.clusters[r.FQN] = info
		return !had || !old.equal(info), err
	case resource.KindEdgeGateway:
		spec := &pb.EdgeGatewaySpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			delete(e.gateways, r.FQN)
			return true, fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		e.gateways[r.FQN] = edgeGateway{fqn: r.FQN, group: r.Parent, org: resource.OrganizationOf(r.FQN), servers: spec.GetExternalServers()}
		return true, nil
	case resource.KindIngressGateway:
		spec := &pb.IngressGatewaySpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			delete(e.ingresses, r.FQN)
			return true, fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		ws := spec.GetWorkloadSelector()
		e.ingresses[r.FQN] = ingressGateway{fqn: r.FQN, group: r.Parent, org: resource.OrganizationOf(r.FQN),
			namespace: ws.GetNamespace(), labels: ws.GetLabels(), servers: spec.GetHttp()}
		return true, nil
	}
	return false, nil
}

// publisher is an ingress gateway server that publishes a hostname in one
// cluster.
type publisher struct {
	ig     ingressGateway
	server *pb.HTTPServer
}

// compute returns the edge servers of every edge cluster, by cluster FQN.
// groups gives the clusters a group reaches.
func (e *edges) compute(clusters map[string]clusterRef, groups func(fqn string) map[string]bool, services []registry.Service) map[string][]bundle.EdgeServer {
	out := map[string][]bundle.EdgeServer{}
	if len(e.gateways) == 0 {
		return out
	}
	// Who publishes each hostname, per tenant and cluster: the first
	// IngressGateway by FQN whose group reaches the cluster. An edge
	// gateway fronts only its own tenant's: another tenant's hostname is
	// not its to take, nor its gateways' whereabouts its to learn.
	type tenantHost struct{ tenant, hostname string }
	published := map[tenantHost]map[string]publisher{} // cluster FQN → publisher
	for _, fqn := range slices.Sorted(maps.Keys(e.ingresses)) {
		ig := e.ingresses[fqn]
		for cl := range groups(ig.group) {
			for _, s := range ig.servers {
				key := tenantHost{resource.TenantOf(ig.fqn), s.GetHostname()}
				byCluster := published[key]
				if byCluster == nil {
					byCluster = map[string]publisher{}
					published[key] = byCluster
				}
				if _, taken := byCluster[cl]; !taken {
					byCluster[cl] = publisher{ig: ig, server: s}
				}
			}
		}
	}
	// The Services in each cluster, to find the ingress gateways'.
	type instance struct {
		svc registry.Service
		in  registry.Instance
	}
	inCluster := map[string][]instance{}
	for _, svc := range services {
		for _, in := range svc.Instances {
			inCluster[in.Cluster] = append(inCluster[in.Cluster], instance{svc, in})
		}
	}
	ingressService := func(cluster string, ig ingressGateway) (instance, bool) {
		for _, x := range inCluster[cluster] {
			if x.svc.Namespace == ig.namespace && selects(x.in.Selector, ig.labels) {
				return x, true
			}
		}
		return instance{}, false
	}

	for _, fqn := range slices.Sorted(maps.Keys(e.gateways)) {
		eg := e.gateways[fqn]
		for _, edgeCluster := range slices.Sorted(maps.Keys(groups(eg.group))) {
			if ec, ok := clusters[edgeCluster]; !ok || ec.org != eg.org {
				continue
			}
			if _, ok := out[edgeCluster]; !ok {
				out[edgeCluster] = nil // an edge cluster has a slice, even with no server
			}

			for _, s := range eg.servers {
				publishers := published[tenantHost{resource.TenantOf(eg.fqn), s.GetHostname()}]
				es := bundle.EdgeServer{Owner: eg.fqn, Server: s.GetName(), Weighted: len(s.GetClusters()) > 0}
				type candidate struct {
					cluster string
					weight  uint32
				}
				var cands []candidate
				if es.Weighted {
					for _, cw := range s.GetClusters() {
						cands = append(cands, candidate{eg.org + "/clusters/" + cw.GetName(), cw.GetWeight()})
					}
				} else {
					for _, cl := range slices.Sorted(maps.Keys(publishers)) {
						if ce, ok := clusters[cl]; ok && ce.org == eg.org {
							cands = append(cands, candidate{cluster: cl})
						}
					}
				}
				for _, cand := range cands {
					name := cand.cluster[strings.LastIndex(cand.cluster, "/")+1:]
					info := e.clusters[cand.cluster]
					if info.drained {
						continue
					}
					p, ok := publishers[cand.cluster]
					if !ok {
						es.Problems = append(es.Problems, fmt.Sprintf("cluster %s publishes %s on no IngressGateway of this tenant: publish it there, or take the cluster off the list", name, s.GetHostname()))
						continue
					}
					x, ok := ingressService(cand.cluster, p.ig)
					switch {
					case !ok:
						es.Problems = append(es.Problems, fmt.Sprintf("cluster %s has no Service selecting the ingress gateway pods %v of %s in namespace %s", name, p.ig.labels, p.ig.fqn, p.ig.namespace))
						continue
					case x.in.Address == "":
						es.Problems = append(es.Problems, fmt.Sprintf("cluster %s's ingress gateway Service %s/%s has no address: give it a LoadBalancer address, or annotate it with flotilla.io/external-address", name, x.svc.Namespace, x.svc.Name))
						continue
					case !info.addresses.Allows(x.in.Address):
						es.Problems = append(es.Problems, fmt.Sprintf("cluster %s reports its ingress gateway Service %s/%s at %s, outside the cluster's spec.addressRanges (%s): it gets no traffic; fix the Service's address, or the ranges if they are wrong", name, x.svc.Namespace, x.svc.Name, x.in.Address, info.addresses))
						continue
					case x.in.Ready == 0:
						continue // no ready gateway pod there: no traffic goes to it
					}
					t := bundle.EdgeTarget{Cluster: name, Address: x.in.Address, Port: p.server.GetPort(), Weight: cand.weight,
						TLS:    p.server.GetTls().GetMode() != "" && p.server.GetTls().GetMode() != "DISABLED",
						Region: info.region, Zone: info.zone, Local: cand.cluster == edgeCluster}
					if t.Region == "" {
						t.Region, t.Zone = mainLocality(x.in)
					}
					es.Targets = append(es.Targets, t)
				}
				// No target in the edge's own cluster: the next local hops
				// are those in its region.
				if region := e.clusters[edgeCluster].region; region != "" && !slices.ContainsFunc(es.Targets, func(t bundle.EdgeTarget) bool { return t.Local }) {
					for i := range es.Targets {
						es.Targets[i].Local = es.Targets[i].Region == region
					}
				}
				slices.SortFunc(es.Targets, func(a, b bundle.EdgeTarget) int { return cmp.Compare(a.Cluster, b.Cluster) })
				out[edgeCluster] = append(out[edgeCluster], es)
			}
		}
	}
	return out
}

// ingressNamespaces are the namespaces where a Service may be an ingress
// gateway an edge targets: a change elsewhere leaves the edges alone.
func (e *edges) ingressNamespaces() map[string]bool {
	out := map[string]bool{}
	if len(e.gateways) == 0 {
		return out
	}
	for _, ig := range e.ingresses {
		out[ig.namespace] = true
	}
	return out
}

// groups are the groups the edge gateways and ingress gateways name.
func (e *edges) groups() []string {
	set := map[string]bool{}
	for _, g := range e.gateways {
		set[g.group] = true
	}
	for _, ig := range e.ingresses {
		set[ig.group] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// selects reports whether a Service with selector picks pods with labels:
// a non-empty selector whose every pair the labels hold.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
