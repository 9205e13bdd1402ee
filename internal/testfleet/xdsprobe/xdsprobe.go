// Package xdsprobe asks a real istiod what it would tell a proxy: it connects
// over ADS as a sidecar or a gateway of a given namespace, labels, cluster,
// network and locality, and returns the clusters, endpoints, listeners and
// routes that proxy would receive. There is no Envoy on the test machines;
// this is how tests check what the data plane would be told.
//
//	Fetch(istiod xDS address, Proxy) ──delta ADS (istio.io/istio/pkg/adsc)──▶ Snapshot
//	    watches every Cluster and Listener, then the Endpoints and Routes they name
//
// It is for tests and tools: each Fetch is one short connection.
package xdsprobe

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/adsc"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/network"
)

// Proxy types, as Istio names them.
const (
	Sidecar = "sidecar"
	Gateway = "router"
)

// Proxy is who the probe connects as.
type Proxy struct {
	// Type is Sidecar or Gateway; empty means Sidecar.
	Type string
	// Namespace and Labels are the proxy's pod's; Workload names it.
	Namespace string
	Labels    map[string]string
	Workload  string
	// IP is the pod's address; empty means 10.244.255.254.
	IP string
	// Cluster is the proxy's cluster ID, Network its Istio network.
	Cluster, Network string
	// Region and Zone are its locality.
	Region, Zone string
}

// Snapshot is the configuration one proxy received, keyed by resource name.
type Snapshot struct {
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
}

// Fetch connects to the istiod xDS server at addr (plain-text gRPC) as p and
// returns what p receives once every Cluster and Listener has arrived, and
// every Endpoints and Route resource they name.
func Fetch(ctx context.Context, addr string, p Proxy) (*Snapshot, error) {
	if p.Type == "" {
		p.Type = Sidecar
	}
	if p.IP == "" {
		p.IP = "10.244.255.254"
	}
	if p.Workload == "" {
		p.Workload = "probe"
	}
	meta := &model.NodeMetadata{
		Namespace:    p.Namespace,
		Labels:       p.Labels,
		ClusterID:    cluster.ID(p.Cluster),
		Network:      network.ID(p.Network),
		WorkloadName: p.Workload,
	}
	s := &state{
		snap: Snapshot{
			Clusters:  map[string]*clusterv3.Cluster{},
			Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
			Listeners: map[string]*listenerv3.Listener{},
			Routes:    map[string]*routev3.RouteConfiguration{},
		},
		wantEDS: map[string]bool{},
		wantRDS: map[string]bool{},
	}
	c := adsc.NewDelta(addr, &adsc.DeltaADSConfig{Config: adsc.Config{
		ClientName: "xdsprobe",
		Namespace:  p.Namespace,
		Workload:   p.Workload,
		IP:         p.IP,
		NodeType:   model.NodeType(p.Type),
		Meta:       meta.ToStruct(),
		Locality:   &corev3.Locality{Region: p.Region, Zone: p.Zone},
		GrpcOpts:   []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
	}},
		adsc.Watch[*clusterv3.Cluster]("*"),
		adsc.Watch[*listenerv3.Listener]("*"),
		adsc.Register(s.cluster),
		adsc.Register(s.listener),
		adsc.Register(s.endpoints),
		adsc.Register(s.route),
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	defer func() {
		cancel()
		c.Close()
		<-done
	}()
	select {
	case <-c.Synced():
	case <-ctx.Done():
		return nil, fmt.Errorf("xds %s: no Clusters and Listeners for %s/%s: %w", addr, p.Namespace, p.Workload, ctx.Err())
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if snap, ok := s.complete(); ok {
			return snap, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("xds %s: missing %s: %w", addr, s.missing(), ctx.Err())
		}
	}
}

// state collects the resources as they arrive.
type state struct {
	mu      sync.Mutex
	snap    Snapshot
	wantEDS map[string]bool // EDS service names the clusters named
	wantRDS map[string]bool // route names the listeners named
}

func (s *state) cluster(ctx adsc.HandlerContext, name, _ string, c *clusterv3.Cluster, ev adsc.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !put(s.snap.Clusters, name, c, ev) {
		return
	}
	if c.GetType() == clusterv3.Cluster_EDS {
		eds := c.GetEdsClusterConfig().GetServiceName()
		if eds == "" {
			eds = name
		}
		s.wantEDS[eds] = true
		ctx.RegisterDependency(v3.EndpointType, eds)
	}
}

func (s *state) listener(ctx adsc.HandlerContext, name, _ string, l *listenerv3.Listener, ev adsc.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !put(s.snap.Listeners, name, l, ev) {
		return
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(hcm) != nil {
				continue
			}
			if r := hcm.GetRds().GetRouteConfigName(); r != "" {
				s.wantRDS[r] = true
				ctx.RegisterDependency(v3.RouteType, r)
			}
		}
	}
}

