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
// there are none) to the service host, on port when it is not 0.
type httpRoute struct {
	matches []httpMatch
	host    string
	port    uint32
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
		dest := map[string]any{"host": r.host}
		if r.port != 0 {
			dest["port"] = map[string]any{"number": int64(r.port)}
		}
		route := map[string]any{
			"route": []any{map[string]any{"destination": dest}},
		}
		if len(r.matches) > 0 {
			matches := make([]any, 0, len(r.matches))
			for _, m := range r.matches {
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
				matches = append(matches, match)
			}
			route["match"] = matches
		}
		http = append(http, route)
	}
	return map[string]any{
		"hosts":    hosts,
		"gateways": []any{vs.gateway},
		"http":     http,
	}
}
