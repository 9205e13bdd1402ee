package compile

import (
	"maps"
	"strconv"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
)

// serviceRoute is a valid ServiceRoute, compiled once the settings of its
// namespace are known.
type serviceRoute struct {
	fqn, name string
	spec      *pb.ServiceRouteSpec
	ns, svc   string
	t         target
}

func (r serviceRoute) host() string { return r.svc + "." + r.ns + ".svc.cluster.local" }

// serviceRoute checks a ServiceRoute and keeps it for serviceRoutes.
func (c *compilation) serviceRoute(o bundle.Object, g bundle.Group, t target) {
	if g.Type != "traffic" {
		c.diag(o.FQN, "group", "a ServiceRoute belongs in a traffic group, and %s is a %s group", g.FQN, g.Type)
		return
	}
	spec, ok := decodeCached(c, o, func() *pb.ServiceRouteSpec { return &pb.ServiceRouteSpec{} })
	if !ok {
		return
	}
	probs := ValidateServiceRoute(spec)
	for _, p := range probs {
		c.diag(o.FQN, p.Field, "%s", p.Message)
	}
	if len(probs) > 0 {
		return
	}
	ns, svc, _ := splitService(spec.GetService())
	if !t.selector.Match(t.cluster, ns) && t.selector.MatchCluster(t.cluster) {
		c.diag(o.FQN, "spec.service", "namespace %q is not selected by group %s in cluster %s: route a service of a namespace the group selects", ns, g.FQN, t.cluster)
		return
	}
	if !t.reaches(ns) {
		return
	}
	c.routes = append(c.routes, serviceRoute{fqn: o.FQN, name: o.Name, spec: spec, ns: ns, svc: svc, t: t})
}

// routed reports whether a ServiceRoute writes the DestinationRule of host.
func (c *compilation) routed(host string) bool {
	for _, r := range c.routes {
		if r.host() == host {
			return true
		}
	}
	return false
}

// serviceRoutes writes each ServiceRoute's DestinationRule (subsets, the
// namespace's connection pool and outlier detection, port-level settings,
// and the locality failover of an exposed service) and VirtualService
// (its http routes, then the weighted split of the subsets; the namespace's
// timeout and retries on every route).
func (c *compilation) serviceRoutes() {
	byHost := map[string]string{}
	for _, r := range c.routes {
		host := r.host()
		if first, dup := byHost[host]; dup {
			c.diag(r.fqn, "spec.service", "%s already routes %s, and Istio takes one DestinationRule per host: keep one ServiceRoute per service", first, host)
			continue
		}
		byHost[host] = r.fqn
		if dr := c.userDRs[host]; dr != "" {
			c.diag(r.fqn, "spec.service", "cluster %s has its own DestinationRule %s for %s, which Flotilla leaves alone, so this route's subsets cannot be written: remove that DestinationRule, or put the subsets in it and route with a DIRECT VirtualService",
				c.cluster, dr, host)
			continue
		}
		s := c.settingsFor(r.ns)
		if s == nil {
			s = &namespaceSettings{}
		}
		c.emit(r.fqn, networkingAPIVersion, "DestinationRule", r.ns, r.name, c.routeDestinationRule(r, s))
		c.emit(r.fqn, networkingAPIVersion, "VirtualService", r.ns, r.name, routeVirtualService(r, s))
	}
}

func (c *compilation) routeDestinationRule(r serviceRoute, s *namespaceSettings) map[string]any {
	spec := map[string]any{"host": r.host()}
	var subsets []any
	for _, ss := range r.spec.GetSubsets() {
		subsets = append(subsets, map[string]any{"name": ss.GetName(), "labels": stringMap(ss.GetLabels())})
	}
	if len(subsets) > 0 {
		spec["subsets"] = subsets
	}
	policy, _ := trafficPolicy(s)
	if policy == nil {
		policy = map[string]any{}
	}
	if lb, ok := c.failoverLB[r.host()]; ok {
		policy["loadBalancer"] = map[string]any{"localityLbSetting": lb}
		if _, ok := policy["outlierDetection"]; !ok {
			policy["outlierDetection"] = maps.Clone(failoverOutlierDetection) // Istio fails over only with it
		}
	}
	var ports []any
	for _, p := range r.spec.GetPortLevelSettings() {
		ps := map[string]any{"port": map[string]any{"number": int64(p.GetPort())}}
		if p.GetConnectionPool() != nil {
			ps["connectionPool"] = connectionPoolSpec(p.GetConnectionPool())
		}
		if p.GetOutlierDetection() != nil {
			ps["outlierDetection"] = outlierDetectionSpec(p.GetOutlierDetection())
		}
		ports = append(ports, ps)
	}
	if len(ports) > 0 {
		policy["portLevelSettings"] = ports
	}
	if len(policy) > 0 {
		spec["trafficPolicy"] = policy
	}
	return spec
}

func routeVirtualService(r serviceRoute, s *namespaceSettings) map[string]any {
	host := r.host()
	dest := func(subset string, weight int32, weighted bool) map[string]any {
		d := map[string]any{"destination": map[string]any{"host": host, "subset": subset}}
		if subset == "" {
			d["destination"] = map[string]any{"host": host}
		}
		if weighted {
			d["weight"] = int64(weight)
		}
		return d
	}
	resilience := func(route map[string]any) map[string]any {
		if f, ok := s.fields["traffic.resilience.timeout"]; ok {
			route["timeout"] = protoDuration(f.Value.(string))
		}
		if f, ok := s.fields["traffic.resilience.retries"]; ok {
			route["retries"] = retriesSpec(f.Value.(*pb.Retries))
		}
		return route
	}
	var http []any
	for i, hr := range r.spec.GetHttpRoutes() {
		route := map[string]any{"name": hr.GetName()}
		if hr.GetName() == "" {
			route["name"] = "route-" + strconv.Itoa(i)
		}
		var matches []any
		for _, m := range hr.GetMatch() {
			match := map[string]any{}
			if m.GetPathPrefix() != "" {
				match["uri"] = map[string]any{"prefix": m.GetPathPrefix()}
			}
			if len(m.GetHeaders()) > 0 {
				headers := map[string]any{}
				for _, k := range sortedKeys(m.GetHeaders()) {
					headers[k] = map[string]any{"exact": m.GetHeaders()[k]}
				}
				match["headers"] = headers
			}
			matches = append(matches, match)
		}
		if len(matches) > 0 {
			route["match"] = matches
		}
		var dests []any
		for _, d := range hr.GetDestination() {
			dests = append(dests, dest(d.GetSubset(), d.GetWeight(), len(hr.GetDestination()) > 1))
		}
		route["route"] = dests
		http = append(http, resilience(route))
	}
	// The default route: the weighted split, else the one subset, else the
	// service itself.
	var dests []any
	var weighted []*pb.Subset
	for _, ss := range r.spec.GetSubsets() {
		if ss.GetWeight() > 0 {
			weighted = append(weighted, ss)
		}
	}
	switch {
	case len(weighted) > 0:
		for _, ss := range weighted {
			dests = append(dests, dest(ss.GetName(), ss.GetWeight(), len(weighted) > 1))
		}
	case len(r.spec.GetSubsets()) == 1:
		dests = append(dests, dest(r.spec.GetSubsets()[0].GetName(), 0, false))
	default:
		dests = append(dests, dest("", 0, false))
	}
	http = append(http, resilience(map[string]any{"name": "default", "route": dests}))
	return map[string]any{"hosts": []any{host}, "http": http}
}
