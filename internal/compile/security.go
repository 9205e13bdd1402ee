package compile

import (
	"slices"
	"strings"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/selector"
)

// Names of the objects the settings pass writes in each namespace. Each is
// owned by the setting its main field came from.
const (
	SettingsObjectName = "flotilla-default" // PeerAuthentication, Sidecar, DestinationRule
	AllowPolicyName    = "flotilla-allow"   // AuthorizationPolicy, ALLOW
	DenyPolicyName     = "flotilla-deny"    // AuthorizationPolicy, DENY
	JWTPolicyName      = "flotilla-jwt"     // RequestAuthentication
)

const securityAPIVersion = "security.istio.io/v1"

// securityObjects writes namespace ns's PeerAuthentication,
// AuthorizationPolicies and RequestAuthentication from its settings.
func (c *compilation) securityObjects(ns string, s *namespaceSettings) {
	if f, ok := s.fields["security.mtlsMode"]; ok {
		if why := c.wideTaken("PeerAuthentication", ns); why != "" {
			c.diag(f.Source, "", "%s", why)
		} else {
			c.emit(f.Source, securityAPIVersion, "PeerAuthentication", ns, SettingsObjectName, map[string]any{
				"mtls": map[string]any{"mode": f.Value.(string)},
			})
		}
	}
	if f, ok := s.fields["security.authorization"]; ok {
		c.authorization(ns, s, f)
	}
	if f, ok := s.fields["security.jwt"]; ok {
		var rules []any
		for _, r := range f.Value.(jwtRules) {
			rule := map[string]any{"issuer": r.GetIssuer(), "jwksUri": r.GetJwksUri()}
			if len(r.GetAudiences()) > 0 {
				rule["audiences"] = anyStrings(r.GetAudiences())
			}
			rules = append(rules, rule)
		}
		c.emit(f.Source, securityAPIVersion, "RequestAuthentication", ns, JWTPolicyName, map[string]any{"jwtRules": rules})
	}
}

// authorization writes the ALLOW (and, for RULES, DENY) policy of ns. The
// callers are named by principal: "<trust domain>/ns/<namespace>/sa/*" for
// each trust domain of the organization (a prefix match), so a namespace
// pattern "pay-*" becomes "<td>/ns/pay-*" and "*" becomes "<td>/*".
func (c *compilation) authorization(ns string, s *namespaceSettings, f Setting) {
	a := f.Value.(*pb.Authorization)
	var allow []string
	switch a.GetMode() {
	case "DISABLED":
		return
	case "NAMESPACE":
		allow = c.principals([]string{ns})
	case "GROUP":
		g := c.groups[f.scope]
		allow = c.principals(namespaceTerms(g.Namespaces))
	case "WORKSPACE":
		allow = c.principals(c.workspaceNamespaces(s.workspace))
	case "CLUSTER":
		allow = c.principals(c.sortedNamespaces())
	case "RULES":
		org, tenant := scopeOf(s.workspace)
		covers := func(to string) bool { return to == org || to == tenant || to == s.workspace }
		from := func(rules []*pb.AuthorizationRule) ([]string, bool) {
			var terms []string
			any := false
			for _, r := range rules {
				if covers(r.GetTo()) {
					any = true
					terms = append(terms, c.scopeNamespaces(r.GetFrom())...)
				}
			}
			return c.principals(terms), any
		}
		if deny, ok := from(a.GetRules().GetDeny()); ok && len(deny) > 0 {
			c.emit(f.Source, securityAPIVersion, "AuthorizationPolicy", ns, DenyPolicyName, map[string]any{
				"action": "DENY",
				"rules":  []any{principalRule(deny)},
			})
		}
		if len(a.GetRules().GetAllow()) == 0 {
			return // deny rules only: everything else stays allowed
		}
		allow, _ = from(a.GetRules().GetAllow())
		if len(allow) == 0 {
			// No allow rule reaches this namespace: nothing may call it.
			c.emit(f.Source, securityAPIVersion, "AuthorizationPolicy", ns, AllowPolicyName, map[string]any{"action": "ALLOW"})
			return
		}
	}
	c.emit(f.Source, securityAPIVersion, "AuthorizationPolicy", ns, AllowPolicyName, map[string]any{
		"action": "ALLOW",
		"rules":  []any{principalRule(allow)},
	})
}

func principalRule(principals []string) map[string]any {
	return map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": anyStrings(principals)}}}}
}

// principals turns namespace terms ("payments", "pay-*", "*") into
// principal prefixes in every trust domain, sorted and unique.
func (c *compilation) principals(terms []string) []string {
	var out []string
	for _, td := range c.trustDomains {
		for _, t := range terms {
			switch {
			case t == "*":
				out = append(out, td+"/*")
			case strings.HasSuffix(t, "*"):
				out = append(out, td+"/ns/"+t)
			default:
				out = append(out, td+"/ns/"+t+"/sa/*")
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// namespaceTerms are the namespace sides of "<cluster>/<namespace>" patterns.
func namespaceTerms(patterns []string) []string {
	var out []string
	for _, n := range patterns {
		if p, err := selector.Parse(n); err == nil {
			out = append(out, p.Namespace.String())
		}
	}
	return out
}

// workspaceNamespaces are the namespace terms of a workspace's patterns.
func (c *compilation) workspaceNamespaces(ws string) []string {
	return namespaceTerms(c.groups[ws].Namespaces)
}

// scopeNamespaces are the namespace terms of every workspace in an
// organization, tenant or workspace.
func (c *compilation) scopeNamespaces(fqn string) []string {
	var out []string
	for _, w := range c.workspaces {
		if w.group.FQN == fqn || strings.HasPrefix(w.group.FQN, fqn+"/") {
			out = append(out, namespaceTerms(w.group.Namespaces)...)
		}
	}
	return out
}

func anyStrings(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
