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
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/bench/internal/harness"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/testauth"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// flotillaBin builds the flotilla binary once per run.
func flotillaBin(tb testing.TB) string {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flotilla-bench-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "flotilla")
		cmd := exec.Command("go", "build", "-o", binPath, "flotilla.io/flotilla/cmd/flotilla")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		binErr = cmd.Run()
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

// server is a `flotilla server` child process on a SQLite store.
type server struct {
	tb    testing.TB
	dir   string
	addr  string
	url   string
	cmd   *exec.Cmd
	done  chan struct{}
	token string // the bootstrap administrator's
}

func startServer(tb testing.TB, dir, addr string) *server {
	tb.Helper()
	s := &server{tb: tb, dir: dir, addr: addr, url: "http://" + addr}
	s.start()
	return s
}

func (s *server) start() {
	s.tb.Helper()
	s.cmd = exec.Command(flotillaBin(s.tb), "server", "--listen", s.addr, "--data-dir", s.dir, "--log-level", envOr("FLOTILLA_BENCH_LOG", "warn"))
	s.cmd.Stdout, s.cmd.Stderr = os.Stderr, os.Stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	s.tb.Cleanup(s.stop)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(s.url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if s.token == "" {
					s.token = harness.BootstrapToken(s.tb, s.url, s.dir)
				}
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.tb.Fatal("server not ready")
}

func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(40 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// rss is the server's resident set and peak, in MiB.
func (s *server) rss() (cur, peak float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		s.tb.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			cur = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return cur, peak
}

func (s *server) connectedAgents() int {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "flotilla_central_connected_agents "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

// sim is a simulated agent: it acknowledges every bundle as the real agent
// does (version, revision, one status per resource), reconnecting after
// 100 ms when its stream ends.
type sim struct {
	name, cred string
	acked      atomic.Int64 // revision of the last bundle acknowledged
	streaming  atomic.Bool
	lastErr    atomic.Value // string: why the last stream ended
}

func (s *sim) run(ctx context.Context, client agentv1connect.AgentServiceClient, wake chan<- struct{}) {
	var last *agentv1.Ack
	for ctx.Err() == nil {
		stream := client.Connect(ctx)
		stream.RequestHeader().Set("Authorization", "Bearer "+s.cred)
		if stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: s.name, AgentVersion: "sim", Last: last}}}) == nil {
			s.streaming.Store(true)
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
				var content bundle.Bundle
				if json.Unmarshal(b.GetContent(), &content) != nil {
					break
				}
				last = &agentv1.Ack{BundleVersion: b.GetVersion(), Revision: b.GetRevision()}
				for _, o := range content.Objects {
					last.Resources = append(last.Resources, &agentv1.ResourceStatus{Fqn: o.FQN, State: "Applied", Message: "simulated"})
				}
				if stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: last}}) != nil {
					break
				}
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
	srv   *server
	api   flotillav1alpha1connect.ResourceServiceClient
	sims  []*sim
	wake  chan struct{}
	apply func(rs []*pb.Resource) int64
}

func startFleet(b *testing.B, n int) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := startServer(b, b.TempDir(), addr)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	api := flotillav1alpha1connect.NewResourceServiceClient(client, srv.url, testauth.Bearer(srv.token))
	fl := flotillav1alpha1connect.NewFleetServiceClient(client, srv.url, testauth.Bearer(srv.token))
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
	var created int64 // every agent's first bundle is at least this revision
	for i := range n {
		batch = append(batch, harness.Resource("Cluster", &pb.Metadata{Name: clusterName(i), Organization: "acme"}, nil))
		if len(batch) == 500 || i == n-1 {
			created = f.apply(batch)
			batch = nil
		}
	}
	var agentClient agentv1connect.AgentServiceClient
	for i := range n {
		if i%simsPerTC == 0 {
			p := new(http.Protocols)
			p.SetUnencryptedHTTP2(true)
			agentClient = agentv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{Protocols: p}}, srv.url, connect.WithGRPC())
		}
		tok, err := fl.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: clusterName(i), Organization: "acme"}}))
		if err != nil {
			b.Fatal(err)
		}
		joined, err := agentClient.Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: clusterName(i), Token: tok.Msg.GetToken()}))
		if err != nil {
			b.Fatal(err)
		}
		s := &sim{name: clusterName(i), cred: joined.Msg.GetCredential()}
		f.sims = append(f.sims, s)
		go s.run(ctx, agentClient, f.wake)
	}
	f.await(b, f.sims, created, 5*time.Minute)
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
			b.Fatalf("%d of %d agents did not acknowledge revision %d", missing, len(want), rev)
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
			harness.Measure(b, func(i int) time.Duration {
				g := (i + 1000) % groups
				start := time.Now()
				rev := f.apply([]*pb.Resource{gateway(g, i%perGroup, fmt.Sprintf("change-%d.example.com", i))})
				f.await(b, f.region(g), rev, time.Minute)
				return time.Since(start)
			})
			if n == 10000 {
				cur, peak := f.srv.rss()
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
		f.srv.stop()
		start := time.Now()
		f.srv.start()
		deadline := time.Now().Add(30 * time.Second)
		for f.srv.connectedAgents() != len(f.sims) {
			if time.Now().After(deadline) {
				why := map[string]int{}
				for _, s := range f.sims {
					if e, ok := s.lastErr.Load().(string); ok {
						why[e]++
					}
				}
				b.Fatalf("%d of %d agents back; last stream errors: %v", f.srv.connectedAgents(), len(f.sims), why)
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
		cmd := exec.Command(flotillaBin(b), "apply", "-f", file, "--server", f.srv.url)
		cmd.Env = append(os.Environ(), "FLOTILLA_TOKEN="+f.srv.token)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("apply: %v\n%s", err, out.String())
		}
		return time.Since(start)
	})
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
