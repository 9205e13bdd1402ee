package compile

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"

	flotillav1alpha1 "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/schema"
)

// The IngressGateway kind.
const (
	IngressGatewayAPIVersion = "flotilla.io/v1alpha1"
	IngressGatewayKind       = "IngressGateway"
)

// TLS modes of an IngressGateway server.
const (
	tlsDisabled = "DISABLED"
	tlsSimple   = "SIMPLE"
	tlsMutual   = "MUTUAL"
)

// ingressGateway compiles an IngressGateway into, in the namespace of its
// workload selector, one Gateway with a server per valid HTTP server and one
// VirtualService per valid HTTP server with valid routing.
//
// A problem in the selector or the object's name drops everything; a problem
// in a server drops that server and its VirtualService; a problem in a
// server's routing drops only its VirtualService.
func (c *compilation) ingressGateway(o bundle.Object, t target) {
	spec, ok := c.decodeIngressGateway(o)
	if !ok {
		return
	}
	ws := spec.GetWorkloadSelector()
	ns := ws.GetNamespace()
	fatal := !c.gatewayTarget(o, ws, "ingress gateway", "ingressgateway")
	fail := func(path, format string, args ...any) {
		c.diag(o.FQN, path, format, args...)
		fatal = true
	}
	if len(spec.GetHttp()) == 0 {
		fail("spec.http", "at least one HTTP server is required")
	}

	var servers []gatewayServer
	var services []virtualService
	names := map[string]bool{}
	protocols := map[uint32]string{} // port -> protocol of the first server on it
	for i, h := range spec.GetHttp() {
		path := index("spec.http", i)
		s, ok := c.server(o.FQN, path, h, names, protocols)
		if !ok {
			continue
		}
		servers = append(servers, s)
		if vs, ok := c.virtualService(o, path, h, ns); ok {
			services = append(services, vs)
		}
	}
	if fatal || len(servers) == 0 || !t.reaches(ns) {
		return
	}
	c.emit(o.FQN, gatewayAPIVersion, gatewayKind, ns, o.Name, gatewaySpec(ws.GetLabels(), servers))
	for _, vs := range services { // emitted by gatewayServices, once the ServiceRoutes are known
		c.gateways = append(c.gateways, gatewayService{owner: o.FQN, namespace: ns, vs: vs})
	}
}

// gatewayTarget checks what a gateway kind binds to: its object's name
// (it names the Istio Gateway) and its workload selector's namespace and
// labels. what names the gateway in messages ("ingress gateway"), and
// istio the example value of its istio label. It reports whether all hold.
func (c *compilation) gatewayTarget(o bundle.Object, ws *flotillav1alpha1.WorkloadSelector, what, istio string) bool {
	ok := true
	fail := func(path, format string, args ...any) {
		c.diag(o.FQN, path, format, args...)
		ok = false
	}
	if msgs := content.IsDNS1123Subdomain(o.Name); len(msgs) > 0 {
		fail("name", "%q cannot name an Istio Gateway: %s", o.Name, strings.Join(msgs, "; "))
	}
	nsPath := "spec.workloadSelector.namespace"
	if ns := ws.GetNamespace(); ns == "" {
		fail(nsPath, "the namespace of the %s deployment is required", what)
	} else if msgs := content.IsDNS1123Label(ns); len(msgs) > 0 {
		fail(nsPath, "%q is not a namespace name: %s", ns, strings.Join(msgs, "; "))
	}
	labelsPath := "spec.workloadSelector.labels"
	if len(ws.GetLabels()) == 0 {
		fail(labelsPath, `the labels of the %s pods are required, e.g. {"istio": %q}`, what, istio)
	}
	for _, k := range sortedKeys(ws.GetLabels()) {
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			fail(key(labelsPath, k), "invalid label key: %s", strings.Join(msgs, "; "))
		}
		if msgs := content.IsLabelValue(ws.GetLabels()[k]); len(msgs) > 0 {
			fail(key(labelsPath, k), "invalid label value %q: %s", ws.GetLabels()[k], strings.Join(msgs, "; "))
		}
	}
	return ok
}

// decodeIngressGateway decodes the spec, reporting every schema problem.
func (c *compilation) decodeIngressGateway(o bundle.Object) (*flotillav1alpha1.IngressGatewaySpec, bool) {
	spec := &flotillav1alpha1.IngressGatewaySpec{}
	return spec, c.decode(o, spec)
}

