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
		c.routeOf[host] = r
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
	var http []any
	for _, rule := range routeRules(r.spec) {
		route := map[string]any{"name": rule.name, "route": destinationsSpec(host, 0, rule.dests)}
		if len(rule.matches) > 0 {
			route["match"] = matchesSpec(rule.matches)
		}
		if f, ok := s.fields["traffic.resilience.timeout"]; ok {
			route["timeout"] = protoDuration(f.Value.(string))
		}
		if f, ok := s.fields["traffic.resilience.retries"]; ok {
			route["retries"] = retriesSpec(f.Value.(*pb.Retries))
		}
		http = append(http, route)
	}
	return map[string]any{"hosts": []any{host}, "http": http}
}

// routeRule is one route of a ServiceRoute: requests that match any of
// matches (every request when there are none) go to dests.
type routeRule struct {
	name    string
	matches []httpMatch
	dests   []destination
}

// routeRules returns the routes of a valid ServiceRoute in the order Istio
// tries them: its http routes, then the default route (the weighted split,
// else the one subset, else the service itself).
func routeRules(spec *pb.ServiceRouteSpec) []routeRule {
	var rules []routeRule
	for i, hr := range spec.GetHttpRoutes() {
		rule := routeRule{name: hr.GetName()}
		if rule.name == "" {
			rule.name = "route-" + strconv.Itoa(i)
		}
		for _, m := range hr.GetMatch() {
			match := httpMatch{}
			if p := m.GetPathPrefix(); p != "" {
				match.uri = &stringMatch{kind: "prefix", value: p}
			}
			for _, k := range sortedKeys(m.GetHeaders()) {
				match.headers = append(match.headers, headerMatch{name: k, match: stringMatch{kind: "exact", value: m.GetHeaders()[k]}})
			}
			rule.matches = append(rule.matches, match)
		}
		for _, d := range hr.GetDestination() {
			rule.dests = append(rule.dests, destination{subset: d.GetSubset(), weight: d.GetWeight()})
		}
		rules = append(rules, rule)
	}
	def := routeRule{name: "default"}
	for _, ss := range spec.GetSubsets() {
		if ss.GetWeight() > 0 {
			def.dests = append(def.dests, destination{subset: ss.GetName(), weight: ss.GetWeight()})
		}
	}
	if len(def.dests) == 0 && len(spec.GetSubsets()) == 1 {
		def.dests = []destination{{subset: spec.GetSubsets()[0].GetName()}}
	}
	return append(rules, def)
}
