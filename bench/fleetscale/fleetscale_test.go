// Package fleetscale measures the central control plane at fleet scale,
// against the real `flotilla server` binary run as a child process (so its
// memory is its own), with simulated agents in this process on real
// loopback sockets:
//
//   - one-object change → every affected agent acknowledged the bundle that
//     holds it (revision-tied), at 100, 1,000 and 10,000 clusters, with a
//     realistic intent: 1,000 IngressGateways fleet-wide in 100 groups of
//     10, each group selecting one of ten "regions" of clusters, so each
//     cluster carries 100 objects and a one-object change touches a tenth
//     of the fleet;
//   - server restart → every agent streaming again, at 1,000 clusters;
//   - the server's RSS with 10,000 clusters connected and converged;
//   - a 10,000-object `flotilla apply -f`, end to end.
//
// Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 20x -timeout 60m ./bench/fleetscale/
package fleetscale

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/bench/internal/harness"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/testauth"
)

// sim is a simulated agent: it takes bundle deltas and acknowledges every
// bundle as the real agent does (version, revision, one status per
// resource, sent as a partial acknowledgement after the first on a
// stream), reconnecting after 100 ms when its stream ends.
type sim struct {
	name      string
	cred      harness.Sim
	acked     atomic.Int64 // revision of the last bundle acknowledged
	streaming atomic.Bool
	lastErr   atomic.Value // string: why the last stream ended
}

func (s *sim) run(ctx context.Context, client agentv1connect.AgentServiceClient, wake chan<- struct{}) {
	var (
		last    *agentv1.Ack
		content *bundle.Bundle
	)
	for ctx.Err() == nil {
		stream := client.Connect(ctx)
		stream.RequestHeader().Set("Authorization", s.cred.Header())
		if stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: s.name, AgentVersion: "sim", Last: last, AcceptsDeltas: true}}}) == nil {
			s.streaming.Store(true)
			var acked *agentv1.Ack // the last acknowledgement on this stream
			for {
				msg, err := stream.Receive()
				if err != nil {
					s.lastErr.Store(err.Error())
					break
				}
				b := msg.GetBundle()
				if b == nil || b.GetParts() > 1 {
					continue
				}
				if b.GetBase() != "" {
					var d bundle.Delta
					if content == nil || last.GetBundleVersion() != b.GetBase() || json.Unmarshal(b.GetContent(), &d) != nil {
						s.lastErr.Store("a delta against a bundle this sim does not hold")
						break
					}
					content = content.Apply(d)
				} else {
					content = &bundle.Bundle{}
					if json.Unmarshal(b.GetContent(), content) != nil {
						break
					}
				}
				last = &agentv1.Ack{BundleVersion: b.GetVersion(), Revision: b.GetRevision()}
				for _, o := range content.Objects {
					last.Resources = append(last.Resources, &agentv1.ResourceStatus{Fqn: o.FQN, State: "Applied", Message: "simulated"})
				}
				send := last
				if acked != nil {
					send = ack.Diff(acked, last)
				}
				if stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: send}}) != nil {
					break
				}
				acked = last
				s.acked.Store(b.GetRevision())
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
		s.streaming.Store(false)
		stream.CloseRequest()
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

const (
	regions   = 10
	groups    = 100
	perGroup  = 10
	namespace = "shop"
	simsPerTC = 100 // simulated agents per HTTP/2 connection
)

func clusterName(i int) string { return fmt.Sprintf("r%d-c%05d", i%regions, i/regions) }

func gateway(group, i int, host string) *pb.Resource {
	r := harness.Gateway(host, namespace)
	r.Metadata.Name, r.Metadata.Group = fmt.Sprintf("gw%02d", i), fmt.Sprintf("g%03d", group)
	return r
}

// fleet is a server with the realistic intent and n connected, converged
// simulated agents.
type fleet struct {
	srv   *harness.Server
	api   flotillav1alpha1connect.ResourceServiceClient
	sims  []*sim
	wake  chan struct{}
	apply func(rs []*pb.Resource) int64
}

func startFleet(b *testing.B, n int) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	srv := harness.StartServer(b, b.TempDir())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	api := flotillav1alpha1connect.NewResourceServiceClient(client, srv.URL, testauth.Bearer(srv.Token))
	fl := flotillav1alpha1connect.NewFleetServiceClient(client, srv.URL, testauth.Bearer(srv.Token))
	f := &fleet{srv: srv, api: api, wake: make(chan struct{}, 1)}
	f.apply = func(rs []*pb.Resource) int64 {
		res, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs}))
		if err != nil {
			b.Fatal(err)
		}
		return res.Msg.GetRevision()
	}
	sel := map[string]any{"names": []any{"*/" + namespace}}
	intent := []*pb.Resource{
		harness.Resource("Organization", &pb.Metadata{Name: "acme"}, nil),
		harness.Resource("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		harness.Resource("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": sel}),
	}
	for g := range groups {
		intent = append(intent, harness.Resource("Group", &pb.Metadata{Name: fmt.Sprintf("g%03d", g), Organization: "acme", Tenant: "t", Workspace: "w"},
			map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{fmt.Sprintf("r%d-*/%s", g%regions, namespace)}}}))
	}
	f.apply(intent)
	var batch []*pb.Resource
	for g := range groups {
		for i := range perGroup {
			batch = append(batch, gateway(g, i, fmt.Sprintf("g%03d-gw%02d.example.com", g, i)))
		}
		if len(batch) >= 200 {
			f.apply(batch)
			batch = nil
		}
	}
	for i := range n {
		batch = append(batch, harness.Resource("Cluster", &pb.Metadata{Name: clusterName(i), Organization: "acme"}, nil))
		if len(batch) == 500 || i == n-1 {
			f.apply(batch)
			batch = nil
		}
	}
	simulators := &harness.Simulators{URL: srv.URL, PerConn: simsPerTC}
	for i := range n {
		agentClient, cred := simulators.Join(ctx, b, fl, clusterName(i))
		s := &sim{name: clusterName(i), cred: cred}
		f.sims = append(f.sims, s)
		go s.run(ctx, agentClient, f.wake)
	}
	// Converged: every agent acknowledged a bundle. (Not necessarily one
	// at the last creation's revision: a cluster's bundle does not change
	// when other clusters are created, so one sent while the central
	// control plane caught up keeps its older revision, and is current.)
	f.await(b, f.sims, 1, 5*time.Minute)
	return f
}