// decodeCached decodes o's spec as a new T, or returns the one the cache
// decoded from the same bytes before. The result is shared: read it only.
func decodeCached[T proto.Message](c *compilation, o bundle.Object, newT func() T) (T, bool) {
	if m, _, ok := c.cache.spec(o.Kind, o.Spec); ok {
		if t, ok := m.(T); ok {
			return t, true
		}
	}
	t := newT()
	if !c.decode(o, t) {
		return t, false
	}
	if c.cache != nil {
		c.cache.keepSpec(c.cache.key(o.Kind, "", "", o.Spec), t)
	}
	return t, true
}

// decode decodes o's spec into msg, reporting problems with their paths.
func (c *compilation) decode(o bundle.Object, msg proto.Message) bool {
	var v any = map[string]any{}
	if len(o.Spec) > 0 {
		if err := json.Unmarshal(o.Spec, &v); err != nil {
			c.diag(o.FQN, "spec", "not valid JSON: %v", err)
			return false
		}
	}
	if v == nil {
		v = map[string]any{}
	}
	if err := schema.Decode("spec", v, msg); err != nil {
		var errs schema.Errors
		if !errors.As(err, &errs) {
			errs = schema.Errors{{Path: "spec", Message: err.Error()}}
		}
		for _, e := range errs {
			c.diag(o.FQN, e.Path, "%s", e.Message)
		}
		return false
	}
	return true
}

// server validates HTTP server h, at path, into a Gateway server. names and
// protocols hold what earlier servers of the spec use.
func (c *compilation) server(fqn, path string, h *flotillav1alpha1.HTTPServer, names map[string]bool, protocols map[uint32]string) (gatewayServer, bool) {
	ok := true
	fail := func(p, format string, args ...any) {
		c.diag(fqn, p, format, args...)
		ok = false
	}
	switch name := h.GetName(); {
	case name == "":
		fail(field(path, "name"), "a name is required: a lowercase DNS label unique in the spec, e.g. \"web\"")
	case len(content.IsDNS1123Label(name)) > 0:
		fail(field(path, "name"), "%q is not a DNS label: %s", name, strings.Join(content.IsDNS1123Label(name), "; "))
	case names[name]:
		fail(field(path, "name"), "%q names an earlier server too: server names must be unique", name)
	default:
		names[name] = true
	}
	if msg := checkHostname(h.GetHostname()); msg != "" {
		fail(field(path, "hostname"), "%s", msg)
	}
	s := gatewayServer{name: h.GetName(), host: h.GetHostname(), port: h.GetPort(), protocol: "HTTP"}
	if s.port < 1 || s.port > maxPort {
		fail(field(path, "port"), "port %d is out of range: use a port within 1..%d, e.g. 80 or 443", s.port, maxPort)
	}
	tlsPath := field(path, "tls")
	switch mode := h.GetTls().GetMode(); mode {
	case "", tlsDisabled:
	case tlsSimple, tlsMutual:
		s.protocol, s.tlsMode, s.credentialName = "HTTPS", mode, h.GetTls().GetSecretName()
		if s.credentialName == "" {
			fail(field(tlsPath, "secretName"), "the secret holding the certificate is required when the TLS mode is %s", mode)
		} else if msgs := content.IsDNS1123Subdomain(s.credentialName); len(msgs) > 0 {
			fail(field(tlsPath, "secretName"), "%q is not a secret name: %s", s.credentialName, strings.Join(msgs, "; "))
		}
	default:
		fail(field(tlsPath, "mode"), "unknown TLS mode %q: use %s, %s or %s", mode, tlsDisabled, tlsSimple, tlsMutual)
	}
	if ok {
		if prev, used := protocols[s.port]; used && prev != s.protocol {
			fail(field(path, "port"), "port %d serves %s in an earlier server: one port cannot serve both HTTP and HTTPS", s.port, prev)
		} else {
			protocols[s.port] = s.protocol
		}
	}
	return s, ok
}

// virtualService validates the routing of HTTP server h, at path, of
// IngressGateway o whose gateway is in namespace ns.
func (c *compilation) virtualService(o bundle.Object, path string, h *flotillav1alpha1.HTTPServer, ns string) (virtualService, bool) {
	ok := true
	fail := func(p, format string, args ...any) {
		c.diag(o.FQN, p, format, args...)
		ok = false
	}
	vs := virtualService{
		name:    o.Name + "-" + h.GetName(),
		hosts:   []string{h.GetHostname()},
		gateway: ns + "/" + o.Name,
	}
	if msgs := content.IsDNS1123Subdomain(vs.name); len(msgs) > 0 {
		fail(field(path, "name"), "the VirtualService name %q is invalid: %s", vs.name, strings.Join(msgs, "; "))
	}
	rulesPath := field(field(path, "routing"), "rules")
	if len(h.GetRouting().GetRules()) == 0 {
		fail(rulesPath, "at least one rule is required, e.g. {route: {host: \"<namespace>/<service fqdn>\"}}")
	}
	for j, rule := range h.GetRouting().GetRules() {
		rp := index(rulesPath, j)
		route, rok := c.rule(o.FQN, rp, rule)
		if !rok {
			ok = false
			continue
		}
		vs.routes = append(vs.routes, route)
	}
	return vs, ok
}

