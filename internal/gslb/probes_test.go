package gslb

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/sqlite"
)

var _ Fleet = (*registry.Registry)(nil)

// loopbackAllowed is the guard of a server run with --gslb-allow-cidr
// 127.0.0.0/8 and no fleet.
var loopbackAllowed = newFleetGuard(rule.Probes{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}).why

// eventually polls f until it returns nil, for at most limit.
func eventually(t *testing.T, limit time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// put stores a record as it is, without the kind registry's checks: as
// data written before a rule existed.
func put(t *testing.T, st store.Store, kind, fqn string, spec any) {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	parent := fqn[:strings.LastIndex(fqn[:strings.LastIndex(fqn, "/")], "/")]
	err = st.Update(context.Background(), "test", func(tx store.Tx) error {
		_, err := tx.Put(context.Background(), store.Record{Kind: kind, FQN: fqn, Name: fqn[strings.LastIndex(fqn, "/")+1:], Parent: parent, Spec: b})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// freeUDP is a loopback address whose port was free a moment ago for UDP
// and TCP both (the DNS server takes both): a UDP port the kernel picks may
// be a TCP connection's source port of another test.
func freeUDP(t *testing.T) string {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		pc.Close()
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no loopback port free for both UDP and TCP in 50 tries")
	return ""
}

// run runs a service over st with the built-in DNS on a loopback port and
// returns it with that address.
func run(t *testing.T, st store.Store, opts Options) (*Service, string) {
	t.Helper()
	addr := freeUDP(t)
	s := New(st, slog.New(slog.NewTextHandler(t.Output(), nil)), addr, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, addr
}

// query asks the DNS server at addr for name's A records.
func query(addr, name string) ([]string, int, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
	if err != nil {
		return nil, 0, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out, r.Rcode, nil
}

// Orgs acme and zzz each hold DNSZone example.com and a record set
// shop.example.com (stored before apply refused the second zone): the
// built-in DNS server answers with the addresses of the organization whose
// zone is older, whichever sorts last, and the other's record set says it
// is not published.
func TestANameIsAnsweredOnlyForTheOrganizationThatOwnsItsZone(t *testing.T) {
	for _, tc := range []struct {
		name        string
		first, then string // organizations, in order of their zones' creation
		want        string // the address answered
	}{
		{"the first organization sorts first", "acme", "zzz", "10.0.0.1"},
		{"the first organization sorts last", "zzz", "acme", "10.9.9.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			addr := map[string]string{"acme": "10.0.0.1", "zzz": "10.9.9.9"}
			for _, org := range []string{tc.first, tc.then} {
				put(t, st, KindDNSZone, "organizations/"+org+"/dnszones/example", map[string]any{"zone": "example.com", "provider": "BUILTIN"})
			}
			for _, org := range []string{tc.first, tc.then} {
				put(t, st, KindDNSRecordSet, "organizations/"+org+"/tenants/t/workspaces/w/dnsrecordsets/shop", map[string]any{
					"hostname": "shop.example.com", "ttl": 30, "entryPoints": []any{map[string]any{"cluster": "c1", "address": addr[org]}}})
			}
			// A name in a zone the second organization holds inside the
			// first's is not its either.
			put(t, st, KindDNSZone, "organizations/"+tc.then+"/dnszones/inner", map[string]any{"zone": "in.example.com", "provider": "BUILTIN"})
			put(t, st, KindDNSRecordSet, "organizations/"+tc.then+"/tenants/t/workspaces/w/dnsrecordsets/inner", map[string]any{
				"hostname": "x.in.example.com", "ttl": 30, "entryPoints": []any{map[string]any{"cluster": "c1", "address": addr[tc.then]}}})
			s, dnsAddr := run(t, st, Options{})
			eventually(t, 10*time.Second, "an answer for shop.example.com", func() error {
				got, rcode, err := query(dnsAddr, "shop.example.com")
				if err == nil && (rcode != dns.RcodeSuccess || !slices.Equal(got, []string{tc.want})) {
					err = fmt.Errorf("answers %v (rcode %s), want [%s]", got, dns.RcodeToString[rcode], tc.want)
				}
				return err
			})
			if got, rcode, err := query(dnsAddr, "x.in.example.com"); err != nil || rcode != dns.RcodeNameError || len(got) != 0 {
				t.Fatalf("x.in.example.com: %v rcode %s %v; want NXDOMAIN from the owner's zone", got, dns.RcodeToString[rcode], err)
			}
			rows := s.Status("organizations/" + tc.then + "/tenants/t/workspaces/w/dnsrecordsets/shop")
			if len(rows) != 1 || rows[0].GetState() != "Failed" || rows[0].GetMessage() != "not published: shop.example.com is in a zone another organization manages" {
				t.Fatalf("status of the second organization's record set %v", rows)
			}
			if rows := s.Status("organizations/" + tc.first + "/tenants/t/workspaces/w/dnsrecordsets/shop"); len(rows) != 1 || rows[0].GetState() != "Applied" {
				t.Fatalf("status of the owner's record set %v", rows)
			}
		})
	}
}

// endpoint is a real HTTP health endpoint on 127.0.0.1 that counts the
// requests it gets.
func endpoint(t *testing.T) (port int, requests *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	requests = &atomic.Int32{}
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { requests.Add(1) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, requests
}

// A record set (stored as it is) checks entry points on 127.0.0.1, where
// a health endpoint listens, and on 169.254.169.254 (cloud metadata). The
// server probes neither without --gslb-allow-cidr, even when the cluster
// reports the loopback address as its own, and its status says why without
// a word of what is there; with 127.0.0.0/8 allowed it probes 127.0.0.1,
// and still not 169.254.169.254.
func TestHealthChecksReachLoopbackAndLinkLocalOnlyInAnAllowedRange(t *testing.T) {
	const fqn = "organizations/acme/tenants/t/workspaces/w/dnsrecordsets/shop"
	for _, tc := range []struct {
		name   string
		allow  []netip.Prefix
		probed bool // 127.0.0.1
	}{
		{"without --gslb-allow-cidr", nil, false},
		{"with --gslb-allow-cidr 127.0.0.0/8", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			port, requests := endpoint(t)
			put(t, st, KindDNSZone, "organizations/acme/dnszones/example", map[string]any{"zone": "example.com", "provider": "BUILTIN"})
			put(t, st, KindDNSRecordSet, fqn, map[string]any{
				"hostname": "shop.example.com", "ttl": 30,
				"entryPoints": []any{map[string]any{"cluster": "c1", "address": "127.0.0.1"}, map[string]any{"cluster": "c2", "address": "169.254.169.254"}},
				"healthCheck": map[string]any{"path": "/healthz", "port": port, "interval": "100ms"}})
			fleet := registry.New()
			if err := fleet.Apply("organizations/acme/clusters/c1", &agentv1.Runtime{Full: true, Seq: 1,
				Services: []*agentv1.ServiceState{{Namespace: "istio-system", Name: "ingressgateway", ExternalAddress: "127.0.0.1"}}}, time.Now()); err != nil {
				t.Fatal(err)
			}
			s, _ := run(t, st, Options{Probes: rule.Probes{Allow: tc.allow}})
			s.UseFleet(fleet)
			rows := func() map[string]string {
				out := map[string]string{}
				for _, r := range s.Status(fqn) {
					out[r.GetCluster()] = r.GetState() + " " + r.GetMessage()
				}
				return out
			}
			metadata := "Failed 169.254.169.254: not probed: a link-local address; in the answers unchecked; allow it with flotilla server --gslb-allow-cidr"
			if tc.probed {
				eventually(t, 10*time.Second, "127.0.0.1 probed and healthy", func() error {
					if r := rows(); requests.Load() == 0 || !strings.HasPrefix(r["c1"], "Applied 127.0.0.1: healthy") || r["c2"] != metadata {
						return fmt.Errorf("%d requests, status %v", requests.Load(), r)
					}
					return nil
				})
				return
			}
			eventually(t, 10*time.Second, "both refused", func() error {
				if r := rows(); r["c1"] != "Failed 127.0.0.1: not probed: a loopback address; in the answers unchecked; allow it with flotilla server --gslb-allow-cidr" || r["c2"] != metadata {
					return fmt.Errorf("status %v", r)
				}
				return nil
			})
			// The guard runs before every probe, so none was made.
			if n := requests.Load(); n != 0 {
				t.Fatalf("the endpoint on 127.0.0.1 got %d requests", n)
			}
		})
	}
}

// An address the fleet reports for the entry point's cluster (a
// Service's external address, the east-west gateway's) may be probed; one
// it does not, one another organization's cluster of the same name
// reports, or one the cluster stopped reporting, may not, unless an
// allowed range covers it.
func TestTheAddressesAClusterReportsMayBeProbed(t *testing.T) {
	fleet := registry.New()
	report := func(cluster string, seq uint64, addrs ...string) {
		t.Helper()
		m := &agentv1.Runtime{Full: true, Seq: seq}
		for i, a := range addrs {
			if i == 0 {
				m.EastWestGateway = &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: a}
				continue
			}
			m.Services = append(m.Services, &agentv1.ServiceState{Namespace: "ingress", Name: fmt.Sprint("gw", i), ExternalAddress: a})
		}
		if err := fleet.Apply(cluster, m, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	acme, zzz := []string{"organizations/acme/clusters/c1"}, []string{"organizations/zzz/clusters/c1"}
	report(acme[0], 1, "10.1.0.8", "10.1.0.7", "lb.example.com")
	report(zzz[0], 1, "10.2.0.8", "10.2.0.7")
	g := newFleetGuard(rule.Probes{})
	a := netip.MustParseAddr
	if why := g.why(a("10.1.0.7"), acme); !strings.Contains(why, "not an external address that cluster c1 reports") {
		t.Fatalf("before the fleet is known: %q", why)
	}
	g.useFleet(fleet)
	for _, tc := range []struct {
		addr     string
		clusters []string
		want     string // "" when it may be probed
	}{
		{"10.1.0.7", acme, ""},
		{"10.1.0.8", acme, ""},
		{"::ffff:10.1.0.8", acme, ""},
		{"10.1.0.9", acme, "not an external address that cluster c1 reports"},
		{"10.2.0.7", acme, "not an external address that cluster c1 reports"},
		{"10.1.0.7", zzz, "not an external address that cluster c1 reports"},
		{"10.2.0.7", []string{"organizations/acme/clusters/c0", "organizations/acme/clusters/c1"}, "cluster c0 or c1 reports"},
	} {
		if why := g.why(a(tc.addr), tc.clusters); tc.want == "" && why != "" || tc.want != "" && !strings.Contains(why, tc.want) {
			t.Errorf("%s of %v: %q, want %q", tc.addr, tc.clusters, why, tc.want)
		}
	}
	report(acme[0], 2, "10.1.0.8", "127.0.0.1")
	if why := g.why(a("10.1.0.7"), acme); why == "" {
		t.Error("10.1.0.7 may still be probed after c1 stopped reporting it")
	}
	if why := g.why(a("127.0.0.1"), acme); why != "a loopback address" {
		t.Errorf("a loopback address c1 reports: %q, want refused", why)
	}
	allowing := newFleetGuard(rule.Probes{Allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}})
	if why := allowing.why(a("10.1.0.9"), acme); why != "" {
		t.Errorf("an address in an allowed range: %q", why)
	}
}

// A record set's entry point counts as unchecked while the guard refuses
// it: its earlier failures do not keep it out of the answers.
func TestARefusedEntryPointIsAnsweredUnchecked(t *testing.T) {
	rs, err := NewRecordSet("rs", &pb.DNSRecordSetSpec{Hostname: "shop.example.com", Ttl: 30,
		EntryPoints: []*pb.EntryPoint{{Cluster: "c1", Address: "127.0.0.1"}}, HealthCheck: &pb.HealthCheck{Path: "/h", Port: 1, Interval: "100ms"}})
	if err != nil {
		t.Fatal(err)
	}
	rs.Check.UnhealthyThreshold = 1
	var refuse atomic.Bool
	changes := make(chan bool, 10)
	c := NewChecker(func(addr netip.Addr, clusters []string) string {
		if refuse.Load() {
			return "refused by the test"
		}
		return loopbackAllowed(addr, clusters)
	}, func(_ Target, healthy bool) { changes <- healthy })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.Sync(ctx, Config{Records: map[string]RecordSet{rs.Hostname: rs}})
	tg := Target{Record: "rs", Address: netip.MustParseAddr("127.0.0.1")}
	wait := func(want bool) {
		t.Helper()
		select {
		case h := <-changes:
			if h != want {
				t.Fatalf("turned healthy=%v, want %v", h, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("never turned healthy=%v", want)
		}
	}
	wait(false) // port 1: nothing listens
	refuse.Store(true)
	wait(true)
	if st, _ := c.State(tg); !st.Healthy || st.Refused != "refused by the test" || st.Error != "" {
		t.Fatalf("state %+v", st)
	}
}
