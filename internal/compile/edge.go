package compile

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"

	flotillav1alpha1 "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
)

// The EdgeGateway kind.
const EdgeGatewayKind = "EdgeGateway"

// DefaultHealthCheckHeader marks a health-check request when an
// EdgeGateway names no header or path of its own.
const DefaultHealthCheckHeader = "x-flotilla-health-check"

// edgeHostSuffix ends the internal hosts of an edge gateway's targets.
const edgeHostSuffix = "edge.flotilla.internal"

// maxEdgeWeight bounds a weight of an explicit cluster list.
const maxEdgeWeight = 1000

// edgeGateway compiles an EdgeGateway, in the namespace of its workload
// selector, into one Gateway with a server per valid external server, and
// per server with targets:
//   - a ServiceEntry "<name>-<server>" for the internal host
//     "<name>-<server>.<ns>.edge.flotilla.internal" whose endpoints are the
//     target clusters' ingress gateways (locality = the cluster's region and
//     zone; weight in an explicit list), exported to its namespace only;
//   - a ServiceEntry "<name>-<server>-local" for the local next hop alone;
//   - a DestinationRule per host: same-region-first locality failover with
//     outlier detection (Istio fails over only with outlier detection), or,
//     for an explicit list, plain weights without failover; TLS origination
//     with the hostname as SNI when the ingress gateways terminate TLS;
//   - a VirtualService for the hostname whose first route sends
//     health-check requests to the local host only, and the rest to the
//     targets.
//
// The targets come from the bundle's edge slice, which the central control
// plane builds from the fleet registry; drained clusters are not in it.
func (c *compilation) edgeGateway(o bundle.Object, t target) {
	spec := &flotillav1alpha1.EdgeGatewaySpec{}
	if !c.decode(o, spec) {
		return
	}
	ws := spec.GetWorkloadSelector()
	ns := ws.GetNamespace()
	fatal := !c.gatewayTarget(o, ws, "edge gateway", "edgegateway")
	fail := func(path, format string, args ...any) {
		c.diag(o.FQN, path, format, args...)
		fatal = true
	}
	health, ok := c.edgeHealthMatches(o.FQN, spec.GetHealthCheck())
	if !ok {
		fatal = true
	}
	if len(spec.GetExternalServers()) == 0 {
		fail("spec.externalServers", "at least one external server is required, e.g. {name: web, hostname: shop.example.com, port: 80}")
	}
	var servers []gatewayServer
	var valid []*flotillav1alpha1.ExternalServer
	names := map[string]bool{}
	protocols := map[uint32]string{}
	for i, es := range spec.GetExternalServers() {
		path := index("spec.externalServers", i)
		h := &flotillav1alpha1.HTTPServer{Name: es.GetName(), Hostname: es.GetHostname(), Port: es.GetPort(), Tls: es.GetTls()}
		s, sok := c.server(o.FQN, path, h, names, protocols)
		if !c.edgeClusters(o.FQN, path, es) {
			sok = false
		}
		if vsName := o.Name + "-" + es.GetName(); sok && len(content.IsDNS1123Label(vsName+"-local")) > 0 {
			c.diag(o.FQN, field(path, "name"), "the objects named %q are not valid names: shorten the EdgeGateway's or the server's name", vsName+"-local")
			sok = false
		}
		if !sok {
			continue
		}
		servers = append(servers, s)
		valid = append(valid, es)
	}
	if fatal || len(servers) == 0 || !t.reaches(ns) {
		return
	}
	c.emit(o.FQN, gatewayAPIVersion, gatewayKind, ns, o.Name, gatewaySpec(ws.GetLabels(), servers))
	for _, es := range valid {
		c.edgeServer(o, ns, es, health)
	}
}