// rule validates one routing rule at path.
func (c *compilation) rule(fqn, path string, r *flotillav1alpha1.HTTPRule) (httpRoute, bool) {
	ok := true
	fail := func(p, format string, args ...any) {
		c.diag(fqn, p, format, args...)
		ok = false
	}
	var route httpRoute
	catchAll := false
	for k, m := range r.GetMatch() {
		mp := index(field(path, "match"), k)
		var hm httpMatch
		if m.GetPath() != nil {
			sm, msg := stringMatchOf(m.GetPath())
			if msg != "" {
				fail(field(mp, "path"), "%s", msg)
			}
			hm.uri = &sm
		}
		for _, name := range sortedKeys(m.GetHeaders()) {
			hp := key(field(mp, "headers"), name)
			if msgs := validation.IsHTTPHeaderName(name); len(msgs) > 0 {
				fail(hp, "%q is not a header name: %s", name, strings.Join(msgs, "; "))
			} else if name != strings.ToLower(name) {
				fail(hp, "header names must be lowercase: use %q", strings.ToLower(name))
			}
			sm, msg := stringMatchOf(m.GetHeaders()[name])
			if msg != "" {
				fail(hp, "%s", msg)
			}
			hm.headers = append(hm.headers, headerMatch{name: name, match: sm})
		}
		if hm.uri == nil && len(hm.headers) == 0 {
			catchAll = true // an empty match matches every request
		}
		route.matches = append(route.matches, hm)
	}
	if catchAll {
		route.matches = nil
	}
	hostPath := field(field(path, "route"), "host")
	if r.GetRoute() == nil {
		fail(field(path, "route"), "a route is required: {host: \"<namespace>/<service fqdn>\"}")
	} else if fqdn, msg := serviceFQDN(r.GetRoute().GetHost()); msg != "" {
		fail(hostPath, "%s", msg)
	} else {
		route.host = fqdn
	}
	route.port = r.GetRoute().GetPort()
	if route.port > maxPort {
		fail(field(field(path, "route"), "port"), "port %d is out of range: use a port within 1..%d, or omit it", route.port, maxPort)
	}
	return route, ok
}

// stringMatchOf converts a StringMatch, or says why it cannot.
func stringMatchOf(m *flotillav1alpha1.StringMatch) (stringMatch, string) {
	switch v := m.GetMatchType().(type) {
	case *flotillav1alpha1.StringMatch_Exact:
		return stringMatch{kind: "exact", value: v.Exact}, ""
	case *flotillav1alpha1.StringMatch_Prefix:
		return stringMatch{kind: "prefix", value: v.Prefix}, ""
	case *flotillav1alpha1.StringMatch_Regex:
		if _, err := regexp.Compile(v.Regex); err != nil {
			return stringMatch{}, fmt.Sprintf("invalid regex %q: %v", v.Regex, err)
		}
		return stringMatch{kind: "regex", value: v.Regex}, ""
	}
	return stringMatch{}, "set one of exact, prefix or regex"
}

// serviceFQDN splits "<namespace>/<service fqdn>" and returns the FQDN, or a
// message saying what is wrong.
func serviceFQDN(host string) (string, string) {
	ns, fqdn, found := strings.Cut(host, "/")
	if !found || ns == "" || fqdn == "" || len(content.IsDNS1123Label(ns)) > 0 || len(content.IsDNS1123Subdomain(fqdn)) > 0 {
		return "", fmt.Sprintf("route host %q is not of the form \"<namespace>/<service fqdn>\", e.g. \"shop/frontend.shop.svc.cluster.local\"", host)
	}
	return fqdn, ""
}

// checkHostname returns why host cannot be a gateway host, or "".
func checkHostname(host string) string {
	switch {
	case host == "":
		return "a hostname is required, e.g. \"shop.example.com\" or \"*.example.com\""
	case host == "*":
		return ""
	case strings.HasPrefix(host, "*."):
		if msgs := validation.IsWildcardDNS1123Subdomain(host); len(msgs) > 0 {
			return fmt.Sprintf("%q is not a hostname: %s", host, strings.Join(msgs, "; "))
		}
	default:
		if msgs := content.IsDNS1123Subdomain(host); len(msgs) > 0 {
			return fmt.Sprintf("%q is not a hostname: %s", host, strings.Join(msgs, "; "))
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
