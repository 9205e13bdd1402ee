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
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func setup(b *testing.B, kind string) *harness.Plane {
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
	p := harness.Start(b, st)
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: harness.Tenancy("bench")[:1]})); err != nil {
		b.Fatal(err)
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

// BenchmarkApplyAt100PerSecond: open loop at the target rate, 100
// single-object applies a second.
func BenchmarkApplyAt100PerSecond(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			p := setup(b, kind)
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
