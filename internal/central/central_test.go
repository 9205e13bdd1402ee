package central

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agentauth"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testauth"
)

func rec(kind, fqn, spec string) store.Record {
	name := fqn[strings.LastIndex(fqn, "/")+1:]
	parent := ""
	if i := strings.LastIndex(fqn, "/"); i > 0 && strings.Count(fqn, "/") > 1 {
		parent = fqn[:strings.LastIndex(fqn[:i], "/")]
	}
	return store.Record{Kind: kind, FQN: fqn, Name: name, Parent: parent, Spec: json.RawMessage(spec), ETag: "e"}
}

// harness is a management plane with its central control plane on a real socket.
type harness struct {
	c     *Central
	auth  *apiserver.Auth
	url   string
	api   flotillav1alpha1connect.ResourceServiceClient
	fleet flotillav1alpha1connect.FleetServiceClient
	agent agentv1connect.AgentServiceClient
	stop  func() // stops the plane and closes its store; idempotent
}

func start(t *testing.T, opts ...Option) *harness {
	t.Helper()
	return startOn(t, filepath.Join(t.TempDir(), "flotilla.db"), opts...)
}

// startOn starts a plane on the store at path: a SQLite file, or a
// postgres:// URL.
func startOn(t *testing.T, path string, opts ...Option) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		st  store.Store
		err error
	)
	if strings.HasPrefix(path, "postgres://") {
		st, err = postgres.Open(ctx, path)
	} else {
		st, err = sqlite.Open(ctx, path)
	}
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := resource.Builtin()
	// The wiring of package plane, which this package's tests cannot import.
	c := New(reg, st, log, opts...)
	auth, token := testauth.New(t)
	srv := apiserver.New(reg, st, log, apiserver.WithReadiness(c.Health), apiserver.WithAuth(auth))
	c.SetAudience(srv.Audience())
	srv.Mount(c.Handler)
	fleet := fleetapi.New(c.FleetView(), reg, st, auth.Policies, log, fleetapi.WithClock(c.now))
	srv.Mount(apiserver.Service(flotillav1alpha1connect.NewFleetServiceHandler, flotillav1alpha1connect.FleetServiceHandler(fleet)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { c.Run(ctx); done <- struct{}{} }()
	go func() { srv.Serve(ctx, ln); done <- struct{}{} }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; <-done; st.Close() }) }
	t.Cleanup(stop)
	url := "http://" + ln.Addr().String()
	h := &harness{c: c, auth: auth, url: url, stop: stop,
		api:   flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url, testauth.Bearer(token)),
		fleet: flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, url, testauth.Bearer(token)),
		agent: agentv1connect.NewAgentServiceClient(h2c(), url, connect.WithGRPC()),
	}
	var rs []*pb.Resource
	for _, y := range []struct {
		kind string
		md   *pb.Metadata
	}{{"Organization", &pb.Metadata{Name: "acme"}}, {"Cluster", &pb.Metadata{Name: "c1", Organization: "acme"}}, {"Cluster", &pb.Metadata{Name: "c2", Organization: "acme"}}} {
		s, _ := structpb.NewStruct(nil)
		rs = append(rs, &pb.Resource{ApiVersion: resource.APIVersion, Kind: y.kind, Metadata: y.md, Spec: s})
	}
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
		t.Fatal(err)
	}
	return h
}

func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

func (h *harness) onboard(t *testing.T, cluster string, ttl time.Duration) string {
	t.Helper()
	res, err := h.fleet.Onboard(context.Background(), connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: cluster, Organization: "acme"}, Ttl: durationpb.New(ttl)}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetToken()
}

// agentKey is a simulated agent's key, as it joined.
type agentKey struct {
	key      agentcred.Key
	cluster  string // as the agent names it
	audience string
}

// header is a fresh Authorization header proving the key.
func (k agentKey) header() string { return k.headerAt(time.Now()) }