func (s *state) endpoints(_ adsc.HandlerContext, name, _ string, e *endpointv3.ClusterLoadAssignment, ev adsc.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	put(s.snap.Endpoints, name, e, ev)
}

func (s *state) route(_ adsc.HandlerContext, name, _ string, r *routev3.RouteConfiguration, ev adsc.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	put(s.snap.Routes, name, r, ev)
}

// put records a resource event in m and reports whether the resource is
// present (false for a delete).
func put[T any](m map[string]T, name string, v T, ev adsc.Event) bool {
	if ev == adsc.EventDelete {
		delete(m, name)
		return false
	}
	m[name] = v
	return true
}

// complete returns a copy of the snapshot once every named dependency has
// arrived.
func (s *state) complete() (*Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.missingLocked()) > 0 {
		return nil, false
	}
	return &Snapshot{
		Clusters:  maps.Clone(s.snap.Clusters),
		Endpoints: maps.Clone(s.snap.Endpoints),
		Listeners: maps.Clone(s.snap.Listeners),
		Routes:    maps.Clone(s.snap.Routes),
	}, true
}

func (s *state) missing() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.missingLocked())
}

// missingLocked lists the named dependencies not yet arrived, sorted.
// Callers hold s.mu.
func (s *state) missingLocked() []string {
	var out []string
	for n := range s.wantEDS {
		if s.snap.Endpoints[n] == nil {
			out = append(out, "endpoints "+n)
		}
	}
	for n := range s.wantRDS {
		if s.snap.Routes[n] == nil {
			out = append(out, "route "+n)
		}
	}
	sort.Strings(out)
	return out
}

// Upstreams returns the upstream clusters that the routes of virtual hosts
// serving domain send traffic to, sorted and without repeats.
func (s *Snapshot) Upstreams(domain string) []string {
	var out []string
	for _, rc := range s.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if !slices.Contains(vh.GetDomains(), domain) {
				continue
			}
			for _, r := range vh.GetRoutes() {
				a := r.GetRoute()
				if c := a.GetCluster(); c != "" {
					out = append(out, c)
				}
				for _, wc := range a.GetWeightedClusters().GetClusters() {
					out = append(out, wc.GetName())
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// NamedRoutes returns the routes of the virtual hosts serving domain by
// route name (Istio names them after the VirtualService's HTTP routes),
// each with the upstream clusters it sends to, sorted; a route that
// answers by itself (a direct response) has none.
func (s *Snapshot) NamedRoutes(domain string) map[string][]string {
	out := map[string][]string{}
	for _, rc := range s.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if !slices.Contains(vh.GetDomains(), domain) {
				continue
			}
			for _, r := range vh.GetRoutes() {
				clusters := out[r.GetName()]
				if c := r.GetRoute().GetCluster(); c != "" {
					clusters = append(clusters, c)
				}
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					clusters = append(clusters, wc.GetName())
				}
				slices.Sort(clusters)
				out[r.GetName()] = slices.Compact(clusters)
			}
		}
	}
	return out
}

// Domains returns every domain of every virtual host, sorted.
func (s *Snapshot) Domains() []string {
	var out []string
	for _, rc := range s.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			out = append(out, vh.GetDomains()...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Endpoint is one endpoint of a cluster as the proxy sees it.
type Endpoint struct {
	Address        string
	Region, Zone   string
	Priority       uint32
	LocalityWeight uint32
	// Weight is the endpoint's own load-balancing weight (0 when unset).
	Weight uint32
}

// EndpointsOf returns the endpoints the proxy received for the EDS cluster
// named name, in the order received.
func (s *Snapshot) EndpointsOf(name string) []Endpoint {
	cla := s.Endpoints[name]
	if c := s.Clusters[name]; c != nil && c.GetEdsClusterConfig().GetServiceName() != "" {
		cla = s.Endpoints[c.GetEdsClusterConfig().GetServiceName()]
	}
	var out []Endpoint
	for _, le := range cla.GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, Endpoint{
				Address:        fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()),
				Region:         le.GetLocality().GetRegion(),
				Zone:           le.GetLocality().GetZone(),
				Priority:       le.GetPriority(),
				LocalityWeight: le.GetLoadBalancingWeight().GetValue(),
				Weight:         lb.GetLoadBalancingWeight().GetValue(),
			})
		}
	}
	return out
}