// edgeHealthMatches validates the health-check selection and returns the
// VirtualService matches it stands for.
func (c *compilation) edgeHealthMatches(fqn string, hc *flotillav1alpha1.EdgeHealthCheck) ([]any, bool) {
	ok := true
	header, path := hc.GetHeader(), hc.GetPath()
	if header == "" && path == "" {
		header = DefaultHealthCheckHeader
	}
	var matches []any
	if header != "" {
		if msgs := validation.IsHTTPHeaderName(header); len(msgs) > 0 {
			c.diag(fqn, "spec.healthCheck.header", "%q is not a header name: %s", header, strings.Join(msgs, "; "))
			ok = false
		} else if header != strings.ToLower(header) {
			c.diag(fqn, "spec.healthCheck.header", "header names must be lowercase: use %q", strings.ToLower(header))
			ok = false
		}
		// Any value: a regex matching everything matches a present header.
		matches = append(matches, map[string]any{"headers": map[string]any{header: map[string]any{"regex": ".*"}}})
	}
	if path != "" {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " ?#") {
			c.diag(fqn, "spec.healthCheck.path", "%q is not a request path: write an absolute path without query, e.g. \"/healthz\"", path)
			ok = false
		}
		matches = append(matches, map[string]any{"uri": map[string]any{"exact": path}})
	}
	return matches, ok
}

// edgeClusters validates an external server's explicit cluster list.
func (c *compilation) edgeClusters(fqn, path string, es *flotillav1alpha1.ExternalServer) bool {
	ok := true
	seen := map[string]bool{}
	for j, cw := range es.GetClusters() {
		cp := index(field(path, "clusters"), j)
		switch {
		case cw.GetName() == "":
			c.diag(fqn, field(cp, "name"), "the cluster's name is required")
			ok = false
		case seen[cw.GetName()]:
			c.diag(fqn, field(cp, "name"), "cluster %q is listed twice: list each cluster once", cw.GetName())
			ok = false
		}
		seen[cw.GetName()] = true
		if w := cw.GetWeight(); w < 1 || w > maxEdgeWeight {
			c.diag(fqn, field(cp, "weight"), "weight %d is out of range: use 1..%d (drain a cluster with `flotilla cluster drain` rather than weight 0)", w, maxEdgeWeight)
			ok = false
		}
	}
	return ok
}

// edgeServer writes the objects of one valid external server.
func (c *compilation) edgeServer(o bundle.Object, ns string, es *flotillav1alpha1.ExternalServer, health []any) {
	slice := c.edges[edgeKey(o.FQN, es.GetName())]
	for _, p := range slice.Problems {
		c.diag(o.FQN, "", "server %s (%s): %s", es.GetName(), es.GetHostname(), p)
	}
	targets := slices.Clone(slice.Targets)
	if len(targets) == 0 {
		c.diag(o.FQN, "", "server %s: no cluster serves %s now (none publishes it on an IngressGateway with an address, or all are drained), so the edge answers 404 for it", es.GetName(), es.GetHostname())
		return
	}
	slices.SortStableFunc(targets, func(a, b bundle.EdgeTarget) int { return strings.Compare(a.Cluster, b.Cluster) })
	// The edge speaks one protocol to every target: TLS when the first
	// target's ingress gateway terminates it.
	tls := targets[0].TLS
	var kept, local []bundle.EdgeTarget
	for _, tg := range targets {
		if tg.TLS != tls {
			c.diag(o.FQN, "", "server %s: cluster %s's ingress gateway serves %s %s, unlike cluster %s's: it is left out; serve the hostname with the same TLS mode everywhere",
				es.GetName(), tg.Cluster, es.GetHostname(), map[bool]string{true: "with TLS", false: "without TLS"}[tg.TLS], targets[0].Cluster)
			continue
		}
		kept = append(kept, tg)
		if tg.Local {
			local = append(local, tg)
		}
	}
	base := o.Name + "-" + es.GetName()
	host := base + "." + ns + "." + edgeHostSuffix
	localHost := base + "-local." + ns + "." + edgeHostSuffix
	port := es.GetPort()
	c.edgeEntry(o.FQN, ns, base, host, port, kept, slice.Weighted)
	c.edgeRule(o.FQN, ns, base, host, es.GetHostname(), tls, !slice.Weighted)
	routes := []any{}
	if len(local) > 0 {
		c.edgeEntry(o.FQN, ns, base+"-local", localHost, port, local, false)
		c.edgeRule(o.FQN, ns, base+"-local", localHost, es.GetHostname(), tls, false)
		routes = append(routes, map[string]any{
			"name":  "health-check",
			"match": health,
			"route": []any{map[string]any{"destination": map[string]any{"host": localHost, "port": map[string]any{"number": int64(port)}}}},
		})
	} else {
		// No next local hop: a health check of this edge must fail, not be
		// carried elsewhere.
		c.diag(o.FQN, "", "server %s: no local next hop for health checks (no target ingress gateway in this cluster or its region), so health checks of this edge gateway fail", es.GetName())
		routes = append(routes, map[string]any{
			"name":           "health-check",
			"match":          health,
			"directResponse": map[string]any{"status": int64(503), "body": map[string]any{"string": "no local next hop\n"}},
		})
	}
	routes = append(routes, map[string]any{
		"name":  "edge",
		"route": []any{map[string]any{"destination": map[string]any{"host": host, "port": map[string]any{"number": int64(port)}}}},
	})
	c.emit(o.FQN, virtualServiceAPIVersion, virtualServiceKind, ns, base, map[string]any{
		"hosts":    []any{es.GetHostname()},
		"gateways": []any{ns + "/" + o.Name},
		"http":     routes,
	})
}

