// Package discoveryscale measures discovery at fleet scale: two replicas of
// the real `flotilla server` binary on one PostgreSQL database, child
// processes (so their CPU and memory are their own), with simulated agents
// in this process on real loopback sockets, half on each replica. Every
// cluster runs the same services in namespace shop, and one workspace
// setting exports every one of them to every other cluster. The agents
// report their services once; then endpoint changes come at 100 a second,
// each in one random cluster for one random service, through that
// cluster's agent, and the benchmark waits until every other cluster's
// agent received the changed remote instance (its WorkloadEntry's input),
// across the replicas through the store's runtime feed.
//
//	go test -run '^$' -bench . -benchtime 1000x -timeout 60m ./bench/discoveryscale/
//
// FLOTILLA_BENCH_FULL=1 (make bench sets it) runs the documented fleet
// sizes; without it a small fleet, so that `make bench-smoke` stays quick.
// Results are in docs/benchmarks.md.
package discoveryscale

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	"flotilla.io/flotilla/bench/internal/harness"
	"flotilla.io/flotilla/bench/internal/quantile"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/testauth"
)

const (
	namespace   = "shop"
	simsPerConn = 100
	changeRate  = 100 // endpoint changes a second
)

// fleetSize is one run's fleet.
type fleetSize struct{ clusters, services int }

func sizes() []fleetSize {
	if os.Getenv("FLOTILLA_BENCH_FULL") != "" {
		return []fleetSize{{100, 100}, {1000, 10}}
	}
	return []fleetSize{{10, 5}}
}

func clusterName(i int) string    { return fmt.Sprintf("c%05d", i) }
func serviceName(k int) string    { return fmt.Sprintf("svc-%03d", k) }
func gatewayAddress(i int) string { return fmt.Sprintf("10.%d.%d.1", i/256, i%256) }

// change is one endpoint change: the service, in the cluster, now with
// ready endpoints (unique per change, so the benchmark can tell it).
type change struct {
	service, cluster string
	ready            uint32
}

// tracker matches what agents receive with the changes waiting for them.
// A newer change of the same service in the same cluster may reach an
// agent before the stream sent the older one, which it then never sends
// (it coalesces): the newer one counts for both.
type tracker struct {
	mu      sync.Mutex
	pending map[instance][]*waiting // oldest first
}

// instance is a service in a cluster.
type instance struct{ service, cluster string }

type waiting struct {
	ready uint32
	start time.Time
	seen  []bool // by sim
	left  int
	done  chan time.Duration
}

func (t *tracker) expect(c change, sims, importers int) <-chan time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &waiting{ready: c.ready, start: time.Now(), seen: make([]bool, sims), left: importers, done: make(chan time.Duration, 1)}
	k := instance{c.service, c.cluster}
	t.pending[k] = append(t.pending[k], w)
	return w.done
}

// arrived says that sim got the change: every pending change of its
// instance up to it has reached that sim.
func (t *tracker) arrived(c change, sim int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := instance{c.service, c.cluster}
	ws := t.pending[k]
	kept := ws[:0]
	for _, w := range ws {
		if w.ready <= c.ready && !w.seen[sim] {
			w.seen[sim] = true
			if w.left--; w.left == 0 {
				w.done <- time.Since(w.start)
				continue
			}
		}
		kept = append(kept, w)
	}
	if len(kept) == 0 {
		delete(t.pending, k)
	} else {
		t.pending[k] = kept
	}
}

// sim is a simulated agent: it reports its services, takes bundle deltas,
// and tells the tracker of every remote instance a slice patch carries. A
// whole bundle (the first on a stream) is not decoded: it holds no change
// under measurement.
type sim struct {
	name     string
	index    int
	cred     harness.Sim
	client   agentv1connect.AgentServiceClient
	tr       *tracker
	services int

	mu     sync.Mutex // guards stream and seq
	stream *connect.BidiStreamForClient[agentv1.ConnectRequest, agentv1.ConnectResponse]
	seq    uint64

	lastMsg    atomic.Int64 // unix nanoseconds of the last bundle received
	deltaBytes atomic.Int64
	wholes     atomic.Int64
	lastErr    atomic.Value
}

func (s *sim) report(i int) *agentv1.Runtime {
	m := &agentv1.Runtime{Full: true, Seq: 1, EastWestGateway: &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: gatewayAddress(i), Port: 15443}}
	for k := range s.services {
		m.Services = append(m.Services, serviceState(k, 1))
	}
	return m
}

