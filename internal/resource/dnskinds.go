package resource

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb"
	"flotilla.io/flotilla/internal/store"
)

// The GSLB kinds: the DNS zones an organization lets Flotilla publish in,
// and the hostnames its workspaces publish there.
const (
	KindDNSZone      = gslb.KindDNSZone
	KindDNSRecordSet = gslb.KindDNSRecordSet
)

func dnsKinds() []*Kind {
	return []*Kind{{
		Name: KindDNSZone, Plural: "dnszones", Short: []string{"zone"}, Parent: KindOrganization,
		NewSpec:  func() proto.Message { return &pb.DNSZoneSpec{} },
		Validate: validateDNSZone,
	}, {
		Name: KindDNSRecordSet, Plural: "dnsrecordsets", Short: []string{"dns"}, Parent: KindWorkspace,
		NewSpec:   func() proto.Message { return &pb.DNSRecordSetSpec{} },
		Validate:  validateDNSRecordSet,
		CheckRefs: checkDNSRecordSet,
	}}
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

func validateDNSRecordSet(spec proto.Message) []FieldError {
	s := spec.(*pb.DNSRecordSetSpec)
	out := dnsName("spec.hostname", s.GetHostname())
	if s.GetTtl() == 0 {
		out = append(out, FieldError{Field: "spec.ttl", Message: "is 0 or missing: give the answers' time to live in seconds, 1 or more (e.g. 30)"})
	}
	if len(s.GetEntryPoints()) == 0 {
		out = append(out, FieldError{Field: "spec.entryPoints", Message: "is required: list the addresses that serve the hostname, with their clusters"})
	}
	for i, e := range s.GetEntryPoints() {
		p := "spec.entryPoints[" + strconv.Itoa(i) + "]"
		if e.GetCluster() == "" {
			out = append(out, FieldError{Field: p + ".cluster", Message: "is required: the cluster the entry point is in"})
		}
		if _, err := netip.ParseAddr(e.GetAddress()); err != nil {
			out = append(out, FieldError{Field: p + ".address", Message: fmt.Sprintf("%q is not an IP address", e.GetAddress())})
		}
		if e.GetWeight() > 255 {
			out = append(out, FieldError{Field: p + ".weight", Message: fmt.Sprintf("%d is out of range: use 1..255 (drain a cluster with `flotilla cluster drain` to take it out)", e.GetWeight())})
		}
	}
	if hc := s.GetHealthCheck(); hc != nil {
		p := "spec.healthCheck"
		if hc.GetPath() == "" || hc.GetPort() == 0 {
			out = append(out, FieldError{Field: p, Message: `has no target: give the probe's path and port, e.g. {path: /healthz, port: 8080}`})
		}
		if hc.GetPath() != "" && !strings.HasPrefix(hc.GetPath(), "/") {
			out = append(out, FieldError{Field: p + ".path", Message: fmt.Sprintf("%q does not start with /", hc.GetPath())})
		}
		if hc.GetPort() > 65535 {
			out = append(out, FieldError{Field: p + ".port", Message: fmt.Sprintf("%d is not a port", hc.GetPort())})
		}
		for _, d := range []struct{ name, v string }{{"interval", hc.GetInterval()}, {"timeout", hc.GetTimeout()}} {
			if d.v == "" {
				continue
			}
			if v, err := time.ParseDuration(d.v); err != nil || v < 100*time.Millisecond {
				out = append(out, FieldError{Field: p + "." + d.name, Message: fmt.Sprintf("%q is not a duration of 100ms or more, e.g. 2s", d.v)})
			}
		}
	}
	return out
}

// checkDNSRecordSet: a DNSZone of the organization that lets the record
// set's tenant publish covers the hostname, and no other record set of the
// organization publishes it.
func checkDNSRecordSet(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	s := obj.Spec.(*pb.DNSRecordSetSpec)
	host := gslb.Fqdn(s.GetHostname())
	org := fqn(nil, obj.Parents[0].Kind, obj.Parents[0].Name)
	tenant := obj.Parents[1].Name
	zones, err := r.List(ctx, store.Query{Kind: KindDNSZone, Parent: org})
	if err != nil {
		return nil, err
	}
	var names []string
	covered, allowed := false, false
	for _, z := range zones {
		spec := &pb.DNSZoneSpec{}
		if err := protojson.Unmarshal(z.Spec, spec); err != nil {
			return nil, fmt.Errorf("stored %s: %w", z.FQN, err)
		}
		names = append(names, spec.GetZone())
		if !gslb.InZone(host, gslb.Fqdn(spec.GetZone())) {
			continue
		}
		covered = true
		if len(spec.GetTenants()) == 0 || contains(spec.GetTenants(), tenant) {
			allowed = true
		}
	}
	var out []FieldError
	switch {
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
		if gslb.Fqdn(spec.GetHostname()) == host {
			out = append(out, FieldError{Field: "spec.hostname", Message: fmt.Sprintf("%q is already published by %s: a hostname has one owner; change that one instead", s.GetHostname(), o.FQN)})
		}
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