// edgeEntry writes the ServiceEntry of an internal edge host.
func (c *compilation) edgeEntry(owner, ns, name, host string, port uint32, targets []bundle.EdgeTarget, weighted bool) {
	resolution := "STATIC"
	var endpoints []any
	for _, tg := range targets {
		if _, err := netip.ParseAddr(tg.Address); err != nil {
			resolution = "DNS" // a load balancer's hostname
		}
		ep := map[string]any{
			"address": tg.Address,
			"ports":   map[string]any{"http": int64(tg.Port)},
		}
		if l := locality(bundle.RemoteInstance{Region: tg.Region, Zone: tg.Zone}); l != "" {
			ep["locality"] = l
		}
		if weighted {
			ep["weight"] = int64(tg.Weight)
		}
		endpoints = append(endpoints, ep)
	}
	c.emit(owner, "networking.istio.io/v1", "ServiceEntry", ns, name, map[string]any{
		"hosts":      []any{host},
		"location":   "MESH_EXTERNAL",
		"resolution": resolution,
		"ports":      []any{map[string]any{"number": int64(port), "name": "http", "protocol": "HTTP"}},
		"endpoints":  endpoints,
		"exportTo":   []any{"."},
	})
}

// edgeRule writes the DestinationRule of an internal edge host.
func (c *compilation) edgeRule(owner, ns, name, host, sni string, tls, failover bool) {
	policy := map[string]any{}
	if failover {
		policy["loadBalancer"] = map[string]any{"localityLbSetting": map[string]any{"enabled": true}}
		policy["outlierDetection"] = maps.Clone(failoverOutlierDetection)
	} else {
		policy["loadBalancer"] = map[string]any{"localityLbSetting": map[string]any{"enabled": false}}
	}
	if tls {
		policy["tls"] = map[string]any{"mode": "SIMPLE", "sni": sni}
	}
	c.emit(owner, "networking.istio.io/v1", "DestinationRule", ns, name, map[string]any{
		"host":          host,
		"exportTo":      []any{"."},
		"trafficPolicy": policy,
	})
}

// edgeKey is the key of an edge slice entry.
func edgeKey(owner, server string) string { return owner + "\x00" + server }