// await waits until every sim of want has acknowledged revision rev.
func (f *fleet) await(b *testing.B, want []*sim, rev int64, timeout time.Duration) {
	deadline := time.After(timeout)
	for {
		missing := 0
		for _, s := range want {
			if s.acked.Load() < rev {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		select {
		case <-f.wake:
		case <-time.After(5 * time.Millisecond):
		case <-deadline:
			why := map[string]int{}
			for _, s := range want {
				if s.acked.Load() < rev {
					e, _ := s.lastErr.Load().(string)
					why[fmt.Sprintf("streaming=%v acked=%v last error %q", s.streaming.Load(), s.acked.Load() > 0, e)]++
				}
			}
			b.Fatalf("%d of %d agents did not acknowledge revision %d: %v", missing, len(want), rev, why)
		}
	}
}

// region returns the sims a change to group g reaches.
func (f *fleet) region(g int) []*sim {
	var out []*sim
	for i, s := range f.sims {
		if i%regions == g%regions {
			out = append(out, s)
		}
	}
	return out
}

// BenchmarkOneObjectChange: a one-object change until every affected agent
// (a tenth of the fleet) acknowledged the bundle holding it.
func BenchmarkOneObjectChange(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			f := startFleet(b, n)
			f.srv.Profile("heap", 0, fmt.Sprintf("heap-converged-%d.pb.gz", n))
			cpu := f.srv.Profile("profile", 15, fmt.Sprintf("cpu-changes-%d.pb.gz", n))
			harness.Measure(b, func(i int) time.Duration {
				g := (i + 1000) % groups
				start := time.Now()
				rev := f.apply([]*pb.Resource{gateway(g, i%perGroup, fmt.Sprintf("change-%d.example.com", i))})
				f.await(b, f.region(g), rev, time.Minute)
				return time.Since(start)
			})
			<-cpu
			if n == 10000 {
				cur, peak := f.srv.RSS()
				b.ReportMetric(cur, "server-rss-MiB")
				b.ReportMetric(peak, "server-peak-rss-MiB")
			}
		})
	}
}

// BenchmarkRestartResync: the server stops (SIGTERM) and starts again on
// the same store; until every one of 1,000 agents streams again and the
// server counts them connected.
func BenchmarkRestartResync(b *testing.B) {
	f := startFleet(b, 1000)
	harness.Measure(b, func(int) time.Duration {
		f.srv.Stop()
		start := time.Now()
		f.srv.Start()
		deadline := time.Now().Add(30 * time.Second)
		for f.srv.ConnectedAgents() != len(f.sims) {
			if time.Now().After(deadline) {
				why := map[string]int{}
				for _, s := range f.sims {
					if e, ok := s.lastErr.Load().(string); ok {
						why[e]++
					}
				}
				b.Fatalf("%d of %d agents back; last stream errors: %v", f.srv.ConnectedAgents(), len(f.sims), why)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	})
}

// BenchmarkApplyTenThousandObjects: `flotilla apply -f` of 10,000
// IngressGateways in 100 groups, end to end through the CLI binary.
func BenchmarkApplyTenThousandObjects(b *testing.B) {
	f := startFleet(b, 10)
	var y strings.Builder
	for g := range groups {
		for i := range 100 {
			fmt.Fprintf(&y, `---
apiVersion: flotilla.io/v1alpha1
kind: IngressGateway
metadata: {name: big%03d, organization: acme, tenant: t, workspace: w, group: g%03d}
spec:
  workloadSelector: {namespace: %s, labels: {istio: ingressgateway}}
  http:
    - name: web
      hostname: big%03d-g%03d.example.com
      port: 80
      routing:
        rules:
          - route: {host: %s/web.%s.svc.cluster.local, port: 8080}
`, i, g, namespace, i, g, namespace, namespace)
		}
	}
	file := filepath.Join(b.TempDir(), "big.yaml")
	if err := os.WriteFile(file, []byte(y.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	harness.Measure(b, func(i int) time.Duration {
		body := y.String()
		if i >= 0 { // every measured run changes every object
			body = strings.ReplaceAll(body, ".example.com", fmt.Sprintf("-%d.example.com", i))
		}
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(harness.FlotillaBin(b), "apply", "-f", file, "--server", f.srv.URL)
		cmd.Env = append(os.Environ(), "FLOTILLA_TOKEN="+f.srv.Token)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("apply: %v\n%s", err, out.String())
		}
		return time.Since(start)
	})
}
