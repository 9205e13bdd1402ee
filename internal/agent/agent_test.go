package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"k8s.io/client-go/rest"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/testfleet"
)

// c2 is bare: the Istio lifecycle tests install Istio there.
func TestMain(m *testing.M) { testfleet.Main(m, testfleet.Options{Clusters: 2, Bare: 1}) }

// corruptingServer is an agent service whose first stream sends a bundle
// that does not hash to its version (a fault the real server cannot be
// made to produce), and whose later streams send the good one.
type corruptingServer struct {
	agentv1connect.UnimplementedAgentServiceHandler
	good    *bundle.Bundle
	streams atomic.Int32
	acked   chan string
}

func (s *corruptingServer) Join(context.Context, *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: "organizations/acme/clusters/c1", Audience: "flotilla"}), nil
}

func (s *corruptingServer) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	if _, err := stream.Receive(); err != nil { // Hello
		return err
	}
	content, _ := json.Marshal(s.good)
	version := s.good.Version()
	if s.streams.Add(1) == 1 {
		content = []byte(`{"cluster":"c1","groups":[],"objects":[],"tampered":true}`)
		version = "0123456789abcdef0123456789abcdef" // not what the content hashes to
	}
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: &agentv1.Bundle{Version: version, Revision: 7, Content: content}}}); err != nil {
		return err
	}
	for {
		msg, err := stream.Receive()
		if err != nil {
			return err
		}
		if a := msg.GetAck(); a != nil {
			select {
			case s.acked <- a.GetBundleVersion():
			default:
			}
		}
	}
}

func TestABundleTheAgentCannotStoreIsFetchedAgainOnANewSession(t *testing.T) {
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	good := &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{}, Objects: []bundle.Object{}}
	srv := &corruptingServer{good: good, acked: make(chan string, 1)}
	a := agentOf(t, cfg, srv, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case v := <-srv.acked:
		if v != good.Version() {
			t.Fatalf("acknowledged %s, want the good version %s", v, good.Version())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent never got the bundle again: %d stream(s) opened", srv.streams.Load())
	}
	if n := srv.streams.Load(); n < 2 {
		t.Fatalf("acknowledged on %d stream(s); the bad bundle should have ended the first", n)
	}
}

// agentOf serves srv on a loopback port (cleartext HTTP/2) and returns an
// agent of cluster c1 on cfg that connects to it, with a join token file.
func agentOf(t *testing.T, cfg *rest.Config, srv agentv1connect.AgentServiceHandler, log *slog.Logger) *Agent {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("flj_test"), 0o600)
	a, err := New(Config{Server: serve(t, srv), Cluster: "c1", TokenFile: tokenFile, Kube: cfg, Version: "test", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// serve serves srv on a loopback port (cleartext HTTP/2) until the test
// ends, and returns its URL.
func serve(t *testing.T, srv agentv1connect.AgentServiceHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewAgentServiceHandler(srv))
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: p}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// flakyServer refuses its first streams, then serves one session that
// delivers a bundle and ends, then refuses again.
type flakyServer struct {
	agentv1connect.UnimplementedAgentServiceHandler
	good    *bundle.Bundle
	refuse  int32 // streams refused before the good one
	streams atomic.Int32
}

func (s *flakyServer) Join(context.Context, *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: "organizations/acme/clusters/c1", Audience: "flotilla"}), nil
}

func (s *flakyServer) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	n := s.streams.Add(1)
	if n <= s.refuse || n > s.refuse+1 {
		return connect.NewError(connect.CodeUnavailable, errors.New("not now"))
	}
	if _, err := stream.Receive(); err != nil {
		return err
	}
	content, _ := json.Marshal(s.good)
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: &agentv1.Bundle{Version: s.good.Version(), Content: content}}}); err != nil {
		return err
	}
	for { // a working session: until the agent acknowledges the bundle
		msg, err := stream.Receive()
		if err != nil {
			return err
		}
		if msg.GetAck() != nil {
			return connect.NewError(connect.CodeUnavailable, errors.New("the server restarts"))
		}
	}
}