// ServerNames returns the SNI names the filter chains of the listeners on
// port match, sorted: what a TLS passthrough gateway (AUTO_PASSTHROUGH)
// routes by.
func (s *Snapshot) ServerNames(port uint32) []string {
	var out []string
	for _, l := range s.Listeners {
		if l.GetAddress().GetSocketAddress().GetPortValue() != port {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			out = append(out, fc.GetFilterChainMatch().GetServerNames()...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// InboundListener is Istio's name for a sidecar's inbound listener.
const InboundListener = "virtualInbound"

// InboundChains counts the filter chains of the sidecar's inbound listener
// that terminate TLS (a transport socket) and those that take plain text: a
// sidecar under mTLS STRICT has no plain-text chain. The blackhole chain,
// which only drops traffic addressed to the listener's own port, is not
// counted.
func (s *Snapshot) InboundChains() (tls, plain int) {
	for _, fc := range s.Listeners[InboundListener].GetFilterChains() {
		switch {
		case fc.GetName() == InboundListener+"-blackhole":
		case fc.GetTransportSocket() != nil:
			tls++
		default:
			plain++
		}
	}
	return tls, plain
}

// InboundPrincipals returns, by RBAC action (ALLOW, DENY), the principal
// names that the inbound listener's RBAC filters (HTTP and network) match,
// written as Envoy matches them ("spiffe://cluster.local/ns/shop/sa/" for a
// prefix), sorted and without repeats.
func (s *Snapshot) InboundPrincipals() map[string][]string {
	out := map[string][]string{}
	add := func(r *rbacv3.RBAC) {
		if r == nil {
			return
		}
		action := r.GetAction().String()
		for _, p := range r.GetPolicies() {
			for _, pr := range p.GetPrincipals() {
				out[action] = append(out[action], principalNames(pr)...)
			}
		}
	}
	for _, fc := range s.Listeners[InboundListener].GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil {
				continue
			}
			nr := &rbacnetv3.RBAC{}
			if tc.UnmarshalTo(nr) == nil {
				add(nr.GetRules())
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if tc.UnmarshalTo(hcm) != nil {
				continue
			}
			for _, hf := range hcm.GetHttpFilters() {
				hr := &rbachttpv3.RBAC{}
				if hf.GetTypedConfig() != nil && hf.GetTypedConfig().UnmarshalTo(hr) == nil {
					add(hr.GetRules())
				}
			}
		}
	}
	for a, names := range out {
		slices.Sort(names)
		out[a] = slices.Compact(names)
	}
	return out
}

// principalNames flattens a principal into the names it matches.
func principalNames(p *rbacv3.Principal) []string {
	var out []string
	if m := p.GetAuthenticated().GetPrincipalName(); m != nil {
		switch {
		case m.GetExact() != "":
			out = append(out, m.GetExact())
		case m.GetPrefix() != "":
			out = append(out, m.GetPrefix())
		case m.GetSuffix() != "":
			out = append(out, "*"+m.GetSuffix())
		}
	}
	for _, id := range p.GetOrIds().GetIds() {
		out = append(out, principalNames(id)...)
	}
	for _, id := range p.GetAndIds().GetIds() {
		out = append(out, principalNames(id)...)
	}
	if p.GetNotId() != nil {
		for _, n := range principalNames(p.GetNotId()) {
			out = append(out, "not "+n)
		}
	}
	return out
}

// WeightedClusters returns, for the routes of virtual hosts serving domain,
// each upstream cluster's weight in a weighted split, by cluster name.
func (s *Snapshot) WeightedClusters(domain string) map[string]uint32 {
	out := map[string]uint32{}
	for _, rc := range s.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if !slices.Contains(vh.GetDomains(), domain) {
				continue
			}
			for _, r := range vh.GetRoutes() {
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					out[wc.GetName()] = wc.GetWeight().GetValue()
				}
			}
		}
	}
	return out
}