// headerAt is header made at now (a test's clock).
func (k agentKey) headerAt(now time.Time) string {
	a, err := k.key.Assert(k.cluster, cmp.Or(k.audience, agentauth.DefaultAudience), now)
	if err != nil {
		panic(err)
	}
	return "Bearer " + a
}

// newKey makes a key for the agent of cluster that has not joined.
func newKey(cluster string) agentKey {
	k, err := agentcred.Generate()
	if err != nil {
		panic(err)
	}
	return agentKey{key: k, cluster: cluster}
}

// join joins cluster with token and a new key.
func (h *harness) join(cluster, token string) (agentKey, error) {
	return h.joinWith(newKey(cluster), token)
}

func (h *harness) joinWith(k agentKey, token string) (agentKey, error) {
	res, err := h.agent.Join(context.Background(), connect.NewRequest(&agentv1.JoinRequest{Cluster: k.cluster, Token: token, PublicKey: k.key.Public()}))
	if err != nil {
		return agentKey{}, err
	}
	k.audience = res.Msg.GetAudience()
	return k, nil
}

// clock is a test's clock: the wall clock moved by an offset the test sets.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func TestAJoinTokenWorksOnceForItsClusterUntilItExpires(t *testing.T) {
	clk := new(clock)
	h := start(t, WithClock(clk.now))
	token := h.onboard(t, "c1", time.Hour)
	if _, err := h.join("c2", token); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "organizations/acme/clusters/c1") {
		t.Fatalf("a token used for another cluster: %v", err)
	}
	if _, err := h.join("c1", token); err != nil {
		t.Fatal(err)
	}
	if _, err := h.join("c1", token); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("a used token: %v", err)
	}
	expiring := h.onboard(t, "c2", time.Second)
	clk.advance(2 * time.Second)
	if _, err := h.join("c2", expiring); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired token: %v", err)
	}
	if _, err := h.join("c2", "flj_made-up"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("an unknown token: %v", err)
	}
	if _, err := h.fleet.Onboard(context.Background(), connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: "c9", Organization: "acme"}})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("onboarding a cluster that does not exist: %v", err)
	}
}

// hello opens a stream proving k, says hello as cluster, and returns the
// first message or the error.
func (h *harness) hello(t *testing.T, k agentKey, cluster string) (*agentv1.ConnectResponse, error) {
	t.Helper()
	return h.helloWith(t, k.header(), cluster)
}

// helloWith is hello with the given Authorization header.
func (h *harness) helloWith(t *testing.T, header, cluster string) (*agentv1.ConnectResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	stream := h.agent.Connect(ctx)
	stream.RequestHeader().Set("Authorization", header)
	// A refusal may close the stream before Hello is written; the reason
	// then comes from Receive, as for any failed Send.
	stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: cluster}}})
	return stream.Receive()
}

