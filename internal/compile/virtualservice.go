package compile

// The Istio VirtualService emitter.

const (
	virtualServiceAPIVersion = "networking.istio.io/v1"
	virtualServiceKind       = "VirtualService"
)

// virtualService is a VirtualService bound to one gateway.
type virtualService struct {
	name    string
	hosts   []string
	gateway string // "<namespace>/<name>"
	routes  []httpRoute
}

// httpRoute sends requests that match any of matches (every request when
// there are none) to the service host, on port when it is not 0: to dests,
// the subsets of a ServiceRoute of host (gatewayroutes.go), or to the
// service itself when there are none.
type httpRoute struct {
	matches []httpMatch
	host    string
	port    uint32
	dests   []destination
}

// destination is one destination of a route: a subset of its service, or
// the whole service when subset is "". Weights count only when a route has
// more than one destination; they then sum to 100.
type destination struct {
	subset string
	weight int32
}

// httpMatch holds when the URI (if set) and every header match.
type httpMatch struct {
	uri     *stringMatch
	headers []headerMatch // sorted by name
}

type headerMatch struct {
	name  string
	match stringMatch
}

// stringMatch is Istio's StringMatch: kind is exact, prefix or regex.
type stringMatch struct {
	kind, value string
}

func (m stringMatch) spec() map[string]any { return map[string]any{m.kind: m.value} }

// virtualServiceSpec returns the spec of vs, with its routes in order.
func virtualServiceSpec(vs virtualService) map[string]any {
	hosts := make([]any, 0, len(vs.hosts))
	for _, h := range vs.hosts {
		hosts = append(hosts, h)
	}
	http := make([]any, 0, len(vs.routes))
	for _, r := range vs.routes {
		route := map[string]any{"route": destinationsSpec(r.host, r.port, r.dests)}
		if len(r.matches) > 0 {
			route["match"] = matchesSpec(r.matches)
		}
		http = append(http, route)
	}
	return map[string]any{
		"hosts":    hosts,
		"gateways": []any{vs.gateway},
		"http":     http,
	}
}

// destinationsSpec returns a route's destinations on host (and port, when
// not 0): dests, or the host itself when there are none.
func destinationsSpec(host string, port uint32, dests []destination) []any {
	if len(dests) == 0 {
		dests = []destination{{}}
	}
	out := make([]any, 0, len(dests))
	for _, d := range dests {
		dest := map[string]any{"host": host}
		if d.subset != "" {
			dest["subset"] = d.subset
		}
		if port != 0 {
			dest["port"] = map[string]any{"number": int64(port)}
		}
		route := map[string]any{"destination": dest}
		if len(dests) > 1 {
			route["weight"] = int64(d.weight)
		}
		out = append(out, route)
	}
	return out
}

// matchesSpec returns Istio's HTTPMatchRequests of matches.
func matchesSpec(matches []httpMatch) []any {
	out := make([]any, 0, len(matches))
	for _, m := range matches {
		match := map[string]any{}
		if m.uri != nil {
			match["uri"] = m.uri.spec()
		}
		if len(m.headers) > 0 {
			headers := make(map[string]any, len(m.headers))
			for _, h := range m.headers {
				headers[h.name] = h.match.spec()
			}
			match["headers"] = headers
		}
		out = append(out, match)
	}
	return out
}
