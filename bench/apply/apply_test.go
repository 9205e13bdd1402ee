// Package apply benchmarks the management plane's write path end to end: a
// Connect client on a real loopback socket applies one object per request to
// a server (with its central control plane, as `flotilla server` runs)
// backed by SQLite or PostgreSQL. Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 2000x ./bench/apply/
package apply

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/bench/internal/harness"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func setup(b *testing.B, kind string) *harness.Plane { return setupAuth(b, kind, true) }

// setupAuth starts a plane over a new store of kind; with auth, its
// clients are an ordinary user authorized by a policy of some size.
func setupAuth(b *testing.B, kind string, auth bool) *harness.Plane {
	ctx := context.Background()
	var (
		st  store.Store
		err error
	)
	switch kind {
	case "sqlite":
		st, err = sqlite.Open(ctx, filepath.Join(b.TempDir(), "flotilla.db"))
	case "postgres":
		st, err = postgres.Open(ctx, pgtest.NewDatabase(b))
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	start := harness.Start
	if !auth {
		start = harness.StartWithoutAuth
	}
	p := start(b, st)
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: harness.Tenancy("bench")[:1]})); err != nil {
		b.Fatal(err)
	}
	if auth {
		return withPolicy(b, p)
	}
	return p
}

// tenant is a one-object change: tenant name's display name becomes n.
func tenant(name string, n int) *pb.Resource {
	return harness.Resource("Tenant", &pb.Metadata{Name: name, Organization: "acme"}, map[string]any{"displayName": fmt.Sprintf("update %d", n)})
}

func apply(p *harness.Plane, r *pb.Resource) error {
	_, err := p.API.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}}))
	return err
}

// BenchmarkApply: closed loop, each client applying a change to its own
// tenant as fast as it can.
func BenchmarkApply(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/clients=%d", kind, clients), func(b *testing.B) {
				p := setup(b, kind)
				lat := make([]time.Duration, b.N)
				var (
					next atomic.Int64
					wg   sync.WaitGroup
				)
				b.ResetTimer()
				start := time.Now()
				for w := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := int(next.Add(1)) - 1
							if i >= b.N {
								return
							}
							t0 := time.Now()
							if err := apply(p, tenant(fmt.Sprintf("t%d", w), i)); err != nil {
								b.Error(err)
								return
							}
							lat[i] = time.Since(t0)
						}
					}()
				}
				wg.Wait()
				harness.Report(b, lat, time.Since(start), "writes/s")
			})
		}
	}
}

// withPolicy gives the plane a policy of some size (20 tenants, each with
// a team and two bindings) and returns clients of a user who may write the
// bench's tenants through a team's binding on the organization: each write
// is authorized as an ordinary user's would be.
func withPolicy(b *testing.B, p *harness.Plane) *harness.Plane {
	ctx := context.Background()
	var rs []*pb.Resource
	for i := range 20 {
		tn := fmt.Sprintf("team%d", i)
		rs = append(rs,
			harness.Resource("Tenant", &pb.Metadata{Name: fmt.Sprintf("other%d", i), Organization: "acme"}, nil),
			harness.Resource("Team", &pb.Metadata{Name: tn, Organization: "acme"}, map[string]any{"members": []any{fmt.Sprintf("u%d@example.com", i)}}))
	}
	rs = append(rs, harness.Resource("Team", &pb.Metadata{Name: "writers", Organization: "acme"}, map[string]any{"members": []any{"bench@example.com"}}))
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
		b.Fatal(err)
	}
	rs = nil
	for i := range 20 {
		for j, role := range []string{"editor", "reader"} {
			rs = append(rs, harness.Resource("AccessBinding", &pb.Metadata{Name: fmt.Sprintf("b%d-%d", i, j), Organization: "acme"}, map[string]any{
				"target": fmt.Sprintf("organizations/acme/tenants/other%d", i),
				"allow":  []any{map[string]any{"role": role, "subjects": []any{fmt.Sprintf("team:team%d", i)}}}}))
		}
	}
	rs = append(rs, harness.Resource("AccessBinding", &pb.Metadata{Name: "writers", Organization: "acme"}, map[string]any{
		"target": "organizations/acme", "allow": []any{map[string]any{"role": "editor", "subjects": []any{"team:writers"}}}}))
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
		b.Fatal(err)
	}
	tok, _, err := p.Auth.Issuer.Mint(authn.Principal{Subject: "user:bench@example.com", Method: authn.MethodOIDC}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	return p.As(tok)
}

// BenchmarkApplyAt100PerSecond: open loop at the target rate, 100
// single-object applies a second; with authentication and authorization
// (an ordinary user, allowed through a team's binding) and without
// (--insecure-no-auth).
func BenchmarkApplyAt100PerSecond(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		for _, auth := range []string{"on", "off"} {
			b.Run(kind+"/auth="+auth, func(b *testing.B) {
				p := setupAuth(b, kind, auth == "on")
				lat := make([]time.Duration, b.N)
				var wg sync.WaitGroup
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				b.ResetTimer()
				start := time.Now()
				for i := range b.N {
					<-tick.C
					wg.Add(1)
					go func() {
						defer wg.Done()
						t0 := time.Now()
						if err := apply(p, tenant(fmt.Sprintf("t%d", i%4), i)); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}()
				}
				wg.Wait()
				harness.Report(b, lat, time.Since(start), "writes/s")
			})
		}
	}
}

// BenchmarkApplyInAGroup: one client changes an IngressGateway that ten
// clusters' groups select, so each write also makes the central control
// plane update its index, rehash ten bundles and send them (no agents are
// connected: the bundles wait for them).
func BenchmarkApplyInAGroup(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			p := setup(b, kind)
			intent := harness.Tenancy("bench")
			for c := range 10 {
				intent = append(intent, harness.Resource("Cluster", &pb.Metadata{Name: fmt.Sprintf("c%d", c), Organization: "acme"}, nil))
			}
			if _, err := p.API.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: intent})); err != nil {
				b.Fatal(err)
			}
			harness.Measure(b, func(i int) time.Duration {
				t0 := time.Now()
				if err := apply(p, harness.Gateway(fmt.Sprintf("h%d.example.com", i), "bench")); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			})
		})
	}
}