func serviceState(k int, ready uint32) *agentv1.ServiceState {
	return &agentv1.ServiceState{Namespace: namespace, Name: serviceName(k), Selector: map[string]string{"app": serviceName(k)},
		Ports:     []*agentv1.ServicePort{{Name: "http", Port: 8080, Protocol: "HTTP"}},
		Endpoints: []*agentv1.LocalityEndpoints{{Region: "region-1", Zone: "zone-a", Ready: ready}}}
}

// run streams until ctx ends; it reports once per stream.
func (s *sim) run(ctx context.Context, i int) {
	for ctx.Err() == nil {
		stream := s.client.Connect(ctx)
		stream.RequestHeader().Set("Authorization", s.cred.Header())
		s.mu.Lock()
		s.stream, s.seq = stream, 1
		err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: s.name, AgentVersion: "sim", AcceptsDeltas: true}}})
		if err == nil {
			err = stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: s.report(i)}})
		}
		s.mu.Unlock()
		for err == nil {
			var msg *agentv1.ConnectResponse
			if msg, err = stream.Receive(); err != nil {
				break
			}
			b := msg.GetBundle()
			if b == nil {
				continue
			}
			s.lastMsg.Store(time.Now().UnixNano())
			if b.GetBase() == "" || b.GetParts() > 1 {
				s.wholes.Add(1)
				continue
			}
			s.deltaBytes.Add(int64(len(b.GetContent())))
			var d bundle.Delta
			if err = json.Unmarshal(b.GetContent(), &d); err != nil {
				break
			}
			if p := d.MulticlusterPatch; p != nil {
				for _, sp := range p.Services {
					for _, r := range sp.Remotes {
						s.tr.arrived(change{sp.Key.Name, r.Cluster, r.Ready}, s.index)
					}
				}
			}
			if mc := d.Multicluster; d.SetMulticluster && mc != nil {
				for _, rs := range mc.Services {
					for _, r := range rs.Remotes {
						s.tr.arrived(change{rs.Name, r.Cluster, r.Ready}, s.index)
					}
				}
			}
		}
		s.lastErr.Store(err.Error())
		stream.CloseRequest()
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// endpoints reports the service with ready endpoints, as a runtime delta.
func (s *sim) endpoints(k int, ready uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return s.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: &agentv1.Runtime{Seq: s.seq, Services: []*agentv1.ServiceState{serviceState(k, ready)}}}})
}

// replicaStats are a replica's CPU and memory over the measured window.
type replicaStats struct {
	srv *harness.Server
	cpu float64
}

func BenchmarkEndpointChangeReachesEveryImporter(b *testing.B) {
	for _, size := range sizes() {
		b.Run(fmt.Sprintf("clusters=%d/services=%d", size.clusters, size.services), func(b *testing.B) {
			run(b, size)
		})
	}
}