func TestACredentialServesOnlyItsOwnClustersStream(t *testing.T) {
	h := start(t)
	cred, err := h.join("c1", h.onboard(t, "c1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.hello(t, cred, "c2"); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("c1's credential on c2's stream: %v", err)
	}
	claimsC2 := cred
	claimsC2.cluster = "c2"
	if _, err := h.hello(t, claimsC2, "c2"); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("c1's key asserting to be c2: %v", err)
	}
	for name, header := range map[string]string{
		"a key that never joined":  newKey("c1").header(),
		"a bearer secret":          "Bearer fla_forged",
		"an assertion used before": "",
		"no credential":            "Basic eDp5",
	} {
		if header == "" {
			header = cred.header()
			if _, err := h.helloWith(t, header, "c1"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.helloWith(t, header, "c1"); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("%s: %v", name, err)
		}
	}
	msg, err := h.hello(t, cred, "c1")
	if err != nil || msg.GetBundle().GetVersion() == "" {
		t.Fatalf("c1's own stream should get its bundle: %v %v", msg, err)
	}
	// The agent's credential opens its stream and nothing else.
	asAgent := testauth.Bearer(strings.TrimPrefix(cred.header(), "Bearer "))
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"get": func() error {
			_, err := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, h.url, asAgent).Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Cluster", Fqn: "organizations/acme/clusters/c1"}))
			return err
		},
		"onboard": func() error {
			_, err := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, h.url, asAgent).Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Fqn: "organizations/acme/clusters/c2"}))
			return err
		},
		"compiled": func() error {
			_, err := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, h.url, asAgent).GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c2"}))
			return err
		},
	} {
		if err := call(); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("an agent credential calls the management API (%s): %v", name, err)
		}
	}
	// c1's stream is open and unacknowledged; c2 has no agent.
	reg := prometheus.NewRegistry()
	if err := h.c.Register(reg); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"flotilla_central_connected_agents":   1,
		"flotilla_central_clusters":           2,
		"flotilla_central_clusters_behind":    2,
		"flotilla_central_bundles_sent_total": 2,
	} {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := -1.0
		for _, f := range families {
			if f.GetName() == name {
				m := f.GetMetric()[0]
				got = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func TestDeletingAClusterRevokesItsTokensAndCredential(t *testing.T) {
	h := start(t)
	cred, err := h.join("c1", h.onboard(t, "c1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	unused := h.onboard(t, "c2", time.Hour)
	for _, name := range []string{"c1", "c2"} {
		if _, err := h.api.Delete(context.Background(), connect.NewRequest(&pb.DeleteRequest{Kind: "Cluster", Metadata: &pb.Metadata{Name: name, Organization: "acme"}})); err != nil {
			t.Fatal(err)
		}
	}
	// At once: the delete's transaction took them.
	if _, err := h.hello(t, cred, "c1"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("a deleted cluster's credential: %v", err)
	}
	if _, err := h.join("c2", unused); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("a deleted cluster's join token: %v", err)
	}
}

// bigGateway is an IngressGateway with enough servers (about 300 KB of
// bundle) that one unread bundle overflows the 64 KB flow-control window the
// stuck agent of the test grants, so sends to it block.
func bigGateway(marker string) []*pb.Resource {
	sel := map[string]any{"names": []any{"*/pay"}}
	mk := func(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
		s, err := structpb.NewStruct(spec)
		if err != nil {
			panic(err)
		}
		return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
	}
	var servers []any
	for i := range 2000 {
		servers = append(servers, map[string]any{
			"name": fmt.Sprintf("s%d", i), "hostname": fmt.Sprintf("%s-%d.example.com", marker, i), "port": 80,
			"routing": map[string]any{"rules": []any{map[string]any{"route": map[string]any{"host": "pay/web.pay.svc.cluster.local", "port": 8080}}}},
		})
	}
	return []*pb.Resource{
		mk("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		mk("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": sel}),
		mk("Group", &pb.Metadata{Name: "g", Organization: "acme", Tenant: "t", Workspace: "w"}, map[string]any{"type": "gateway", "namespaceSelector": sel}),
		mk("IngressGateway", &pb.Metadata{Name: "big", Organization: "acme", Tenant: "t", Workspace: "w", Group: "g"}, map[string]any{
			"workloadSelector": map[string]any{"namespace": "pay", "labels": map[string]any{"istio": "ingressgateway"}},
			"http":             servers,
		}),
	}
}

func TestAClusterThatStopsReadingDoesNotDelayAnotherAndIsDropped(t *testing.T) {
	h := start(t, WithSendTimeout(3*time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	creds := map[string]agentKey{}
	for _, c := range []string{"c1", "c2"} {
		cred, err := h.join(c, h.onboard(t, c, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		creds[c] = cred
	}
	// c1's agent grants the server only 64 KB of unread data.
	small := stuckClient(h)
	open := func(cluster string) *connect.BidiStreamForClient[agentv1.ConnectRequest, agentv1.ConnectResponse] {
		client := h.agent
		if cluster == "c1" {
			client = small
		}
		s := client.Connect(ctx)
		s.RequestHeader().Set("Authorization", creds[cluster].header())
		if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: cluster}}}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	open("c1") // c1's agent is stuck: it never reads again
	c2 := open("c2")
	got := make(chan string, 64)
	go func() {
		for {
			msg, err := c2.Receive()
			if err != nil {
				return
			}
			got <- string(msg.GetBundle().GetContent())
		}
	}()
	<-got // c2's first bundle
	for i := range 5 {
		marker := fmt.Sprintf("change%d", i)
		if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: bigGateway(marker)})); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
		for received := false; !received; {
			select {
			case content := <-got:
				received = strings.Contains(content, marker+"-0.example.com")
			case <-deadline:
				t.Fatalf("c2 did not receive change %d while c1 was stuck", i)
			}
		}
	}
	// c2 got its first bundle and five changes; c1's stream is blocked in
	// its first or second big send, so at most two sends to it completed.
	if sent := testutil.ToFloat64(h.c.metrics.sends); sent < 6 || sent > 8 {
		t.Fatalf("%v bundles sent; want c2's 6 and at most 2 to the stuck c1", sent)
	}
	// Its blocked send times out and the stream is dropped.
	h.awaitDropped(t, "organizations/acme/clusters/c1")
}

// fakeAgent is an agent stream the test drives by hand: it receives
// bundles, and acknowledges only when told to.
type fakeAgent struct {
	stream  *connect.BidiStreamForClient[agentv1.ConnectRequest, agentv1.ConnectResponse]
	bundles chan *agentv1.Bundle
	cred    agentKey
	ended   chan error // the stream's end, once
}

func (h *harness) fakeAgent(t *testing.T, ctx context.Context, cluster string) *fakeAgent {
	t.Helper()
	return h.fakeAgentWith(t, ctx, &agentv1.Hello{Cluster: cluster})
}

// fakeAgentWith is fakeAgent with the given Hello.
func (h *harness) fakeAgentWith(t *testing.T, ctx context.Context, hello *agentv1.Hello) *fakeAgent {
	t.Helper()
	cluster := hello.GetCluster()
	cred, err := h.join(cluster, h.onboard(t, cluster, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return h.connectAs(t, ctx, cred, hello)
}

// connectAs opens a stream to h as the agent holding cred, saying hello.
func (h *harness) connectAs(t *testing.T, ctx context.Context, cred agentKey, hello *agentv1.Hello) *fakeAgent {
	t.Helper()
	s := h.agent.Connect(ctx)
	s.RequestHeader().Set("Authorization", cred.header())
	if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{stream: s, bundles: make(chan *agentv1.Bundle, 64), cred: cred, ended: make(chan error, 1)}
	go func() {
		for {
			msg, err := s.Receive()
			if err != nil {
				a.ended <- err
				close(a.bundles)
				return
			}
			a.bundles <- msg.GetBundle()
		}
	}()
	return a
}

// await returns the first bundle whose content holds every marker.
func (a *fakeAgent) await(t *testing.T, markers ...string) *agentv1.Bundle {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case b, ok := <-a.bundles:
			if !ok {
				t.Fatal("stream ended")
			}
			all := true
			for _, m := range markers {
				all = all && strings.Contains(string(b.GetContent()), m)
			}
			if all {
				return b
			}
		case <-deadline:
			t.Fatalf("no bundle with %q", markers)
		}
	}
}

func (a *fakeAgent) ack(t *testing.T, b *agentv1.Bundle, fqns ...string) {
	t.Helper()
	ack := &agentv1.Ack{BundleVersion: b.GetVersion(), Revision: b.GetRevision()}
	for _, f := range fqns {
		ack.Resources = append(ack.Resources, &agentv1.ResourceStatus{Fqn: f, State: fleetapi.StateApplied, Message: "1 object(s)"})
	}
	if err := a.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: ack}}); err != nil {
		t.Fatal(err)
	}
}

func smallGateway(host string) []*pb.Resource {
	rs := bigGateway("unused")
	spec, _ := structpb.NewStruct(map[string]any{
		"workloadSelector": map[string]any{"namespace": "pay", "labels": map[string]any{"istio": "ingressgateway"}},
		"http": []any{map[string]any{"name": "web", "hostname": host, "port": 80,
			"routing": map[string]any{"rules": []any{map[string]any{"route": map[string]any{"host": "pay/web.pay.svc.cluster.local", "port": 8080}}}}}},
	})
	rs[3].Metadata.Name, rs[3].Spec = "shop", spec
	return rs
}

func TestStatusNeverReportsAChangeReadyBeforeEveryClusterAppliedItsRevision(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const fqn = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"
	agents := map[string]*fakeAgent{"c1": h.fakeAgent(t, ctx, "c1"), "c2": h.fakeAgent(t, ctx, "c2")}
	status := func(min int64) *pb.GetStatusResponse {
		t.Helper()
		res, err := h.fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: fqn, MinRevision: min}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	// notReady reads status 100 times, as fast as the API answers, with and
	// without the write's revision: never READY.
	notReady := func(rev int64, why string) {
		t.Helper()
		for i := range 100 {
			if st := status(rev * int64(i%2)); st.GetAggregate() == fleetapi.Ready {
				t.Fatalf("READY at read %d %s: %v", i, why, st)
			}
		}
	}
	for i := range 10 {
		host := fmt.Sprintf("shop%d.example.com", i)
		res, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallGateway(host)}))
		if err != nil {
			t.Fatal(err)
		}
		rev := res.Msg.GetRevision()
		if rev == 0 {
			t.Fatal("apply returned no revision")
		}
		notReady(rev, "right after the apply, before any cluster acknowledged it")
		b1, b2 := agents["c1"].await(t, host), agents["c2"].await(t, host)
		if b1.GetRevision() < rev || b2.GetRevision() < rev {
			t.Fatalf("bundles with the change carry revisions %d and %d, below the write's %d", b1.GetRevision(), b2.GetRevision(), rev)
		}
		notReady(rev, "after the bundles went out, before any cluster acknowledged them")
		agents["c1"].ack(t, b1, fqn)
		notReady(rev, "when only c1 acknowledged")
		agents["c2"].ack(t, b2, fqn)
		deadline := time.Now().Add(10 * time.Second)
		for st := status(rev); st.GetAggregate() != fleetapi.Ready; st = status(rev) {
			if time.Now().After(deadline) {
				t.Fatalf("not READY after both clusters acknowledged revision %d: %v", rev, st)
			}
			runtime.Gosched()
		}
		for _, row := range status(0).GetClusters() {
			if row.GetRevision() < rev || row.GetState() != fleetapi.StateApplied {
				t.Fatalf("READY with a cluster at revision %d (<%d): %v", row.GetRevision(), rev, row)
			}
		}
	}
}

