package resource

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/store"
)

// The GSLB kinds: the DNS zones an organization lets Flotilla publish in,
// and the hostnames its workspaces publish there.
const (
	KindDNSZone      = rule.KindDNSZone
	KindDNSRecordSet = rule.KindDNSRecordSet
)

func dnsKinds() []*Kind {
	return []*Kind{{
		Name: KindDNSZone, Plural: "dnszones", Short: []string{"zone"}, Parent: KindOrganization,
		NewSpec:   func() proto.Message { return &pb.DNSZoneSpec{} },
		Validate:  validateDNSZone,
		CheckRefs: checkDNSZone,
	}, dnsRecordSetKind(rule.Probes{})}
}

func dnsRecordSetKind(p rule.Probes) *Kind {
	return &Kind{
		Name: KindDNSRecordSet, Plural: "dnsrecordsets", Short: []string{"dns"}, Parent: KindWorkspace,
		NewSpec:   func() proto.Message { return &pb.DNSRecordSetSpec{} },
		Validate:  func(spec proto.Message) []FieldError { return validateDNSRecordSet(p, spec) },
		CheckRefs: checkDNSRecordSet,
	}
}

// WithGSLBProbes returns a registry like r whose DNSRecordSets' health
// checks may reach what p allows: the ranges of flotilla server
// --gslb-allow-cidr, and never the server host's own addresses unless a
// range covers them. r itself is unchanged; the registry of Builtin allows
// no range.
func (r *Registry) WithGSLBProbes(p rule.Probes) *Registry {
	kinds := r.Kinds()
	for i, k := range kinds {
		if k.Name == KindDNSRecordSet {
			kinds[i] = dnsRecordSetKind(p)
		}
	}
	return NewRegistry(kinds...)
}

func dnsName(field, v string) []FieldError {
	if v == "" {
		return []FieldError{{Field: field, Message: "is required: a DNS name, e.g. apps.example.com"}}
	}
	var out []FieldError
	for _, m := range validation.IsDNS1123Subdomain(strings.TrimSuffix(strings.ToLower(v), ".")) {
		out = append(out, FieldError{Field: field, Message: fmt.Sprintf("%q is not a DNS name: %s", v, m)})
	}
	return out
}

func validateDNSZone(spec proto.Message) []FieldError {
	s := spec.(*pb.DNSZoneSpec)
	out := dnsName("spec.zone", s.GetZone())
	switch s.GetProvider() {
	case "BUILTIN":
		if s.GetRfc2136() != nil {
			out = append(out, FieldError{Field: "spec.rfc2136", Message: "is only for provider RFC2136: remove it, or set the provider"})
		}
	case "RFC2136":
		r := s.GetRfc2136()
		if _, port, err := net.SplitHostPort(r.GetServer()); err != nil || port == "" {
			out = append(out, FieldError{Field: "spec.rfc2136.server", Message: fmt.Sprintf("%q is not host:port: name the zone's primary server, e.g. 10.0.0.53:53", r.GetServer())})
		}
		if r.GetTsigKey() == "" {
			out = append(out, FieldError{Field: "spec.rfc2136.tsigKey", Message: "is required: the name of a TSIG key of flotilla server --dns-tsig-keys that the server accepts for the zone"})
		}
	case "":
		out = append(out, FieldError{Field: "spec.provider", Message: "is required: BUILTIN (Flotilla's own DNS server, flotilla server --dns-listen), RFC2136 or EXTERNAL_DNS"})
	case "EXTERNAL_DNS":
		x := s.GetExternalDns()
		if x.GetKubeconfig() == "" {
			out = append(out, FieldError{Field: "spec.externalDns.kubeconfig", Message: "is required: the NAME of a flotilla server --dns-kubeconfig NAME=FILE, the cluster where external-dns watches DNSEndpoints"})
		}
		if x.GetNamespace() == "" {
			out = append(out, FieldError{Field: "spec.externalDns.namespace", Message: "is required: the namespace for the DNSEndpoint objects"})
		} else {
			for _, m := range validation.IsDNS1123Label(x.GetNamespace()) {
				out = append(out, FieldError{Field: "spec.externalDns.namespace", Message: fmt.Sprintf("%q: %s", x.GetNamespace(), m)})
			}
		}
	default:
		out = append(out, FieldError{Field: "spec.provider", Message: fmt.Sprintf("%q is not a provider: use BUILTIN, RFC2136 or EXTERNAL_DNS", s.GetProvider())})
	}
	for i, t := range s.GetTenants() {
		for _, m := range validation.IsDNS1123Label(t) {
			out = append(out, FieldError{Field: fmt.Sprintf("spec.tenants[%d]", i), Message: fmt.Sprintf("%q is not a tenant name: %s", t, m)})
		}
	}
	return out
}

