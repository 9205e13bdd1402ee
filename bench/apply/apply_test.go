// Package apply benchmarks the management plane's write path end to end: a
// Connect client on a real loopback socket applies one object per request to
// a server backed by SQLite or PostgreSQL. It reports latency percentiles and
// throughput; results are recorded in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 2000x ./bench/apply/
package apply

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func openStore(b *testing.B, kind string) store.Store {
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
	return st
}

// serve starts a server over st on loopback and returns a client of it.
func serve(b *testing.B, st store.Store) flotillav1alpha1connect.ResourceServiceClient {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := apiserver.New(resource.Builtin(), st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	return flotillav1alpha1connect.NewResourceServiceClient(&http.Client{Transport: transport}, "http://"+ln.Addr().String())
}

func tenant(name string, n int) *pb.Resource {
	spec, _ := structpb.NewStruct(map[string]any{"displayName": fmt.Sprintf("update %d", n)})
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: "Tenant", Metadata: &pb.Metadata{Name: name, Organization: "bench"}, Spec: spec}
}

func setup(b *testing.B, kind string, clients int) flotillav1alpha1connect.ResourceServiceClient {
	c := serve(b, openStore(b, kind))
	org := &pb.Resource{ApiVersion: resource.APIVersion, Kind: "Organization", Metadata: &pb.Metadata{Name: "bench"}}
	if _, err := c.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{org}})); err != nil {
		b.Fatal(err)
	}
	return c
}

// report adds latency percentiles to the benchmark's output.
func report(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "writes/s")
	b.ReportMetric(0, "ns/op") // per-op time is meaningless across concurrent clients
}

// BenchmarkApply: closed loop, each client applying a change to its own
// tenant as fast as it can.
func BenchmarkApply(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/clients=%d", kind, clients), func(b *testing.B) {
				c := setup(b, kind, clients)
				lat := make([]time.Duration, b.N)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for w := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						name := fmt.Sprintf("t%d", w)
						for {
							i := int(next.Add(1)) - 1
							if i >= b.N {
								return
							}
							t0 := time.Now()
							if _, err := c.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{tenant(name, i)}})); err != nil {
								b.Error(err)
								return
							}
							lat[i] = time.Since(t0)
						}
					}()
				}
				wg.Wait()
				report(b, lat, time.Since(start))
			})
		}
	}
}

// BenchmarkApplyAt100PerSecond: open loop at the target rate, 100
// single-object applies a second, spread over 4 clients.
func BenchmarkApplyAt100PerSecond(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			c := setup(b, kind, 4)
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
					if _, err := c.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{tenant(fmt.Sprintf("t%d", i%4), i)}})); err != nil {
						b.Error(err)
						return
					}
					lat[i] = time.Since(t0)
				}()
			}
			wg.Wait()
			report(b, lat, time.Since(start))
		})
	}
}