func TestReconnectBackoffGrowsWithinBoundsIsJitteredAndResetsAfterASession(t *testing.T) {
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	const refused = 8
	srv := &flakyServer{good: &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{}, Objects: []bundle.Object{}}, refuse: refused}
	a := agentOf(t, cfg, srv, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waits := make(chan time.Duration, 64)
	a.sleep = func(ctx context.Context, d time.Duration) bool {
		select {
		case waits <- d:
		case <-ctx.Done():
			return false
		}
		return ctx.Err() == nil
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var got []time.Duration
	for len(got) < refused+3 {
		select {
		case d := <-waits:
			got = append(got, d)
		case err := <-done:
			t.Fatalf("agent stopped: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d waits: %v", len(got), got)
		}
	}
	cancel()
	<-done
	for i, d := range got {
		if d < time.Duration(float64(minBackoff)*0.8) || d > time.Duration(float64(maxBackoff)*1.2) {
			t.Fatalf("wait %d is %s, outside [0.8×%s, 1.2×%s]", i, d, minBackoff, maxBackoff)
		}
	}
	// Growing while refused: each wait is well above the one two attempts
	// before (jitter is ±20 %, growth ×4), until the cap.
	for i := 2; i < refused; i++ {
		if got[i] < maxBackoff*8/10 && got[i] <= got[i-2] {
			t.Fatalf("waits do not grow: %v", got)
		}
	}
	// The session that delivered a bundle resets the backoff: the wait
	// after it is back at the floor.
	after := got[refused]
	if after > time.Duration(float64(minBackoff)*1.2) {
		t.Fatalf("the wait after a successful session is %s, not reset to about %s: %v", after, minBackoff, got)
	}
	if got[refused-1] <= after {
		t.Fatalf("no reset visible: %v", got)
	}
}

// deltaServer checks the agent's side of bundle deltas. Its first stream
// sends a whole bundle, then a good delta, then a delta whose result does
// not hash to its version (a fault the real server cannot be made to
// produce); its second stream sends the last version whole.
type deltaServer struct {
	agentv1connect.UnimplementedAgentServiceHandler
	v1, v2, v3 *bundle.Bundle
	streams    atomic.Int32
	events     chan string // what the server saw, in order
}

func (s *deltaServer) Join(context.Context, *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: "organizations/acme/clusters/c1", Audience: "flotilla"}), nil
}

func (s *deltaServer) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	first, err := stream.Receive()
	if err != nil {
		return err
	}
	s.events <- fmt.Sprintf("hello deltas=%v", first.GetHello().GetAcceptsDeltas())
	send := func(b *bundle.Bundle, base string, content any) error {
		data, _ := json.Marshal(content)
		return stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: &agentv1.Bundle{Version: b.Version(), Base: base, Content: data}}})
	}
	// awaitAck waits for the acknowledgement of b (the agent also
	// acknowledges again what it reconciles again).
	acks := 0
	awaitAck := func(b *bundle.Bundle) func() error {
		return func() error {
			for {
				msg, err := stream.Receive()
				if err != nil {
					return err
				}
				a := msg.GetAck()
				if a == nil {
					continue
				}
				if acks++; acks > 1 && !a.GetPartial() {
					s.events <- "a whole acknowledgement after the first on the stream"
				}
				if a.GetBundleVersion() == b.Version() {
					s.events <- fmt.Sprintf("ack %s partial=%v", a.GetBundleVersion(), a.GetPartial())
					return nil
				}
			}
		}
	}
	if s.streams.Add(1) > 1 {
		if err := send(s.v3, "", s.v3); err != nil {
			return err
		}
		return awaitAck(s.v3)()
	}
	steps := []func() error{
		func() error { return send(s.v1, "", s.v1) },
		awaitAck(s.v1),
		func() error { return send(s.v2, s.v1.Version(), bundle.Delta{Groups: s.v2.Groups}) },
		awaitAck(s.v2),
		// Claims v3, but leaves the group as it is.
		func() error { return send(s.v3, s.v2.Version(), bundle.Delta{}) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	_, err = stream.Receive()
	for err == nil {
		_, err = stream.Receive()
	}
	s.events <- "stream 1 ended"
	return err
}

// The agent takes deltas: it applies a good one to the bundle it holds and
// acknowledges it partially; a delta whose result does not hash to its
// version ends the stream, and the next stream's whole bundle is taken.
func TestTheAgentAppliesBundleDeltasAndRefusesOneThatDoesNotHashToItsVersion(t *testing.T) {
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	group := func(ns string) []bundle.Group {
		return []bundle.Group{{FQN: "organizations/acme/tenants/t/workspaces/w/groups/g", Type: "traffic", ConfigMode: "DIRECT", Namespaces: []string{"c1/" + ns}}}
	}
	srv := &deltaServer{
		v1:     &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{}, Objects: []bundle.Object{}},
		v2:     &bundle.Bundle{Cluster: "c1", Groups: group("pay"), Objects: []bundle.Object{}},
		v3:     &bundle.Bundle{Cluster: "c1", Groups: group("shop"), Objects: []bundle.Object{}},
		events: make(chan string, 16),
	}
	a := agentOf(t, cfg, srv, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	want := []string{
		"hello deltas=true",
		"ack " + srv.v1.Version() + " partial=false",
		"ack " + srv.v2.Version() + " partial=true",
		"stream 1 ended",
		"hello deltas=true",
		"ack " + srv.v3.Version() + " partial=false",
	}
	for i, w := range want {
		select {
		case got := <-srv.events:
			if got != w {
				t.Fatalf("event %d: %q, want %q", i, got, w)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("event %d: nothing after 30 s, want %q", i, w)
		}
	}
}
