package compile

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// The checks of the settings kinds and ServiceRoute on their own. They run at
// apply time (package resource) and in every compilation, in the same words.
// Paths are relative to the resource ("spec.resilience.timeout").

// FieldProblem is one problem at one field.
type FieldProblem struct {
	Field, Message string
}

type problems []FieldProblem

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, FieldProblem{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (p *problems) oneOf(field, v string, allowed []string, required bool) {
	if v == "" {
		if required {
			p.add(field, "is required: one of %s", strings.Join(allowed, ", "))
		}
		return
	}
	if !slices.Contains(allowed, v) {
		p.add(field, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// duration parses a positive duration such as "10s" or "250ms".
func (p *problems) duration(field, v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.add(field, "%q is not a duration: write it like 10s, 1.5s or 250ms", v)
		return 0, false
	}
	if d <= 0 {
		p.add(field, "%q must be more than zero", v)
		return 0, false
	}
	if d < time.Millisecond {
		p.add(field, "%q is under Istio's 1ms resolution", v)
		return 0, false
	}
	return d, true
}

func (p *problems) nonNegative(field string, v int32) {
	if v < 0 {
		p.add(field, "%d is negative", v)
	}
}

// ValidateTrafficSetting checks a traffic setting at path ("spec" in a
// TrafficSetting, "spec.defaultTrafficSetting" in a default). GROUP
// reachability is only meaningful inside a group.
func ValidateTrafficSetting(path string, s *pb.TrafficSettingSpec, inGroup bool) []FieldProblem {
	var p problems
	if r := s.GetReachability(); r != nil {
		mp := path + ".reachability.mode"
		p.oneOf(mp, r.GetMode(), ReachabilityModes, true)
		if r.GetMode() == "GROUP" && !inGroup {
			p.add(mp, "GROUP is the namespaces of a traffic group, so it is only for a TrafficSetting in a group: use WORKSPACE here")
		}
		hp := path + ".reachability.hosts"
		switch {
		case r.GetMode() == "CUSTOM" && len(r.GetHosts()) == 0:
			p.add(hp, `is required in mode CUSTOM: list "<namespace>/<host>" entries, e.g. "payments/*"`)
		case r.GetMode() != "CUSTOM" && len(r.GetHosts()) > 0:
			p.add(hp, "hosts are only read in mode CUSTOM, and the mode is %s: set mode CUSTOM or remove the hosts", r.GetMode())
		}
		for i, h := range r.GetHosts() {
			checkSidecarHost(&p, index(hp, i), h)
		}
	}
	rp := path + ".resilience"
	res := s.GetResilience()
	timeout, hasTimeout := p.duration(rp+".timeout", res.GetTimeout())
	if r := res.GetRetries(); r != nil {
		p.nonNegative(rp+".retries.attempts", r.GetAttempts())
		perTry, ok := p.duration(rp+".retries.perTryTimeout", r.GetPerTryTimeout())
		if ok && hasTimeout && r.GetAttempts() > 0 {
			if budget := perTry * time.Duration(r.GetAttempts()+1); budget > timeout {
				p.add(rp+".retries", "%d retries of %s each, after the first try, need %s, beyond the timeout budget of %s: lower attempts or perTryTimeout, or raise the timeout",
					r.GetAttempts(), perTry, budget, timeout)
			}
		}
		if on := r.GetRetryOn(); on != "" && !retryOn.MatchString(on) {
			p.add(rp+".retries.retryOn", "%q is not a comma-separated list of retry conditions, e.g. 5xx,reset,connect-failure", on)
		}
	}
	validateConnectionPool(&p, rp+".connectionPool", res.GetConnectionPool())
	validateOutlierDetection(&p, rp+".outlierDetection", res.GetOutlierDetection())
	if e := s.GetEgress(); e != nil {
		ep := path + ".egress"
		if e.GetHost() == "" {
			p.add(ep+".host", "is required: the egress gateway's service, e.g. istio-egressgateway.istio-system.svc.cluster.local")
		} else if msgs := content.IsDNS1123Subdomain(e.GetHost()); len(msgs) > 0 {
			p.add(ep+".host", "%q is not a DNS name: %s", e.GetHost(), strings.Join(msgs, "; "))
		}
		if e.GetPort() == 0 || e.GetPort() > 65535 {
			p.add(ep+".port", "is required: the egress gateway's port, 1 to 65535")
		}
	}
	p.oneOf(path+".propagationStrategy", s.GetPropagationStrategy(), strategies, false)
	return p
}

var retryOn = regexp.MustCompile(`^[a-z0-9-]+(,[a-z0-9-]+)*$`)

func checkSidecarHost(p *problems, field, h string) {
	ns, host, ok := strings.Cut(h, "/")
	if !ok || ns == "" || host == "" {
		p.add(field, `%q is not "<namespace>/<host>": write e.g. "payments/*" or "*/api.example.com"`, h)
		return
	}
	if ns != "*" && ns != "." && ns != "~" {
		if msgs := content.IsDNS1123Label(ns); len(msgs) > 0 {
			p.add(field, "%q: namespace %q: %s", h, ns, strings.Join(msgs, "; "))
		}
	}
	if host != "*" {
		if msgs := content.IsDNS1123Subdomain(strings.TrimPrefix(host, "*.")); len(msgs) > 0 {
			p.add(field, "%q: host %q: %s", h, host, strings.Join(msgs, "; "))
		}
	}
}

func validateConnectionPool(p *problems, path string, c *pb.ConnectionPool) {
	if c == nil {
		return
	}
	p.nonNegative(path+".maxConnections", c.GetMaxConnections())
	p.nonNegative(path+".http1MaxPendingRequests", c.GetHttp1MaxPendingRequests())
	p.nonNegative(path+".http2MaxRequests", c.GetHttp2MaxRequests())
	p.nonNegative(path+".maxRequestsPerConnection", c.GetMaxRequestsPerConnection())
	p.duration(path+".connectTimeout", c.GetConnectTimeout())
}

func validateOutlierDetection(p *problems, path string, o *pb.OutlierDetection) {
	if o == nil {
		return
	}
	p.nonNegative(path+".consecutive5xxErrors", o.GetConsecutive_5XxErrors())
	p.duration(path+".interval", o.GetInterval())
	p.duration(path+".baseEjectionTime", o.GetBaseEjectionTime())
	if v := o.GetMaxEjectionPercent(); v < 0 || v > 100 {
		p.add(path+".maxEjectionPercent", "%d is not a percentage from 0 to 100", v)
	}
}

// ValidateSecuritySetting checks a security setting at path. GROUP
// authorization is only meaningful inside a group.
func ValidateSecuritySetting(path string, s *pb.SecuritySettingSpec, inGroup bool) []FieldProblem {
	var p problems
	p.oneOf(path+".mtlsMode", s.GetMtlsMode(), MtlsModes, false)
	if a := s.GetAuthorization(); a != nil {
		mp := path + ".authorization.mode"
		p.oneOf(mp, a.GetMode(), AuthorizationModes, true)
		if a.GetMode() == "GROUP" && !inGroup {
			p.add(mp, "GROUP is the namespaces of a security group, so it is only for a SecuritySetting in a group: use WORKSPACE here")
		}
		rules := a.GetRules()
		n := len(rules.GetAllow()) + len(rules.GetDeny())
		switch {
		case a.GetMode() == "RULES" && n == 0:
			p.add(path+".authorization.rules", "mode RULES needs at least one allow or deny rule")
		case a.GetMode() != "RULES" && a.GetMode() != "" && rules != nil:
			p.add(path+".authorization.rules", "rules conflict with mode %s: rules are only read in mode RULES; set mode RULES or remove the rules", a.GetMode())
		}
		for _, side := range []struct {
			name  string
			rules []*pb.AuthorizationRule
		}{{"allow", rules.GetAllow()}, {"deny", rules.GetDeny()}} {
			for i, r := range side.rules {
				rp := index(path+".authorization.rules."+side.name, i)
				for _, f := range []struct{ name, v string }{{"from", r.GetFrom()}, {"to", r.GetTo()}} {
					if f.v == "" {
						p.add(rp+"."+f.name, `is required: the FQN of an organization, tenant or workspace, e.g. "organizations/acme/tenants/shop/workspaces/web"`)
					} else if !scopeFQN.MatchString(f.v) {
						p.add(rp+"."+f.name, `%q is not the FQN of an organization, tenant or workspace, e.g. "organizations/acme/tenants/shop/workspaces/web"`, f.v)
					}
				}
			}
		}
	}
	for i, j := range s.GetJwt() {
		jp := index(path+".jwt", i)
		if j.GetIssuer() == "" {
			p.add(jp+".issuer", "is required: the issuer the JWTs name (iss)")
		}
		if u := j.GetJwksUri(); u == "" {
			p.add(jp+".jwksUri", "is required: where the issuer's keys are, e.g. https://issuer.example.com/.well-known/jwks.json")
		} else if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			p.add(jp+".jwksUri", "%q is not an http(s) URL", u)
		}
	}
	p.oneOf(path+".propagationStrategy", s.GetPropagationStrategy(), strategies, false)
	return p
}

// scopeFQN matches the FQN of an organization, tenant or workspace.
var scopeFQN = regexp.MustCompile(`^organizations/[^/]+(/tenants/[^/]+(/workspaces/[^/]+)?)?$`)

// ValidateServiceRoute checks a ServiceRoute's spec.
func ValidateServiceRoute(s *pb.ServiceRouteSpec) []FieldProblem {
	var p problems
	if _, _, err := splitService(s.GetService()); err != nil {
		p.add("spec.service", "%v", err)
	}
	subsets := map[string]bool{}
	sum, weighted := int32(0), 0
	for i, ss := range s.GetSubsets() {
		sp := index("spec.subsets", i)
		if ss.GetName() == "" {
			p.add(sp+".name", "is required")
		} else if msgs := content.IsDNS1123Label(ss.GetName()); len(msgs) > 0 {
			p.add(sp+".name", "%q: %s", ss.GetName(), strings.Join(msgs, "; "))
		} else if subsets[ss.GetName()] {
			p.add(sp+".name", "%q is used by an earlier subset: give each subset its own name", ss.GetName())
		}
		subsets[ss.GetName()] = true
		if len(ss.GetLabels()) == 0 {
			p.add(sp+".labels", "is required: the pod labels that make the subset, e.g. {version: v1}")
		}
		for _, k := range sortedKeys(ss.GetLabels()) {
			if msgs := content.IsLabelKey(k); len(msgs) > 0 {
				p.add(key(sp+".labels", k), "invalid label key: %s", strings.Join(msgs, "; "))
			}
			if msgs := content.IsLabelValue(ss.GetLabels()[k]); len(msgs) > 0 {
				p.add(key(sp+".labels", k), "invalid label value %q: %s", ss.GetLabels()[k], strings.Join(msgs, "; "))
			}
		}
		if w := ss.GetWeight(); w < 0 || w > 100 {
			p.add(sp+".weight", "%d is not from 0 to 100", w)
		} else if w > 0 {
			weighted++
		}
		sum += ss.GetWeight()
	}
	if weighted > 0 && sum != 100 {
		p.add("spec.subsets", "the weights sum to %d, not 100: make them add up to 100", sum)
	}
	for i, r := range s.GetHttpRoutes() {
		rp := index("spec.httpRoutes", i)
		if r.GetName() != "" {
			if msgs := content.IsDNS1123Label(r.GetName()); len(msgs) > 0 {
				p.add(rp+".name", "%q: %s", r.GetName(), strings.Join(msgs, "; "))
			}
		}
		for j, m := range r.GetMatch() {
			mp := index(rp+".match", j)
			if len(m.GetHeaders()) == 0 && m.GetPathPrefix() == "" {
				p.add(mp, "is empty and would match every request: give headers or a pathPrefix, or drop the match")
			}
			if pp := m.GetPathPrefix(); pp != "" && !strings.HasPrefix(pp, "/") {
				p.add(mp+".pathPrefix", "%q does not start with /", pp)
			}
			for _, h := range sortedKeys(m.GetHeaders()) {
				if msgs := validation.IsHTTPHeaderName(h); len(msgs) > 0 {
					p.add(key(mp+".headers", h), "invalid header name: %s", strings.Join(msgs, "; "))
				}
			}
		}
		if len(r.GetDestination()) == 0 {
			p.add(rp+".destination", "is required: the subsets matched requests go to")
		}
		sum := int32(0)
		for j, d := range r.GetDestination() {
			dp := index(rp+".destination", j)
			if !subsets[d.GetSubset()] {
				known := sortedKeys(subsets)
				p.add(dp+".subset", "unknown subset %q: the subsets are %s", d.GetSubset(), quoteAll(known))
			}
			if w := d.GetWeight(); w < 0 || w > 100 {
				p.add(dp+".weight", "%d is not from 0 to 100", w)
			}
			sum += d.GetWeight()
		}
		if len(r.GetDestination()) > 1 && sum != 100 {
			p.add(rp+".destination", "the weights sum to %d, not 100: make them add up to 100", sum)
		}
	}
	ports := map[uint32]bool{}
	for i, ps := range s.GetPortLevelSettings() {
		pp := index("spec.portLevelSettings", i)
		switch {
		case ps.GetPort() == 0 || ps.GetPort() > 65535:
			p.add(pp+".port", "is required: a port from 1 to 65535")
		case ports[ps.GetPort()]:
			p.add(pp+".port", "port %d has settings earlier in the list: merge them", ps.GetPort())
		}
		ports[ps.GetPort()] = true
		validateConnectionPool(&p, pp+".connectionPool", ps.GetConnectionPool())
		validateOutlierDetection(&p, pp+".outlierDetection", ps.GetOutlierDetection())
	}
	return p
}

// splitService splits "<namespace>/<name>".
func splitService(s string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(s, "/")
	if s == "" {
		return "", "", fmt.Errorf(`is required: "<namespace>/<service name>", e.g. "shop/reviews"`)
	}
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf(`%q is not "<namespace>/<service name>", e.g. "shop/reviews"`, s)
	}
	if msgs := content.IsDNS1123Label(ns); len(msgs) > 0 {
		return "", "", fmt.Errorf("%q: namespace %q: %s", s, ns, strings.Join(msgs, "; "))
	}
	if msgs := content.IsDNS1123Label(name); len(msgs) > 0 {
		return "", "", fmt.Errorf("%q: service %q: %s", s, name, strings.Join(msgs, "; "))
	}
	return ns, name, nil
}

func quoteAll(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}
