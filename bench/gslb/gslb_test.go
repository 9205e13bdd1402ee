// Package gslb measures DNS failover: the time from an entry point's health
// endpoint dying until the built-in DNS server's answers exclude it, with
// the default health check (a probe every 2 s, 1 s timeout, out after 2
// failures in a row). A server (the real plane with --dns-listen, SQLite)
// publishes one hostname with two entry points, each a real HTTP health
// endpoint on its own loopback address; each round closes the second one's
// endpoint at a random point of the probe interval, then asks the DNS server every 10 ms (a real UDP query) until
// the answer holds only the first, then restores it and waits for it to be
// back.
//
// Results are in docs/benchmarks.md. Target: ≤ 5 s.
//
//	go test -run '^$' -bench . -benchtime 20x ./bench/gslb/
package gslb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/miekg/dns"

	"flotilla.io/flotilla/bench/internal/harness"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func serve(b *testing.B, addr string) *http.Server {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

func answers(dnsAddr string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion("shop.apps.example.com.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, dnsAddr)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out, nil
}

func BenchmarkDNSFailover(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "flotilla.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	dnsAddr := ln.LocalAddr().String()
	ln.Close()
	p := harness.StartWithDNS(b, st, dnsAddr)
	port := freeOnBoth(b)
	first := serve(b, "127.0.21.1:"+port)
	defer first.Close()
	second := serve(b, "127.0.21.2:"+port)
	md := func(name string, parents ...string) *pb.Metadata {
		m := &pb.Metadata{Name: name}
		for i, v := range parents {
			switch i {
			case 0:
				m.Organization = v
			case 1:
				m.Tenant = v
			case 2:
				m.Workspace = v
			}
		}
		return m
	}
	_, err = p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{
		harness.Resource("Organization", md("acme"), nil),
		harness.Resource("Tenant", md("t", "acme"), nil),
		harness.Resource("Workspace", md("w", "acme", "t"), map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/shop"}}}),
		harness.Resource("DNSZone", md("apps", "acme"), map[string]any{"zone": "apps.example.com", "provider": "BUILTIN"}),
		harness.Resource("DNSRecordSet", md("shop", "acme", "t", "w"), map[string]any{
			"hostname": "shop.apps.example.com", "ttl": 5,
			"entryPoints": []any{map[string]any{"cluster": "c1", "address": "127.0.21.1"}, map[string]any{"cluster": "c2", "address": "127.0.21.2"}},
			"healthCheck": map[string]any{"path": "/healthz", "port": mustAtoi(port)},
		}),
	}}))
	if err != nil {
		b.Fatal(err)
	}
	both := []string{"127.0.21.1", "127.0.21.2"}
	wait := func(want []string, limit time.Duration) time.Duration {
		start := time.Now()
		for time.Since(start) < limit {
			if got, err := answers(dnsAddr); err == nil && slices.Equal(got, want) {
				return time.Since(start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Fatalf("answers not %v within %v", want, limit)
		return 0
	}
	wait(both, 30*time.Second)
	rng := rand.New(rand.NewPCG(1, 2))
	harness.Measure(b, func(int) time.Duration {
		// Fail at a random point of the probe interval, as a real failure does.
		time.Sleep(time.Duration(rng.Int64N(int64(2 * time.Second))))
		second.Close()
		d := wait([]string{"127.0.21.1"}, 30*time.Second)
		second = serve(b, "127.0.21.2:"+port)
		wait(both, 30*time.Second)
		return d
	})
	second.Close()
}

// freeOnBoth finds a TCP port free on both entry points' addresses (a
// health check names one port).
func freeOnBoth(b *testing.B) string {
	b.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.21.1:0")
		if err != nil {
			b.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ln.Close()
		if ln2, err := net.Listen("tcp", "127.0.21.2:"+port); err == nil {
			ln2.Close()
			return port
		}
	}
	b.Fatal("no port free on both addresses")
	return ""
}

func mustAtoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}
