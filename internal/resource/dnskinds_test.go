package resource

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
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

// A health check's entry points on loopback, link-local (cloud metadata)
// or other addresses the server never probes are refused at apply time,
// unless the server allows a range that covers them (--gslb-allow-cidr);
// without a health check nothing is probed, and nothing is refused.
func TestHealthCheckedEntryPointsMustBeAddressesTheServerMayProbe(t *testing.T) {
	set := &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t", Workspace: "w"}
	parse := func(reg *Registry, addr string, checked bool) []Violation {
		t.Helper()
		m := map[string]any{"hostname": "shop.apps.example.com", "ttl": 30, "entryPoints": []any{
			map[string]any{"cluster": "c1", "address": "10.0.0.1"}, map[string]any{"cluster": "c2", "address": addr}}}
		if checked {
			m["healthCheck"] = map[string]any{"path": "/healthz", "port": 8080}
		}
		spec, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		_, vs := reg.Parse(0, &pb.Resource{ApiVersion: APIVersion, Kind: KindDNSRecordSet, Metadata: set, Spec: spec})
		return vs
	}
	reg := Builtin()
	for addr, class := range map[string]string{"127.0.0.1": "a loopback address", "169.254.169.254": "a link-local address",
		"0.0.0.0": "an unspecified address", "::1": "a loopback address", "224.0.0.251": "a multicast address"} {
		vs := parse(reg, addr, true)
		if len(vs) != 1 || vs[0].Field != "spec.entryPoints[1].address" || !strings.Contains(vs[0].Message, addr+" is "+class+", where the server sends no health check") ||
			!strings.Contains(vs[0].Message, "flotilla server --gslb-allow-cidr") {
			t.Errorf("%s: %+v", addr, vs)
		}
		if vs := parse(reg, addr, false); len(vs) != 0 {
			t.Errorf("%s without a health check: %+v", addr, vs)
		}
	}
	if vs := parse(reg, "203.0.113.7", true); len(vs) != 0 {
		t.Errorf("a public address: %+v", vs)
	}
	allowed := reg.WithGSLBProbes(rule.Probes{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.169.254/32")},
		Own: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("127.0.0.1")}})
	for _, addr := range []string{"127.0.0.1", "127.0.20.1", "169.254.169.254"} {
		if vs := parse(allowed, addr, true); len(vs) != 0 {
			t.Errorf("%s in an allowed range: %+v", addr, vs)
		}
	}
	if vs := parse(allowed, "192.0.2.10", true); len(vs) != 1 || !strings.Contains(vs[0].Message, "192.0.2.10 is an address of the Flotilla server's own host") {
		t.Errorf("the server's own address: %+v", vs)
	}
	if vs := parse(reg, "127.0.0.1", true); len(vs) != 1 {
		t.Errorf("WithGSLBProbes changed the registry it was called on: %+v", vs)
	}
}

// apply writes resources in one transaction as the API does: parsed, then
// checked against the store; with a violation nothing is written.
func apply(t *testing.T, st store.Store, reg *Registry, docs ...*pb.Resource) []Violation {
	t.Helper()
	objs, vs := reg.ParseAll(docs)
	if len(vs) > 0 {
		return vs
	}
	refused := errors.New("refused")
	err := st.Update(context.Background(), "test", func(tx store.Tx) error {
		var err error
		_, vs, _, err = reg.Write(context.Background(), tx, objs, nil)
		if err == nil && len(vs) > 0 {
			err = refused
		}
		return err
	})
	if err != nil && !errors.Is(err, refused) {
		t.Fatal(err)
	}
	return vs
}

func res(t *testing.T, kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	t.Helper()
	s, err := structpb.NewStruct(spec)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.Resource{ApiVersion: APIVersion, Kind: kind, Metadata: md, Spec: s}
}

// A DNS name has one owning organization: once acme manages example.com,
// organization zzz can take neither it, a zone inside it, nor one around
// it, and the refusals never name acme; a record set's hostname taken
// within the organization names only the caller's own workspace's record
// set. On SQLite and on PostgreSQL.
func TestADNSZoneHasOneOwningOrganization(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) store.Store{
		"sqlite": func(t *testing.T) store.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "flotilla.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
		"postgres": func(t *testing.T) store.Store { return pgtest.Fresh(t)(t) },
	} {
		t.Run(name, func(t *testing.T) { testOneOwningOrganization(t, open(t)) })
	}
}