// A stream whose status session another server replica claimed (its
// agent moved there) ends at the next status write, which the claim
// fences (package statusstore tests what is written then).
func TestAStreamWhoseStatusSessionAnotherReplicaClaimedEnds(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles
	if _, err := h.c.st.ClaimStatus(ctx, "organizations/acme/clusters/c1"); err != nil {
		t.Fatal(err)
	}
	// A report moves the status: the next flush writes it, and is fenced.
	if err := a.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Drift{Drift: &agentv1.Drift{Name: "moved"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.ended:
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "another server replica serves this cluster now") {
			t.Fatalf("the stream ended with %v; want Unavailable: another replica serves the cluster", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream of a fenced session stayed open")
	}
}

func TestAnIdleAgentStreamOutlivesTheSendTimeout(t *testing.T) {
	h := start(t, WithSendTimeout(500*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: bigGateway("big")})); err != nil {
		t.Fatal(err)
	}
	a := h.fakeAgent(t, ctx, "c1")
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallGateway("idle0.example.com")})); err != nil {
		t.Fatal(err)
	}
	a.await(t, "idle0.example.com") // c1's last write so far
	// The stimulus is idleness, measured by the server's own clock: c2's
	// agent opens its stream only now and never reads, so its first (big)
	// bundle blocks in a write that began after c1's last one. When the
	// send timeout drops c2, a deadline left behind by c1's last write has
	// passed as well.
	k, err := h.join("c2", h.onboard(t, "c2", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	stuck := stuckClient(h).Connect(ctx)
	stuck.RequestHeader().Set("Authorization", k.header())
	if err := stuck.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c2"}}}); err != nil {
		t.Fatal(err)
	}
	h.awaitDropped(t, "organizations/acme/clusters/c2")
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallGateway("idle1.example.com")})); err != nil {
		t.Fatal(err)
	}
	a.await(t, "idle1.example.com") // on the same stream: it fails if the stream was reset
}