// validateDNSRecordSet checks a record set alone; entry points that its
// health check would reach must not be of a class p refuses.
func validateDNSRecordSet(p rule.Probes, spec proto.Message) []FieldError {
	s := spec.(*pb.DNSRecordSetSpec)
	out := dnsName("spec.hostname", s.GetHostname())
	if s.GetTtl() == 0 {
		out = append(out, FieldError{Field: "spec.ttl", Message: "is 0 or missing: give the answers' time to live in seconds, 1 or more (e.g. 30)"})
	}
	if len(s.GetEntryPoints()) == 0 {
		out = append(out, FieldError{Field: "spec.entryPoints", Message: "is required: list the addresses that serve the hostname, with their clusters"})
	}
	for i, e := range s.GetEntryPoints() {
		f := "spec.entryPoints[" + strconv.Itoa(i) + "]"
		if e.GetCluster() == "" {
			out = append(out, FieldError{Field: f + ".cluster", Message: "is required: the cluster the entry point is in"})
		}
		if a, err := netip.ParseAddr(e.GetAddress()); err != nil {
			out = append(out, FieldError{Field: f + ".address", Message: fmt.Sprintf("%q is not an IP address", e.GetAddress())})
		} else if why := p.Refused(a); why != "" && s.GetHealthCheck() != nil {
			out = append(out, FieldError{Field: f + ".address", Message: fmt.Sprintf("%s is %s, where the server sends no health check: use the address the cluster's gateway reports (its LoadBalancer address or flotilla.io/external-address), or ask the operator to allow it with flotilla server --gslb-allow-cidr", e.GetAddress(), why)})
		}
		if e.GetWeight() > 255 {
			out = append(out, FieldError{Field: f + ".weight", Message: fmt.Sprintf("%d is out of range: use 1..255 (drain a cluster with `flotilla cluster drain` to take it out)", e.GetWeight())})
		}
	}
	if hc := s.GetHealthCheck(); hc != nil {
		f := "spec.healthCheck"
		if hc.GetPath() == "" || hc.GetPort() == 0 {
			out = append(out, FieldError{Field: f, Message: `has no target: give the probe's path and port, e.g. {path: /healthz, port: 8080}`})
		}
		if hc.GetPath() != "" && !strings.HasPrefix(hc.GetPath(), "/") {
			out = append(out, FieldError{Field: f + ".path", Message: fmt.Sprintf("%q does not start with /", hc.GetPath())})
		}
		if hc.GetPort() > 65535 {
			out = append(out, FieldError{Field: f + ".port", Message: fmt.Sprintf("%d is not a port", hc.GetPort())})
		}
		for _, d := range []struct{ name, v string }{{"interval", hc.GetInterval()}, {"timeout", hc.GetTimeout()}} {
			if d.v == "" {
				continue
			}
			if v, err := time.ParseDuration(d.v); err != nil || v < 100*time.Millisecond {
				out = append(out, FieldError{Field: f + "." + d.name, Message: fmt.Sprintf("%q is not a duration of 100ms or more, e.g. 2s", d.v)})
			}
		}
	}
	return out
}

// zoneClaims reads every organization's DNSZones as claims on their
// names, with their specs by FQN.
func zoneClaims(ctx context.Context, r store.Reader) ([]rule.Claim, map[string]*pb.DNSZoneSpec, error) {
	zones, err := r.List(ctx, store.Query{Kind: KindDNSZone})
	if err != nil {
		return nil, nil, err
	}
	claims := make([]rule.Claim, 0, len(zones))
	specs := make(map[string]*pb.DNSZoneSpec, len(zones))
	for _, z := range zones {
		spec := &pb.DNSZoneSpec{}
		if err := protojson.Unmarshal(z.Spec, spec); err != nil {
			return nil, nil, fmt.Errorf("stored %s: %w", z.FQN, err)
		}
		specs[z.FQN] = spec
		claims = append(claims, rule.Claim{FQN: z.FQN, Org: z.Parent, Zone: rule.Fqdn(spec.GetZone()), Created: z.CreateTime})
	}
	return claims, specs, nil
}

