package apiserver_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/plane"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/syncbuf"
	"flotilla.io/flotilla/internal/testauth"
)

// edgePlane is the whole plane (API, central, agent service) on a real
// socket, as `flotilla server` wires it, with its log and metrics at hand.
type edgePlane struct {
	url     string
	auth    *apiserver.Auth
	token   string
	metrics *prometheus.Registry
	log     *syncBuffer
	st      store.Store
	fleet   flotillav1alpha1connect.FleetServiceClient
	api     flotillav1alpha1connect.ResourceServiceClient
}

// syncBuffer is a log the test reads while the server writes it.
type syncBuffer = syncbuf.Buffer

// startEdge starts a plane over st (a fresh SQLite store when nil).
func startEdge(t testing.TB, st store.Store, opts ...apiserver.Option) *edgePlane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if st == nil {
		var err error
		if st, err = sqlite.Open(ctx, filepath.Join(t.TempDir(), "flotilla.db")); err != nil {
			t.Fatal(err)
		}
	}
	auth, token := testauth.New(t)
	reg := prometheus.NewRegistry()
	logs := new(syncBuffer)
	p, err := plane.New(resource.Builtin(), st, slog.New(slog.NewTextHandler(logs, nil)),
		plane.Config{API: append([]apiserver.Option{apiserver.WithAuth(auth), apiserver.WithMetrics(reg)}, opts...)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	url := "http://" + ln.Addr().String()
	e := &edgePlane{url: url, auth: auth, token: token, metrics: reg, log: logs, st: st,
		fleet: flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, url, testauth.Bearer(token)),
		api:   flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url, testauth.Bearer(token)),
	}
	return e
}

// refusals reads flotilla_api_refusals_total for one procedure and code.
func (e *edgePlane) refusals(t *testing.T, proc string, code connect.Code) float64 {
	t.Helper()
	families, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "flotilla_api_refusals_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["procedure"] == proc && labels["code"] == code.String() {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// cluster makes cluster c1 of organization acme and joins an agent for it.
func (e *edgePlane) joinedAgent(t *testing.T) agentcred.Key {
	t.Helper()
	ctx := context.Background()
	apply(t, e.api, res("Organization", md("acme"), nil), res("Cluster", md("c1", "acme"), nil))
	tok, err := e.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Fqn: "organizations/acme/clusters/c1"}))
	if err != nil {
		t.Fatal(err)
	}
	k, err := agentcred.Generate()
	if err != nil {
		t.Fatal(err)
	}
	agent := agentv1connect.NewAgentServiceClient(http.DefaultClient, e.url)
	if _, err := agent.Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: "c1", Token: tok.Msg.GetToken(), PublicKey: k.Public()})); err != nil {
		t.Fatal(err)
	}
	return k
}

func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// bomb is gzip of n zero bytes: a few hundred times smaller than it inflates.
func bomb(t testing.TB, n int) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, len(zeros))
		zw.Write(zeros[:k])
		n -= k
	}
	zw.Close()
	return b.Bytes()
}

// envelope frames msg as one gRPC / Connect streaming message.
func envelope(compressed bool, msg []byte) []byte {
	out := make([]byte, 5, 5+len(msg))
	if compressed {
		out[0] = 1
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// post sends body to procedure path and returns the status, the gRPC
// status (when the protocol has one) and the body.
func post(t *testing.T, client *http.Client, url string, header http.Header, body []byte) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Trailer.Get("Grpc-Status") + resp.Header.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message") + resp.Header.Get("Grpc-Message") + string(b)
}

func TestAGzipBombToJoinIsRefusedBeforeItInflatesInEveryProtocol(t *testing.T) {
	e := startEdge(t, nil)
	b := bomb(t, 60<<20) // about 60 KB: under Join's 64 KiB body limit, 60 MiB inflated
	if len(b) > apiserver.MaxPublicRequestBytes {
		t.Fatalf("the bomb is %d bytes: the body limit would refuse it first", len(b))
	}
	join := e.url + agentv1connect.AgentServiceJoinProcedure
	// Connect's unary protocol: the whole body is compressed.
	status, _, body := post(t, http.DefaultClient, join, http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}, b)
	if status != http.StatusTooManyRequests || !strings.Contains(body, "resource_exhausted") || !strings.Contains(body, "inflates past the limit") {
		t.Errorf("a Connect-protocol bomb: %d %s", status, body)
	}
	// gRPC: one compressed message.
	status, grpcStatus, body := post(t, h2c(), join, http.Header{"Content-Type": {"application/grpc"}, "Grpc-Encoding": {"gzip"}, "Te": {"trailers"}}, envelope(true, b))
	if status != http.StatusOK || grpcStatus != fmt.Sprint(int(connect.CodeResourceExhausted)) || !strings.Contains(body, "inflates past the limit") {
		t.Errorf("a gRPC bomb: %d status %s %s", status, grpcStatus, body)
	}
	// Both refusals are counted (connect refused them before any handler).
	if got := e.refusals(t, agentv1connect.AgentServiceJoinProcedure, connect.CodeResourceExhausted); got != 2 {
		t.Errorf("refusals counted for the bombs: %v, want 2", got)
	}
	// A body over the limit, compressed or not, is refused before it is read.
	status, _, body = post(t, http.DefaultClient, join, http.Header{"Content-Type": {"application/proto"}}, make([]byte, apiserver.MaxPublicRequestBytes+1))
	if status != http.StatusTooManyRequests && status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "at most 65536") {
		t.Errorf("an oversized Join body: %d %s", status, body)
	}
	if got := e.refusals(t, agentv1connect.AgentServiceJoinProcedure, connect.CodeResourceExhausted); got != 3 {
		t.Errorf("refusals counted: %v, want 3", got)
	}
}