// stuckClient is an agent client that grants the server only 64 KB of
// unread data, and takes no compression (compressed, the test's bundles
// would fit).
func stuckClient(h *harness) agentv1connect.AgentServiceClient {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return agentv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{Protocols: p,
		HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 64 << 10}}}, h.url,
		connect.WithGRPC(), connect.WithAcceptCompression("gzip", nil, nil))
}

// awaitDropped waits until the cluster has no stream to this server.
func (h *harness) awaitDropped(t *testing.T, fqn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.c.mu.Lock()
		open := h.c.clusters[fqn].conn != nil
		h.c.mu.Unlock()
		if !open {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream of %s was not dropped", fqn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAStoredGroupThatCannotBeUsedShowsAsFailedInStatusReadinessAndMetrics(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallGateway("shop.example.com")})); err != nil {
		t.Fatal(err)
	}
	const group = "organizations/acme/tenants/t/workspaces/w/groups/g"
	good, err := h.c.st.Get(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	// A record no validation would let through, as a bad migration or a
	// hand edit of the database could leave it.
	bad := good
	bad.Spec = json.RawMessage(`{"type":"gateway","bogus":true}`)
	put := func(r store.Record) int64 {
		var rev int64
		if err := h.c.st.Update(ctx, "db-admin", func(tx store.Tx) error {
			_, err := tx.Put(ctx, r)
			rev = tx.Revision()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return rev
	}
	readyz := func() (int, string) {
		resp, err := http.Get(h.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	rev := put(bad)
	var st *pb.GetStatusResponse
	eventually := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %v", what, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	status := func() *pb.GetStatusResponse {
		res, err := h.fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: group + "/ingressgateways/shop", MinRevision: rev}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	eventually("FAILED with the reason", func() bool {
		st = status()
		return st.GetAggregate() == fleetapi.Failed && strings.Contains(st.GetError(), group+" cannot be used") && strings.Contains(st.GetError(), "bogus")
	})
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") || !strings.Contains(body, "server log") || strings.Contains(body, "bogus") || strings.Contains(body, "record") {
		t.Fatalf("readyz with a broken record: %d %q (must say not ready, without internal detail)", code, body)
	}
	reg := prometheus.NewRegistry()
	h.c.Register(reg)
	if v := gaugeValue(t, reg, "flotilla_central_bundles_failing"); v != 1 {
		t.Fatalf("flotilla_central_bundles_failing = %v with a broken record", v)
	}
	rev = put(good)
	eventually("recovers once the record is fixed", func() bool { st = status(); return st.GetError() == "" })
	if code, _ := readyz(); code != http.StatusOK {
		t.Fatalf("readyz after the fix: %d", code)
	}
	if v := gaugeValue(t, reg, "flotilla_central_bundles_failing"); v != 0 {
		t.Fatalf("flotilla_central_bundles_failing = %v after the fix", v)
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestBundlesOnlyEverReflectWholeTransactions(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles    // the empty first bundle
	const n = 2500 // two and a half event batches in one transaction
	rs := bigGateway("unused")[:2]
	group, _ := structpb.NewStruct(map[string]any{"type": "traffic", "configMode": "DIRECT", "namespaceSelector": map[string]any{"names": []any{"*/pay"}}})
	rs = append(rs, &pb.Resource{ApiVersion: resource.APIVersion, Kind: "Group", Metadata: &pb.Metadata{Name: "direct", Organization: "acme", Tenant: "t", Workspace: "w"}, Spec: group})
	rs[1].Spec, _ = structpb.NewStruct(map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/pay"}}})
	for i := range n {
		spec, _ := structpb.NewStruct(map[string]any{"hosts": []any{fmt.Sprintf("h%04d.example.com", i)}, "http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web"}}}}}})
		rs = append(rs, &pb.Resource{ApiVersion: "networking.istio.io/v1", Kind: "VirtualService", Metadata: &pb.Metadata{Name: fmt.Sprintf("vs%04d", i), Namespace: "pay", Organization: "acme", Tenant: "t", Workspace: "w", Group: "direct"}, Spec: spec})
	}
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-a.bundles:
		var got bundle.Bundle
		if err := json.Unmarshal(b.GetContent(), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Objects) != n {
			t.Fatalf("the first bundle after a %d-object apply holds %d objects: a partial transaction reached the cluster", n, len(got.Objects))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no bundle")
	}
}

func TestOnboardingAClusterWithAConnectedAgentNeedsForceAndNeverSilentlyTakesOver(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles
	// Without force, no new token while the agent is connected...
	_, err := h.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: "c1", Organization: "acme"}}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("onboarding a cluster with a connected agent: %v", err)
	}
	res, err := h.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: "c1", Organization: "acme"}, Force: true}))
	if err != nil {
		t.Fatalf("a forced onboarding: %v", err)
	}
	forced := res.Msg.GetToken()
	// The live agent keeps working until the forced token is used.
	if err := a.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: &agentv1.Ack{BundleVersion: "x"}}}); err != nil {
		t.Fatalf("the live agent's stream broke: %v", err)
	}
	if _, err := h.join("c1", forced); err != nil {
		t.Fatalf("joining with the forced token: %v", err)
	}
	// The join ended the old agent's stream before it returned.
	h.c.mu.Lock()
	old := h.c.clusters["organizations/acme/clusters/c1"].conn
	h.c.mu.Unlock()
	if old != nil {
		t.Fatal("the replaced agent's stream is still the cluster's after the forced join")
	}
	if err := <-a.ended; connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "onboard the cluster again") {
		t.Fatalf("the replaced agent's stream ended with %v; want Unauthenticated, so that it stops", err)
	}
	if _, err := h.hello(t, a.cred, "c1"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("the replaced agent's key after the forced join: %v", err)
	}
}

func TestAnUnforcedTokenCannotReplaceAConnectedAgent(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles
	// A token issued while the agent was briefly away, used once it is back.
	const c1 = "organizations/acme/clusters/c1"
	h.c.mu.Lock()
	epoch := h.c.clusters[c1].conn.epoch
	h.c.mu.Unlock()
	h.c.status.Close(c1, epoch)
	stale := h.onboard(t, "c1", time.Hour)
	h.c.status.Open(c1, epoch, &agentv1.Hello{Cluster: "c1"})
	if _, err := h.join("c1", stale); connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "connected agent") {
		t.Fatalf("a join over a connected agent: %v", err)
	}
	if _, err := h.hello(t, a.cred, "c1"); err != nil {
		t.Fatalf("the live agent's credential stopped working: %v", err)
	}
}