// checkDNSZone: a zone has one owning organization, so no other
// organization's zone is the same, inside it, or around it. The words
// never name that organization, nor its zone.
func checkDNSZone(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	s := obj.Spec.(*pb.DNSZoneSpec)
	zone, org := rule.Fqdn(s.GetZone()), obj.ParentFQN()
	claims, _, err := zoneClaims(ctx, r)
	if err != nil {
		return nil, err
	}
	for _, c := range claims {
		if c.Org == org || !rule.Overlap(zone, c.Zone) {
			continue
		}
		var msg string
		switch {
		case c.Zone == zone:
			msg = "%s is already managed by another organization: a DNS name has one owning organization; use a zone delegated to yours alone (e.g. a subdomain of it), or ask the operator"
		case rule.InZone(zone, c.Zone):
			msg = "%s lies inside a zone another organization manages: a DNS name has one owning organization; use a zone delegated to yours alone, or ask the operator"
		default:
			msg = "%s contains a zone another organization manages: a DNS name has one owning organization; use a narrower zone, delegated to yours alone"
		}
		return []FieldError{{Field: "spec.zone", Message: fmt.Sprintf(msg, strings.TrimSuffix(zone, "."))}}, nil
	}
	return nil, nil
}

// checkDNSRecordSet: a DNSZone that the organization owns and that lets
// the record set's tenant publish covers the hostname, and no other record
// set of the organization publishes it. The words name only what the
// caller's own workspace holds.
func checkDNSRecordSet(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	s := obj.Spec.(*pb.DNSRecordSetSpec)
	host := rule.Fqdn(s.GetHostname())
	org := fqn(nil, obj.Parents[0].Kind, obj.Parents[0].Name)
	tenant := obj.Parents[1].Name
	tenantFQN := fqn(obj.Parents[:1], obj.Parents[1].Kind, tenant)
	claims, specs, err := zoneClaims(ctx, r)
	if err != nil {
		return nil, err
	}
	owned, _ := rule.Owners(claims)
	var names []string
	covered, allowed, lost := false, false, false
	for _, c := range claims {
		if c.Org != org {
			continue
		}
		spec := specs[c.FQN]
		names = append(names, spec.GetZone())
		if !rule.InZone(host, c.Zone) {
			continue
		}
		if !slices.ContainsFunc(owned, func(o rule.Claim) bool { return o.FQN == c.FQN }) {
			lost = true // another organization's older zone overlaps it
			continue
		}
		covered = true
		if len(spec.GetTenants()) == 0 || contains(spec.GetTenants(), tenant) {
			allowed = true
		}
	}
	var out []FieldError
	switch {
	case !covered && lost:
		out = append(out, FieldError{Field: "spec.hostname", Message: fmt.Sprintf("%q is in a zone another organization manages: a DNS name has one owning organization; use a name in a zone your organization owns alone", s.GetHostname())})
	case !covered:
		out = append(out, FieldError{Field: "spec.hostname", Message: fmt.Sprintf("%q is in no zone Flotilla may manage for organization %s (zones: %s): add a DNSZone for it, or use a name in one of those",
			s.GetHostname(), org, orNone(names))})
	case !allowed:
		out = append(out, FieldError{Field: "spec.hostname", Message: fmt.Sprintf("tenant %s may not publish in the zone of %q: ask for it to be added to the DNSZone's tenants", tenant, s.GetHostname())})
	}
	others, err := r.List(ctx, store.Query{Kind: KindDNSRecordSet, Ancestor: org})
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.FQN == obj.FQN() {
			continue
		}
		spec := &pb.DNSRecordSetSpec{}
		if err := protojson.Unmarshal(o.Spec, spec); err != nil {
			return nil, fmt.Errorf("stored %s: %w", o.FQN, err)
		}
		if rule.Fqdn(spec.GetHostname()) != host {
			continue
		}
		who, fix := "another tenant's record set", "use another hostname"
		switch {
		case o.Parent == obj.ParentFQN():
			who, fix = o.FQN, "change that one instead"
		case strings.HasPrefix(o.Parent, tenantFQN+"/"):
			who, fix = "a record set of another workspace of tenant "+tenant, "change that one instead, or use another hostname"
		}
		out = append(out, FieldError{Field: "spec.hostname", Message: fmt.Sprintf("%q is already published by %s: a hostname has one owner; %s", s.GetHostname(), who, fix)})
	}
	return out, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