// connectStream opens an agent stream as gRPC over h2c with k's assertion,
// writes frames, and returns the gRPC status and message it ends with.
func (e *edgePlane) connectStream(t *testing.T, k agentcred.Key, compressed bool, frames ...[]byte) (string, string) {
	t.Helper()
	a, err := k.Assert("c1", "flotilla-test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Authorization": {"Bearer " + a}}
	if compressed {
		h.Set("Grpc-Encoding", "gzip")
	}
	_, status, msg := post(t, h2c(), e.url+agentv1connect.AgentServiceConnectProcedure, h, bytes.Join(frames, nil))
	return status, msg
}

func TestAnAgentStreamBoundsEachMessageRawAndInflated(t *testing.T) {
	e := startEdge(t, nil)
	k := e.joinedAgent(t)
	exhausted := fmt.Sprint(int(connect.CodeResourceExhausted))
	// A gzip bomb as the first message: 32 MiB inflated, past the 16 MiB.
	if status, msg := e.connectStream(t, k, true, envelope(true, bomb(t, 32<<20))); status != exhausted || !strings.Contains(msg, "inflates past the limit") {
		t.Errorf("a gzip bomb on the agent stream: status %s %s", status, msg)
	}
	// A message declared larger than the limit, uncompressed.
	if status, msg := e.connectStream(t, k, false, envelope(false, make([]byte, apiserver.MaxAgentMessageBytes+1))); status != exhausted || !strings.Contains(msg, "larger than configured max") {
		t.Errorf("an oversized agent message: status %s %s", status, msg)
	}
	if got := e.refusals(t, agentv1connect.AgentServiceConnectProcedure, connect.CodeResourceExhausted); got != 2 {
		t.Errorf("refusals counted: %v, want 2", got)
	}
	// A message under the limit passes the edge: a Hello opens the stream.
	hello, _ := proto.Marshal(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c1"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, _ := k.Assert("c1", "flotilla-test", time.Now())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+agentv1connect.AgentServiceConnectProcedure, io.MultiReader(bytes.NewReader(envelope(false, hello)), blockUntil(ctx)))
	req.Header = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Authorization": {"Bearer " + a}}
	resp, err := h2c().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Grpc-Status") != "" {
		t.Fatalf("a Hello: %d %v", resp.StatusCode, resp.Header)
	}
}

