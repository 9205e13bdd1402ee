package compile

import (
	"fmt"
	"strings"
)

// A DIRECT object is the user's Istio object, delivered as written, but
// only within its workspace: the hosts it claims and the namespaces it is
// exported to stay inside the namespaces the workspace owns. Without this, a
// VirtualService for another tenant's service, exported mesh-wide, would
// take over that service's traffic in every namespace.

// exportingKinds are the Istio kinds with an exportTo field.
var exportingKinds = map[string]bool{"VirtualService": true, "DestinationRule": true, "ServiceEntry": true}

// Confine checks a DIRECT object of kind in namespace against what its
// workspace owns (owns reports whether a namespace is the workspace's). It
// returns one diagnostic per field that reaches beyond (FQN left empty):
//   - exportTo lists only ".", "~" or owned namespaces;
//   - hosts (and a DestinationRule's host) name only services of owned
//     namespaces, or hosts outside the cluster ("api.example.com"): an
//     object exported only inside the workspace cannot affect others;
//   - a VirtualService binds only to gateways of owned namespaces, or to
//     the sidecars ("mesh").
func Confine(kind, namespace string, spec map[string]any, owns func(ns string) bool) []Diagnostic {
	var out []Diagnostic
	bad := func(field, format string, args ...any) {
		out = append(out, Diagnostic{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if exportingKinds[kind] {
		for i, v := range stringList(spec["exportTo"]) {
			switch {
			case v == "." || v == "~" || v == namespace:
			case v == "*":
				bad(index("spec.exportTo", i), `"*" exports it to every namespace of the cluster, other tenants' too: list the namespaces of your workspace, or leave exportTo out (the workspace's namespaces)`)
			case !owns(v):
				bad(index("spec.exportTo", i), "namespace %q is not in this object's workspace: export only to the workspace's namespaces", v)
			}
		}
	}
	checkHost := func(field, h string) {
		if why := hostReach(h, namespace, owns); why != "" {
			bad(field, "host %q %s: name services of your workspace's namespaces, or hosts outside the cluster", h, why)
		}
	}
	switch kind {
	case "VirtualService", "ServiceEntry":
		for i, h := range stringList(spec["hosts"]) {
			checkHost(index("spec.hosts", i), h)
		}
	case "DestinationRule":
		if h, ok := spec["host"].(string); ok {
			checkHost("spec.host", h)
		}
	}
	if kind == "VirtualService" {
		for i, g := range stringList(spec["gateways"]) {
			if ns, _, ok := strings.Cut(g, "/"); ok && ns != namespace && !owns(ns) {
				bad(index("spec.gateways", i), "gateway %q is in namespace %q, outside this object's workspace: bind to gateways of your workspace's namespaces, or to \"mesh\"", g, ns)
			}
		}
	}
	return out
}

// hostReach says how host reaches beyond the namespaces owns accepts
// (short names are the object's own namespace's), or "" when it does not.
func hostReach(host, namespace string, owns func(string) bool) string {
	const suffix = ".svc.cluster.local"
	switch {
	case host == "*":
		return "matches every host, other tenants' services too"
	case host == "*.local" || host == "*.cluster.local" || host == "*"+suffix:
		return "matches the services of every namespace"
	case !strings.Contains(host, "."):
		return "" // a short name: a service of the object's own namespace
	}
	name, ok := strings.CutSuffix(host, suffix)
	if !ok {
		if name, ok = strings.CutSuffix(host, ".svc"); !ok {
			return "" // outside the cluster
		}
	}
	i := strings.LastIndex(name, ".")
	if i < 0 {
		return "is not of the form <service>.<namespace>" + suffix
	}
	if ns := name[i+1:]; ns != namespace && !owns(ns) {
		return fmt.Sprintf("is a service of namespace %q, outside this object's workspace", ns)
	}
	return ""
}

func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
