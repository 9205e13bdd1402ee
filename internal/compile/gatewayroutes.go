package compile

import (
	"regexp"
	"strings"
)

// An IngressGateway's VirtualService is bound to its gateway, and Istio
// applies a VirtualService only to the traffic of the proxies it is bound
// to: the ServiceRoute's own VirtualService (bound to the mesh) does
// nothing for requests that enter through a gateway, which would then
// spread evenly over every version of the service (Istio's analyzer calls
// this IST0140). So a gateway route to a service that a ServiceRoute routes
// takes that ServiceRoute's routes: its http routes, each matched on the
// gateway rule's conditions and its own, then its default split. This holds
// for the gateways of every workspace: the ServiceRoute's owners decide how
// their service's versions share its traffic, wherever the traffic enters.

// gatewayService is an IngressGateway's VirtualService, held until the
// ServiceRoutes are known.
type gatewayService struct {
	owner, namespace string
	vs               virtualService
}

// gatewayServices emits the IngressGateways' VirtualServices with the
// routes of the ServiceRoutes their rules send traffic to.
func (c *compilation) gatewayServices() {
	for _, g := range c.gateways {
		vs := g.vs
		vs.routes = nil
		for _, r := range g.vs.routes {
			sr, ok := c.routeOf[r.host]
			if !ok {
				vs.routes = append(vs.routes, r)
				continue
			}
			vs.routes = append(vs.routes, c.routedThrough(g.owner, r, sr)...)
		}
		c.emit(g.owner, virtualServiceAPIVersion, virtualServiceKind, g.namespace, vs.name, virtualServiceSpec(vs))
	}
}

// routedThrough returns the routes gateway rule r takes to the service that
// ServiceRoute sr routes: one per http route of sr that a request matching
// r can also match, then sr's default split on r's own conditions. A
// combination of conditions that one Istio match cannot express (a regex
// and a prefix on the same value) is left out, and said so on the
// ServiceRoute: those requests take the default split.
func (c *compilation) routedThrough(gateway string, r httpRoute, sr serviceRoute) []httpRoute {
	rules := routeRules(sr.spec)
	var out []httpRoute
	for i, rule := range rules[:len(rules)-1] {
		matches, inexpressible := intersect(r.matches, rule.matches)
		if inexpressible {
			c.diag(sr.fqn, index("spec.httpRoutes", i)+".match",
				"requests through IngressGateway %s to %s cannot be matched on both its rule's conditions and this route's in one Istio match (a regex and another match of the same value), so they take the default split: match the path by prefix or exact value in one of them",
				gateway, sr.host())
		}
		if len(matches) == 0 {
			continue // no request matches both
		}
		out = append(out, httpRoute{matches: matches, host: r.host, port: r.port, dests: rule.dests})
	}
	def := rules[len(rules)-1]
	return append(out, httpRoute{matches: r.matches, host: r.host, port: r.port, dests: def.dests})
}

// intersect returns matches that hold exactly when one of a and one of b
// hold (an empty list matches every request). inexpressible reports a pair
// whose conjunction one Istio match cannot state; it is left out.
func intersect(a, b []httpMatch) (out []httpMatch, inexpressible bool) {
	if len(a) == 0 {
		return b, false
	}
	if len(b) == 0 {
		return a, false
	}
	for _, x := range a {
		for _, y := range b {
			m, ok, exact := both(x, y)
			inexpressible = inexpressible || !exact
			if ok && exact {
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 {
		// Keep the meaning "no request": an empty list would match all.
		return nil, inexpressible
	}
	return out, inexpressible
}

// both returns the match that holds when x and y both do. ok is false when
// no request can match both; exact is false when the conjunction cannot be
// written as one match.
func both(x, y httpMatch) (m httpMatch, ok, exact bool) {
	exact = true
	value := func(a, b *stringMatch) *stringMatch {
		v, vok, vexact := bothValues(a, b)
		ok, exact = ok && vok, exact && vexact
		return v
	}
	ok = true
	m.uri = value(x.uri, y.uri)
	i, j := 0, 0 // headers are sorted by name
	for i < len(x.headers) || j < len(y.headers) {
		switch {
		case j == len(y.headers) || i < len(x.headers) && x.headers[i].name < y.headers[j].name:
			m.headers = append(m.headers, x.headers[i])
			i++
		case i == len(x.headers) || y.headers[j].name < x.headers[i].name:
			m.headers = append(m.headers, y.headers[j])
			j++
		default:
			if v := value(&x.headers[i].match, &y.headers[j].match); v != nil {
				m.headers = append(m.headers, headerMatch{name: x.headers[i].name, match: *v})
			}
			i, j = i+1, j+1
		}
	}
	if !ok {
		return httpMatch{}, false, true // no request matches both, expressible or not
	}
	return m, true, exact
}

// bothValues returns the string match that holds when a and b both do (nil
// matches every value), with ok and exact as in both.
func bothValues(a, b *stringMatch) (m *stringMatch, ok, exact bool) {
	switch {
	case a == nil:
		return b, true, true
	case b == nil || *a == *b:
		return a, true, true
	case a.kind == "regex" && b.kind == "regex":
		return nil, true, false
	case b.kind == "exact" || b.kind == "prefix" && a.kind == "regex":
		a, b = b, a // a is now exact, or a prefix beside a regex
	}
	switch {
	case a.kind == "exact":
		return a, b.holds(a.value), true
	case b.kind == "prefix": // two prefixes: the longer, if it extends the other
		if strings.HasPrefix(b.value, a.value) {
			return b, true, true
		}
		return a, strings.HasPrefix(a.value, b.value), true
	}
	return nil, true, false // a prefix and a regex
}

// holds reports whether value matches m. Envoy matches a regex against the
// whole value.
func (m stringMatch) holds(value string) bool {
	switch m.kind {
	case "exact":
		return value == m.value
	case "prefix":
		return strings.HasPrefix(value, m.value)
	}
	re, err := regexp.Compile(`^(?:` + m.value + `)$`)
	return err == nil && re.MatchString(value)
}