// blockUntil is a request body that sends nothing more until ctx ends.
func blockUntil(ctx context.Context) io.Reader {
	return readerFunc(func([]byte) (int, error) { <-ctx.Done(); return 0, io.EOF })
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestJoinIsRateLimitedPerClientKeyedOnTheForwardedAddressOnlyFromATrustedProxy(t *testing.T) {
	limits := apiserver.DefaultLimits()
	limits.PublicPerClient = apiserver.Rate{PerSecond: 0.001, Burst: 2}
	limits.AuditTokenless = apiserver.Rate{PerSecond: 100, Burst: 100} // every refusal audited, for the count below
	join := func(e *edgePlane, forwardedFor string) error {
		req := connect.NewRequest(&agentv1.JoinRequest{Cluster: "c1", Token: "flj_garbage", PublicKey: make([]byte, 32)})
		if forwardedFor != "" {
			req.Header().Set("X-Forwarded-For", forwardedFor)
		}
		_, err := agentv1connect.NewAgentServiceClient(http.DefaultClient, e.url).Join(context.Background(), req)
		return err
	}
	limited := func(err error) bool { return connect.CodeOf(err) == connect.CodeResourceExhausted }

	// Behind a trusted proxy (the test, on loopback): each forwarded client
	// has its own bucket, and the proxy's own hop is skipped.
	trusted := startEdge(t, nil, apiserver.WithLimits(limits), apiserver.WithTrustedProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}))
	for i, want := range []bool{false, false, true} {
		if err := join(trusted, "203.0.113.7"); limited(err) != want {
			t.Fatalf("trusted proxy, client A, join %d: %v (limited: want %v)", i+1, err, want)
		}
	}
	if err := join(trusted, "203.0.113.8, 127.0.0.1"); limited(err) {
		t.Fatalf("trusted proxy, client B behind two proxies: %v; want its own bucket", err)
	}
	if err := join(trusted, "203.0.113.7, 127.0.0.9"); !limited(err) {
		t.Fatalf("trusted proxy, client A through another trusted hop: %v; want A's bucket (empty)", err)
	}

	// From a peer that is not a trusted proxy, X-Forwarded-For is the
	// client's word: every request is the peer's, whatever it claims.
	untrusted := startEdge(t, nil, apiserver.WithLimits(limits), apiserver.WithTrustedProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}))
	for i, want := range []bool{false, false, true, true} {
		if err := join(untrusted, fmt.Sprintf("198.51.100.%d", i+1)); limited(err) != want {
			t.Fatalf("untrusted peer spoofing X-Forwarded-For, join %d: %v (limited: want %v)", i+1, err, want)
		}
	}
	if got := untrusted.refusals(t, agentv1connect.AgentServiceJoinProcedure, connect.CodeResourceExhausted); got != 2 {
		t.Errorf("rate-limited joins counted: %v, want 2", got)
	}
	if got := untrusted.refusals(t, agentv1connect.AgentServiceJoinProcedure, connect.CodeUnauthenticated); got != 2 {
		t.Errorf("garbage-token joins counted: %v, want 2", got)
	}
	// Refused joins are audited as the peer's, not as what it claimed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs, err := untrusted.st.Audit(context.Background(), store.AuditQuery{Refused: true, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var joins int
		for _, r := range recs {
			if r.Operation == "Join" {
				joins++
				if r.Actor != "anonymous@127.0.0.1" {
					t.Fatalf("a refused join audited as %q", r.Actor)
				}
			}
		}
		if joins == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d refused joins in the audit, want 4", joins)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAPrincipalMayHoldOnlySoManyStreamsOpen(t *testing.T) {
	limits := apiserver.DefaultLimits()
	limits.StreamsPerPrincipal = 2
	e := startEdge(t, nil, apiserver.WithLimits(limits))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(c flotillav1alpha1connect.FleetServiceClient) (*connect.ServerStreamForClient[pb.WatchFleetResponse], error) {
		s, err := c.WatchFleet(ctx, connect.NewRequest(&pb.WatchFleetRequest{}))
		if err != nil {
			return nil, err
		}
		if !s.Receive() { // the first summary: the stream is admitted
			return s, s.Err()
		}
		return s, nil
	}
	var streams []*connect.ServerStreamForClient[pb.WatchFleetResponse]
	for i := range 2 {
		s, err := open(e.fleet)
		if err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		streams = append(streams, s)
	}
	if _, err := open(e.fleet); connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "streams open") {
		t.Fatalf("a third stream of the same principal: %v", err)
	}
	// Another principal has its own count.
	other := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, e.url, testauth.Bearer(testauth.Token(t, e.auth, "user:other@example.com", authn.MethodOIDC)))
	if _, err := open(other); err != nil {
		t.Fatalf("another principal's stream: %v", err)
	}
	// A closed stream frees its place.
	streams[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := open(e.fleet)
		if err == nil {
			s.Close()
			break
		}
		if connect.CodeOf(err) != connect.CodeResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a stream after one closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failing is a store whose reads fail with text no caller may see: a fault
// the real store does not produce on demand.
type failing struct {
	store.Store
	fail bool
}

var errSecret = errors.New(`pq: relation "secret_table_xyz" does not exist`)

func (f *failing) Get(ctx context.Context, fqn string) (store.Record, error) {
	if f.fail {
		return store.Record{}, errSecret
	}
	return f.Store.Get(ctx, fqn)
}

func (f *failing) Credential(ctx context.Context, hash string) (store.Credential, error) {
	if f.fail {
		return store.Credential{}, errSecret
	}
	return f.Store.Credential(ctx, hash)
}

func TestInternalErrorsReachCallersAsAnIdThatTheLogHolds(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	f := &failing{Store: st}
	e := startEdge(t, f)
	apply(t, e.api, res("Organization", md("acme"), nil))
	f.fail = true
	ctx := context.Background()
	_, getErr := e.api.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Organization", Fqn: "organizations/acme"}))
	_, joinErr := agentv1connect.NewAgentServiceClient(http.DefaultClient, e.url).Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: "c1", Token: "flj_x", PublicKey: make([]byte, 32)}))
	for name, err := range map[string]error{"get": getErr, "join": joinErr} {
		if err == nil || strings.Contains(err.Error(), "secret_table") || strings.Contains(err.Error(), "pq:") {
			t.Errorf("%s: %v; want an error without the store's text", name, err)
		}
	}
	var ce *connect.Error
	if !errors.As(getErr, &ce) || ce.Code() != connect.CodeInternal || !strings.HasPrefix(ce.Message(), "internal error (id ") {
		t.Fatalf("get: %v; want internal error with an id", getErr)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(ce.Message(), "internal error (id "), "): the server log has its details")
	if logs := e.log.String(); !strings.Contains(logs, "id="+id) || !strings.Contains(logs, "secret_table_xyz") {
		t.Fatalf("the server log lacks id %s with the store's error:\n%s", id, logs)
	}
	if connect.CodeOf(joinErr) != connect.CodeUnavailable {
		t.Errorf("join with the store failing: %v; want Unavailable", joinErr)
	}
}