func run(b *testing.B, size fleetSize) {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	db := pgtest.NewDatabase(b)
	dirA, dirB := b.TempDir(), b.TempDir()
	keys := filepath.Join(dirA, apiserver.SigningKeyFile)
	a := harness.StartServer(b, dirA, "--store", db)
	replicas := []*harness.Server{a, harness.StartServerReplica(b, dirB, a.Token, "--store", db, "--signing-key-file", keys)}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	api := flotillav1alpha1connect.NewResourceServiceClient(client, a.URL, testauth.Bearer(a.Token))
	fleetAPI := flotillav1alpha1connect.NewFleetServiceClient(client, a.URL, testauth.Bearer(a.Token))
	apply := func(rs []*pb.Resource) {
		if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
			b.Fatal(err)
		}
	}
	apply([]*pb.Resource{
		harness.Resource("Organization", &pb.Metadata{Name: "acme"}, nil),
		harness.Resource("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		harness.Resource("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + namespace}}}),
		harness.Resource("WorkspaceSetting", &pb.Metadata{Name: "mc", Organization: "acme", Tenant: "t", Workspace: "w"}, map[string]any{"eastWestGateway": map[string]any{
			"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}}),
	})
	var batch []*pb.Resource
	for i := range size.clusters {
		batch = append(batch, harness.Resource("Cluster", &pb.Metadata{Name: clusterName(i), Organization: "acme"}, nil))
		if len(batch) == 500 || i == size.clusters-1 {
			apply(batch)
			batch = nil
		}
	}

	tr := &tracker{pending: map[instance][]*waiting{}}
	joiners := []*harness.Simulators{{URL: replicas[0].URL, PerConn: simsPerConn}, {URL: replicas[1].URL, PerConn: simsPerConn}}
	sims := make([]*sim, size.clusters)
	for i := range size.clusters {
		agentClient, cred := joiners[i%2].Join(ctx, b, fleetAPI, clusterName(i))
		sims[i] = &sim{name: clusterName(i), index: i, cred: cred, client: agentClient, tr: tr, services: size.services}
	}
	start := time.Now()
	for i, s := range sims {
		go s.run(ctx, i)
	}
	// Converged: every agent received something, and nothing for 3 s.
	deadline := time.Now().Add(20 * time.Minute)
	for {
		quiet, all := true, true
		for _, s := range sims {
			last := s.lastMsg.Load()
			all = all && last > 0
			quiet = quiet && time.Since(time.Unix(0, last)) > 3*time.Second
		}
		if all && quiet {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the fleet did not converge in 20 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	converged := time.Since(start) - 3*time.Second

	stats := make([]replicaStats, len(replicas))
	for i, r := range replicas {
		stats[i].srv = r
		stats[i].cpu, _ = harness.ProcCPU(r.Pid())
		_ = harness.ResetPeak(r.Pid())
	}
	reads0 := pgReads(b, db)
	var bytes0, wholes0 int64
	for _, s := range sims {
		bytes0 += s.deltaBytes.Load()
		wholes0 += s.wholes.Load()
	}

	// The changes, at changeRate a second, each awaited by every other
	// cluster's agent.
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / changeRate)
	defer tick.Stop()
	b.ResetTimer()
	window := time.Now()
	for n := range b.N {
		<-tick.C
		i, k := (n*7919)%size.clusters, (n*104729)%size.services
		c := change{service: serviceName(k), cluster: clusterName(i), ready: uint32(1000 + n)}
		done := tr.expect(c, size.clusters, size.clusters-1)
		if err := sims[i].endpoints(k, c.ready); err != nil {
			b.Fatalf("report change %d: %v", n, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case lat[n] = <-done:
			case <-time.After(60 * time.Second):
				lat[n] = -1
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(window)
	b.StopTimer()
	lost := 0
	for _, l := range lat {
		if l < 0 {
			lost++
		}
	}
	if lost > 0 {
		b.Fatalf("%d of %d changes did not reach every importer within 60 s", lost, b.N)
	}
	quantile.Report(b, "", lat)
	var bytes1, wholes1 int64
	for _, s := range sims {
		bytes1 += s.deltaBytes.Load()
		wholes1 += s.wholes.Load()
	}
	b.ReportMetric(float64(bytes1-bytes0)/float64(b.N), "delta-bytes/change")
	b.ReportMetric(float64(bytes1-bytes0)/float64(b.N)/float64(size.clusters-1), "delta-bytes/change/importer")
	b.ReportMetric(float64(wholes1-wholes0), "whole-bundles")
	for i, st := range stats {
		cpu, _ := harness.ProcCPU(st.srv.Pid())
		rss, peak := st.srv.RSS()
		b.ReportMetric((cpu-st.cpu)/elapsed.Seconds(), fmt.Sprintf("replica%d-cores", i))
		b.ReportMetric(rss, fmt.Sprintf("replica%d-rss-MiB", i))
		b.ReportMetric(peak, fmt.Sprintf("replica%d-peak-rss-MiB", i))
	}
	b.ReportMetric(float64(pgReads(b, db)-reads0)/elapsed.Seconds(), "pg-tuples-read/s")
	b.ReportMetric(converged.Seconds(), "converge-s")
	b.ReportMetric(0, "ns/op")
}

// pgReads is the database's tuples returned and fetched so far
// (pg_stat_database; the statistics lag by up to a second).
func pgReads(b *testing.B, db string) int64 {
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	_, _ = conn.Exec(context.Background(), "select pg_stat_force_next_flush()")
	var n int64
	if err := conn.QueryRow(context.Background(), "select tup_returned + tup_fetched from pg_stat_database where datname = current_database()").Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}