func testOneOwningOrganization(t *testing.T, st store.Store) {
	reg := Builtin()
	org := func(o string) *pb.Metadata { return &pb.Metadata{Name: o} }
	zone := func(o, name, z string) *pb.Resource {
		return res(t, KindDNSZone, &pb.Metadata{Name: name, Organization: o}, map[string]any{"zone": z, "provider": "BUILTIN"})
	}
	recordSet := func(o, tn, ws, name, host string) *pb.Resource {
		return res(t, KindDNSRecordSet, &pb.Metadata{Name: name, Organization: o, Tenant: tn, Workspace: ws},
			map[string]any{"hostname": host, "ttl": 30, "entryPoints": []any{map[string]any{"cluster": "c1", "address": "10.0.0.1"}}})
	}
	tenancy := func(o string) []*pb.Resource {
		var out []*pb.Resource
		out = append(out, res(t, KindOrganization, org(o), nil))
		for _, tn := range []string{"t", "t2"} {
			out = append(out, res(t, KindTenant, &pb.Metadata{Name: tn, Organization: o}, nil))
			for _, ws := range []string{"w", "w2"} {
				out = append(out, res(t, KindWorkspace, &pb.Metadata{Name: ws, Organization: o, Tenant: tn},
					map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + tn + "-" + ws}}}))
			}
		}
		return out
	}
	if vs := apply(t, st, reg, append(tenancy("acme"), zone("acme", "example", "example.com"), recordSet("acme", "t", "w", "shop", "shop.example.com"))...); len(vs) != 0 {
		t.Fatalf("acme: %v", vs)
	}
	if vs := apply(t, st, reg, tenancy("zzz")...); len(vs) != 0 {
		t.Fatalf("zzz: %v", vs)
	}
	refusedZone := func(z, want string) {
		t.Helper()
		vs := apply(t, st, reg, zone("zzz", "mine", z))
		if len(vs) != 1 || vs[0].Field != "spec.zone" || vs[0].Message != want {
			t.Fatalf("zzz's zone %s: %+v, want spec.zone: %s", z, vs, want)
		}
		if strings.Contains(vs[0].Error(), "acme") {
			t.Fatalf("the refusal names the other organization: %s", vs[0].Error())
		}
	}
	refusedZone("example.com", "example.com is already managed by another organization: a DNS name has one owning organization; use a zone delegated to yours alone (e.g. a subdomain of it), or ask the operator")
	refusedZone("EXAMPLE.com.", "example.com is already managed by another organization: a DNS name has one owning organization; use a zone delegated to yours alone (e.g. a subdomain of it), or ask the operator")
	refusedZone("shop.example.com", "shop.example.com lies inside a zone another organization manages: a DNS name has one owning organization; use a zone delegated to yours alone, or ask the operator")
	refusedZone("com", "com contains a zone another organization manages: a DNS name has one owning organization; use a narrower zone, delegated to yours alone")
	// Whole labels: xexample.com is another name.
	if vs := apply(t, st, reg, zone("zzz", "x", "xexample.com"), recordSet("zzz", "t", "w", "shop", "shop.xexample.com")); len(vs) != 0 {
		t.Fatalf("zzz's xexample.com: %v", vs)
	}
	// acme's own zones may nest, and re-applying one changes nothing.
	if vs := apply(t, st, reg, zone("acme", "apps", "apps.example.com"), zone("acme", "example", "example.com")); len(vs) != 0 {
		t.Fatalf("acme's nested zone: %v", vs)
	}
	// zzz's record sets cannot reach into acme's zone.
	if vs := apply(t, st, reg, recordSet("zzz", "t", "w", "steal", "shop.example.com")); len(vs) != 1 || !strings.Contains(vs[0].Message, `"shop.example.com" is in no zone Flotilla may manage for organization organizations/zzz (zones: xexample.com)`) {
		t.Fatalf("zzz's record set in acme's zone: %+v", vs)
	}
	zones, err := st.List(context.Background(), store.Query{Kind: KindDNSZone, Parent: "organizations/zzz"})
	if err != nil || len(zones) != 1 || zones[0].Name != "x" {
		t.Fatalf("zzz's zones %v %v: a refused zone was stored", zones, err)
	}

	// A zone stored before the rule (bypassing it) is not zzz's to
	// publish in: acme's older zone owns the name.
	err = st.Update(context.Background(), "test", func(tx store.Tx) error {
		_, err := tx.Put(context.Background(), store.Record{Kind: KindDNSZone, FQN: "organizations/zzz/dnszones/old", Name: "old", Parent: "organizations/zzz",
			Spec: []byte(`{"zone":"example.com","provider":"BUILTIN"}`)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if vs := apply(t, st, reg, recordSet("zzz", "t", "w", "steal", "www.example.com")); len(vs) != 1 || vs[0].Field != "spec.hostname" ||
		vs[0].Message != `"www.example.com" is in a zone another organization manages: a DNS name has one owning organization; use a name in a zone your organization owns alone` {
		t.Fatalf("zzz's record set in its shadowed zone: %+v", vs)
	}

	// Within acme, the words name the holder only in the caller's own workspace.
	for _, tc := range []struct{ tn, ws, want string }{
		{"t", "w", `"Shop.Example.com" is already published by organizations/acme/tenants/t/workspaces/w/dnsrecordsets/shop: a hostname has one owner; change that one instead`},
		{"t", "w2", `"Shop.Example.com" is already published by a record set of another workspace of tenant t: a hostname has one owner; change that one instead, or use another hostname`},
		{"t2", "w", `"Shop.Example.com" is already published by another tenant's record set: a hostname has one owner; use another hostname`},
	} {
		vs := apply(t, st, reg, recordSet("acme", tc.tn, tc.ws, "again", "Shop.Example.com"))
		if len(vs) != 1 || vs[0].Field != "spec.hostname" || vs[0].Message != tc.want {
			t.Fatalf("tenant %s workspace %s: %+v, want %s", tc.tn, tc.ws, vs, tc.want)
		}
	}
}
