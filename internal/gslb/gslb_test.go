package gslb

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func TestAnswersHoldTheHealthyEntryPointsOrAllWhenNoneIs(t *testing.T) {
	rs, err := NewRecordSet("rs", &pb.DNSRecordSetSpec{Hostname: "Shop.Apps.Example.com", Ttl: 30,
		EntryPoints: []*pb.EntryPoint{{Cluster: "c2", Address: "10.0.0.2"}, {Cluster: "c1", Address: "10.0.0.1"}},
		HealthCheck: &pb.HealthCheck{Path: "/healthz", Port: 80}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Zones: []string{"apps.example.com."}, Records: map[string]RecordSet{rs.Hostname: rs}}
	down := map[string]bool{}
	healthy := func(tg Target) bool { return !down[tg.Address.String()] }
	check := func(name string, want []string, wantAuth, wantFound bool) {
		t.Helper()
		addrs, ttl, auth, found := cfg.Answer(name, healthy)
		var got []string
		for _, a := range addrs {
			got = append(got, a.String())
		}
		if !slices.Equal(got, want) || auth != wantAuth || found != wantFound || found && ttl != 30 {
			t.Fatalf("%s: %v ttl %d auth %v found %v; want %v %v %v", name, got, ttl, auth, found, want, wantAuth, wantFound)
		}
	}
	check("shop.apps.example.com", []string{"10.0.0.1", "10.0.0.2"}, true, true)
	check("SHOP.apps.example.com.", []string{"10.0.0.1", "10.0.0.2"}, true, true)
	down["10.0.0.2"] = true
	check("shop.apps.example.com", []string{"10.0.0.1"}, true, true)
	down["10.0.0.1"] = true
	check("shop.apps.example.com", []string{"10.0.0.1", "10.0.0.2"}, true, true) // none healthy: all
	// A drained cluster's entry point leaves the answers whatever its
	// health; when every cluster is drained, all are answered.
	down = map[string]bool{}
	cfg.Records[rs.Hostname].EntryPoints[0].Drained = true // c2, 10.0.0.2
	check("shop.apps.example.com", []string{"10.0.0.1"}, true, true)
	down["10.0.0.1"] = true
	check("shop.apps.example.com", []string{"10.0.0.1"}, true, true)
	cfg.Records[rs.Hostname].EntryPoints[1].Drained = true
	check("shop.apps.example.com", []string{"10.0.0.1", "10.0.0.2"}, true, true)
	check("other.apps.example.com", nil, true, false)
	check("apps.example.org", nil, false, false)
	check("xapps.example.com", nil, false, false)
}

// The checker probes a passing entry point, turns it unhealthy after
// UnhealthyThreshold failed probes in a row and healthy again after
// HealthyThreshold good ones, against a real HTTP server.
func TestTheCheckerFollowsItsThresholds(t *testing.T) {
	var failing atomic.Bool
	var failed, passed atomic.Int32  // probes answered since the last switch
	seen := make(chan struct{}, 100) // a passing probe reached the endpoint
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() || r.URL.Path != "/healthz" || r.Host != "shop.example.com" {
			failed.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		passed.Add(1)
		select {
		case seen <- struct{}{}:
		default:
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	addr := ln.Addr().(*net.TCPAddr)
	ip, _ := netip.AddrFromSlice(addr.IP.To4())
	changes := make(chan bool, 10)
	c := NewChecker(loopbackAllowed, func(_ Target, healthy bool) { changes <- healthy })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rs := RecordSet{FQN: "rs", Hostname: "shop.example.com.", EntryPoints: []EntryPoint{{Cluster: "c1", Address: ip}},
		Check: &Check{Path: "/healthz", Port: uint32(addr.Port), Interval: 50 * time.Millisecond, Timeout: time.Second, UnhealthyThreshold: 3, HealthyThreshold: 2}}
	c.Sync(ctx, Config{Records: map[string]RecordSet{rs.Hostname: rs}})
	tg := Target{Record: "rs", Address: ip}
	// An entry point counts as healthy before its first probe, so wait for
	// the endpoint to see two probes: the loop records a result before it
	// makes the next probe, so the first one's is in.
	for i := range 2 {
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
			t.Fatalf("the endpoint saw %d probes, want 2", i)
		}
	}
	if st, ok := c.State(tg); !ok || !st.Healthy || st.Last.IsZero() || st.Error != "" || st.Refused != "" {
		t.Fatalf("state after passing probes %+v %v, want healthy and probed", st, ok)
	}
	failed.Store(0)
	failing.Store(true)
	select {
	case h := <-changes:
		if h {
			t.Fatal("turned healthy, want unhealthy")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("never turned unhealthy")
	}
	if n := failed.Load(); n < 3 {
		t.Fatalf("unhealthy after %d failed probes; the threshold is 3", n)
	}
	if st, ok := c.State(tg); !ok || st.Healthy || st.Error != "HTTP 503" {
		t.Fatalf("state %+v %v", st, ok)
	}
	passed.Store(0)
	failing.Store(false)
	select {
	case h := <-changes:
		if !h {
			t.Fatal("turned unhealthy again, want healthy")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("never turned healthy again")
	}
	if n := passed.Load(); n < 2 {
		t.Fatalf("healthy again after %d passed probes; the threshold is 2", n)
	}
	if st, _ := c.State(tg); len(st.History) != 2 || st.History[0].Healthy || st.History[0].Error != "HTTP 503" || !st.History[1].Healthy {
		t.Fatalf("history %+v, want out (HTTP 503) then back", st.History)
	}
	// A record set that goes away stops being probed and forgets its state.
	c.Sync(ctx, Config{Records: map[string]RecordSet{}})
	if _, ok := c.State(tg); ok {
		t.Fatal("state kept for a removed record set")
	}
}

// A weighted record set answers one address per query, chosen in
// proportion to the weights of the addresses in the answer; equal weights
// (or none) are not weighted.
func TestWeightedRecordSetsPickByWeight(t *testing.T) {
	spec := &pb.DNSRecordSetSpec{Hostname: "shop.apps.example.com", Ttl: 30,
		EntryPoints: []*pb.EntryPoint{{Cluster: "c1", Address: "10.0.0.1", Weight: 3}, {Cluster: "c2", Address: "10.0.0.2"}, {Cluster: "c3", Address: "10.0.0.3", Weight: 4}}}
	rs, err := NewRecordSet("rs", spec)
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Weighted() {
		t.Fatal("weights 3, 1, 4 are not weighted")
	}
	a1, a2, a3 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	counts := map[netip.Addr]int{}
	const n = 800
	for i := range n {
		counts[rs.Pick([]netip.Addr{a1, a2, a3}, (float64(i)+0.5)/n)]++
	}
	if counts[a1] != 300 || counts[a2] != 100 || counts[a3] != 400 {
		t.Fatalf("picks over a uniform sweep %v, want 300/100/400", counts)
	}
	// Only the addresses in the answer count: with c3 out, 3:1.
	counts = map[netip.Addr]int{}
	for i := range n {
		counts[rs.Pick([]netip.Addr{a1, a2}, (float64(i)+0.5)/n)]++
	}
	if counts[a1] != 600 || counts[a2] != 200 {
		t.Fatalf("picks without c3 %v, want 600/200", counts)
	}
	for _, e := range spec.EntryPoints {
		e.Weight = 5
	}
	if rs, _ = NewRecordSet("rs", spec); rs.Weighted() {
		t.Fatal("equal weights are weighted")
	}
	spec.EntryPoints = spec.EntryPoints[:1]
	if rs, _ = NewRecordSet("rs", spec); rs.Weighted() {
		t.Fatal("one entry point is weighted")
	}
}
