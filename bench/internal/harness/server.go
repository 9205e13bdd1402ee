package harness

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/testfleet"
)

// FleetMain is a TestMain for benchmarks on real clusters: it starts a
// local fleet only when benchmarks are asked for, so that `go test ./...`
// does not pay for a fleet that no test uses.
func FleetMain(m *testing.M, opts testfleet.Options) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	testfleet.Main(m, opts)
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// FlotillaBin builds the flotilla binary once per run.
func FlotillaBin(tb testing.TB) string {
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

// Server is a `flotilla server` child process on a SQLite store in Dir, so
// that its memory is its own. It is stopped when the benchmark ends.
type Server struct {
	tb        testing.TB
	Dir, URL  string
	addr      string
	Token     string // the bootstrap administrator's
	cmd       *exec.Cmd
	extra     []string
	done      chan struct{}
	cleanedUp bool
}

// StartServer starts a server on a free loopback port with its data in dir,
// and extra flags (a --store URL, a shared --signing-key-file…).
func StartServer(tb testing.TB, dir string, extra ...string) *Server {
	tb.Helper()
	return startServer(tb, dir, "", extra)
}

// StartServerReplica starts another replica of a server on a shared store (in
// extra), whose administrator token (from the first replica) it takes.
func StartServerReplica(tb testing.TB, dir, token string, extra ...string) *Server {
	tb.Helper()
	return startServer(tb, dir, token, extra)
}

func startServer(tb testing.TB, dir, token string, extra []string) *Server {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Server{tb: tb, Dir: dir, addr: addr, URL: "http://" + addr, extra: extra, Token: token}
	s.Start()
	return s
}

// Start starts the server (again, after Stop) and waits until it is ready.
func (s *Server) Start() {
	s.tb.Helper()
	level := os.Getenv("FLOTILLA_BENCH_LOG")
	if level == "" {
		level = "warn"
	}
	args := append([]string{"server", "--listen", s.addr, "--data-dir", s.Dir, "--log-level", level}, ProxyFlags...)
	args = append(args, s.extra...)
	if d := os.Getenv("FLOTILLA_BENCH_DEBUG_LISTEN"); d != "" {
		args = append(args, "--debug-listen", d) // profile the server: go tool pprof http://<d>/debug/pprof/profile
	}
	s.cmd = exec.Command(FlotillaBin(s.tb), args...)
	s.cmd.Stdout, s.cmd.Stderr = os.Stderr, os.Stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	if !s.cleanedUp {
		s.cleanedUp = true
		s.tb.Cleanup(s.Stop)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(s.URL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if s.Token == "" {
					s.Token = BootstrapToken(s.tb, s.URL, s.Dir)
				}
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.tb.Fatal("server not ready")
}

// Stop sends SIGTERM and waits for the exit (SIGKILL after 40 s).
func (s *Server) Stop() {
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

// Pid is the server process's id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// RSS is the server's resident set and its peak, in MiB.
func (s *Server) RSS() (cur, peak float64) {
	cur, peak, err := ProcMem(s.cmd.Process.Pid)
	if err != nil {
		s.tb.Fatal(err)
	}
	return cur, peak
}

// ConnectedAgents reads flotilla_central_connected_agents from /metrics;
// -1 when it cannot.
func (s *Server) ConnectedAgents() int {
	req, err := http.NewRequest(http.MethodGet, s.URL+"/metrics", nil)
	if err != nil {
		return -1
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
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

// Simulators hands out agent clients for simulated agents, perConn of them
// per HTTP/2 connection (as many agents of one host would share none, but a
// benchmark machine cannot open thousands).
type Simulators struct {
	URL     string
	PerConn int
	n       int
	client  agentv1connect.AgentServiceClient
}

// Join onboards cluster (organization acme) and joins it as its agent
// would, returning the agent client to stream on and the agent's key.
func (s *Simulators) Join(ctx context.Context, tb testing.TB, fleet flotillav1alpha1connect.FleetServiceClient, cluster string) (agentv1connect.AgentServiceClient, Sim) {
	tb.Helper()
	if s.n%s.PerConn == 0 {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		s.client = agentv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{Protocols: p}}, s.URL, connect.WithGRPC())
	}
	s.n++
	tok, err := fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: cluster, Organization: "acme"}}))
	if err != nil {
		tb.Fatal(err)
	}
	sim, err := JoinAgent(ctx, s.client, cluster, tok.Msg.GetToken())
	if err != nil {
		tb.Fatal(err)
	}
	return s.client, sim
}

// Sim is a simulated agent's credential: the key it joined with.
type Sim struct {
	Cluster  string
	key      agentcred.Key
	audience string
}

// Header is the Authorization header of one stream open: a fresh assertion
// (one Ed25519 signature, about 20 µs: cheap next to the stream it opens).
func (s Sim) Header() string {
	a, err := s.key.Assert(s.Cluster, s.audience, time.Now())
	if err != nil {
		panic(err)
	}
	return "Bearer " + a
}

// JoinAgent joins cluster with token through client as an agent would,
// with a new key, from an address of its own (X-Forwarded-For, which the
// benchmarks' servers trust from loopback: ProxyFlags), so that the
// per-client limit of Join sees a fleet, not one host. A join refused for
// the rate of joins is retried.
func JoinAgent(ctx context.Context, client agentv1connect.AgentServiceClient, cluster, token string) (Sim, error) {
	seed := sha256.Sum256([]byte(cluster + "/" + token))
	key := agentcred.FromSeed(seed[:])
	for attempt := 0; ; attempt++ {
		req := connect.NewRequest(&agentv1.JoinRequest{Cluster: cluster, Token: token, PublicKey: key.Public()})
		req.Header().Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", seed[0], seed[1], seed[2]))
		res, err := client.Join(ctx, req)
		if connect.CodeOf(err) == connect.CodeResourceExhausted && attempt < 100 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return Sim{}, err
		}
		return Sim{Cluster: cluster, key: key, audience: res.Msg.GetAudience()}, nil
	}
}

// TrustLoopback is the server option (and ProxyFlags the flags) under which
// simulated agents' X-Forwarded-For counts: the benchmark is their proxy.
var (
	TrustLoopback = apiserver.WithTrustedProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	ProxyFlags    = []string{"--trusted-proxy", "127.0.0.0/8"}
)

// Profile saves the server's profile of kind (heap, profile for CPU over
// seconds, goroutine…) into $FLOTILLA_BENCH_PROFILE_DIR/<name>, when the
// server runs with FLOTILLA_BENCH_DEBUG_LISTEN and that directory is set;
// else it does nothing. It returns at once: the profile is fetched in the
// background, and done is closed when it is saved (or failed).
func (s *Server) Profile(kind string, seconds int, name string) (done <-chan struct{}) {
	ch := make(chan struct{})
	addr, dir := os.Getenv("FLOTILLA_BENCH_DEBUG_LISTEN"), os.Getenv("FLOTILLA_BENCH_PROFILE_DIR")
	if addr == "" || dir == "" {
		close(ch)
		return ch
	}
	go func() {
		defer close(ch)
		u := fmt.Sprintf("http://%s/debug/pprof/%s", addr, kind)
		if seconds > 0 {
			u += fmt.Sprintf("?seconds=%d", seconds)
		}
		resp, err := http.Get(u)
		if err != nil {
			s.tb.Logf("profile %s: %v", kind, err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			s.tb.Logf("profile %s: %v", kind, err)
			return
		}
		defer f.Close()
		_, _ = io.Copy(f, resp.Body)
	}()
	return ch
}
