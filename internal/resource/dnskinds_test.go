package resource

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// The GSLB kinds' own checks, each case's first violation by field and
// words.
func TestDNSZonesAndRecordSetsAreCheckedOnTheirOwn(t *testing.T) {
	reg := Builtin()
	zone := &pb.Metadata{Name: "apps", Organization: "acme"}
	set := &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t", Workspace: "w"}
	ep := []any{map[string]any{"cluster": "c1", "address": "10.0.0.1"}}
	for _, tc := range []struct {
		name        string
		kind        string
		md          *pb.Metadata
		spec        map[string]any
		field, want string // "" when valid
	}{
		{"a builtin zone", KindDNSZone, zone, map[string]any{"zone": "apps.example.com", "provider": "BUILTIN"}, "", ""},
		{"no provider", KindDNSZone, zone, map[string]any{"zone": "apps.example.com"}, "spec.provider", "is required"},
		{"an unknown provider", KindDNSZone, zone, map[string]any{"zone": "apps.example.com", "provider": "ROUTE53"}, "spec.provider", "is not a provider"},
		{"a bad zone name", KindDNSZone, zone, map[string]any{"zone": "Apps_Example", "provider": "BUILTIN"}, "spec.zone", "is not a DNS name"},
		{"rfc2136 without a server", KindDNSZone, zone, map[string]any{"zone": "a.example.com", "provider": "RFC2136", "rfc2136": map[string]any{"tsigKey": "k"}}, "spec.rfc2136.server", "is not host:port"},
		{"rfc2136 without a key", KindDNSZone, zone, map[string]any{"zone": "a.example.com", "provider": "RFC2136", "rfc2136": map[string]any{"server": "10.0.0.53:53"}}, "spec.rfc2136.tsigKey", "is required"},
		{"rfc2136 settings on a builtin zone", KindDNSZone, zone, map[string]any{"zone": "a.example.com", "provider": "BUILTIN", "rfc2136": map[string]any{"server": "10.0.0.53:53"}}, "spec.rfc2136", "only for provider RFC2136"},
		{"external-dns without a namespace", KindDNSZone, zone, map[string]any{"zone": "a.example.com", "provider": "EXTERNAL_DNS", "externalDns": map[string]any{"kubeconfig": "dns"}}, "spec.externalDns.namespace", "is required"},
		{"a record set", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 30, "entryPoints": ep}, "", ""},
		{"a TTL of 0", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 0, "entryPoints": ep}, "spec.ttl", "is 0 or missing"},
		{"a health check without a target", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 30, "entryPoints": ep, "healthCheck": map[string]any{"interval": "2s"}}, "spec.healthCheck", "has no target"},
		{"a too short interval", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 30, "entryPoints": ep, "healthCheck": map[string]any{"path": "/h", "port": 80, "interval": "1ms"}}, "spec.healthCheck.interval", "100ms or more"},
		{"no entry points", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 30}, "spec.entryPoints", "is required"},
		{"a bad address", KindDNSRecordSet, set, map[string]any{"hostname": "shop.apps.example.com", "ttl": 30, "entryPoints": []any{map[string]any{"cluster": "c1", "address": "ten"}}}, "spec.entryPoints[0].address", "is not an IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := structpb.NewStruct(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			_, vs := reg.Parse(0, &pb.Resource{ApiVersion: APIVersion, Kind: tc.kind, Metadata: tc.md, Spec: spec})
			if tc.field == "" {
				if len(vs) != 0 {
					t.Fatalf("violations %v, want none", vs)
				}
				return
			}
			if len(vs) == 0 || vs[0].Field != tc.field || !strings.Contains(vs[0].Message, tc.want) {
				t.Fatalf("violations %+v, want the first at %s saying %q", vs, tc.field, tc.want)
			}
		})
	}
}
