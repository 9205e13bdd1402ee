package central

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
)

// A delta out of sequence or a digest that differs gets a Resync on the
// stream, and the registry keeps its state until the full report comes;
// ListServices shows the registry, and a disconnect marks it stale.
func TestARuntimeGapOrDigestMismatchAsksForAFullReport(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cred, err := h.join("c1", h.onboard(t, "c1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s := h.agent.Connect(ctx)
	s.RequestHeader().Set("Authorization", cred.header())
	send := func(m *agentv1.ConnectRequest) {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	resyncs := make(chan string, 8)
	go func() {
		for {
			msg, err := s.Receive()
			if err != nil {
				close(resyncs)
				return
			}
			if r := msg.GetResync(); r != nil {
				resyncs <- r.GetReason()
			}
		}
	}()
	awaitResync := func(what string) {
		t.Helper()
		select {
		case why, ok := <-resyncs:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			t.Logf("%s: resync because %s", what, why)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no Resync", what)
		}
	}
	rt := func(m *agentv1.Runtime) *agentv1.ConnectRequest {
		return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: m}}
	}
	reviews := func(ready uint32) *agentv1.ServiceState {
		return &agentv1.ServiceState{Namespace: "shop", Name: "reviews", Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}},
			Endpoints: []*agentv1.LocalityEndpoints{{Region: "region-1", Zone: "zone-1a", Ready: ready}}}
	}
	send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c1"}}})
	send(rt(&agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{reviews(2)}}))
	send(rt(&agentv1.Runtime{Seq: 3, Services: []*agentv1.ServiceState{reviews(9)}})) // seq 2 never came
	awaitResync("a gap")
	ready := func() uint32 {
		res, err := h.fleet.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{Namespace: "shop", Name: "reviews"}))
		if err != nil || len(res.Msg.GetServices()) != 1 {
			t.Fatalf("list services: %v %v", res, err)
		}
		return res.Msg.GetServices()[0].GetInstances()[0].GetReady()
	}
	if got := ready(); got != 2 {
		t.Fatalf("after the refused delta, ready %d; want the full report's 2", got)
	}
	state := map[string]*agentv1.ServiceState{"shop/reviews": reviews(5)}
	send(rt(&agentv1.Runtime{Seq: 4, Full: true, Services: []*agentv1.ServiceState{reviews(5)}}))
	send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Digest{Digest: &agentv1.RuntimeDigest{Seq: 4, Sha256: registry.Digest(state, nil)}}})
	send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Digest{Digest: &agentv1.RuntimeDigest{Seq: 4, Sha256: registry.Digest(map[string]*agentv1.ServiceState{"shop/reviews": reviews(6)}, nil)}}})
	awaitResync("a digest that differs")
	select {
	case why := <-resyncs:
		t.Fatalf("the matching digest also got a Resync (%s)", why)
	default:
	}
	if got := ready(); got != 5 {
		t.Fatalf("ready %d; want the second full report's 5", got)
	}
	// The agent goes away.
	_ = s.CloseRequest()
	_ = s.CloseResponse()
	deadline := time.Now().Add(10 * time.Second)
	var last any
	for time.Now().Before(deadline) {
		res, err := h.fleet.ListServices(context.Background(), connect.NewRequest(&pb.ListServicesRequest{Namespace: "shop"}))
		if err == nil && len(res.Msg.GetServices()) == 1 && res.Msg.GetServices()[0].GetInstances()[0].GetStale() {
			return
		}
		last = []any{res.Msg, err}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the disconnected cluster's service is not kept as stale: %v", last)
}

// multiclusterIntent is a workspace over shop in every cluster, with a
// setting that exposes all of its services through east-west gateways.
func multiclusterIntent(t *testing.T) []*pb.Resource {
	t.Helper()
	mk := func(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
		s, err := structpb.NewStruct(spec)
		if err != nil {
			t.Fatal(err)
		}
		return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
	}
	return []*pb.Resource{
		mk("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		mk("Workspace", &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/shop"}}}),
		mk("WorkspaceSetting", &pb.Metadata{Name: "mc", Organization: "acme", Tenant: "t", Workspace: "shop"}, map[string]any{
			"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}},
		}),
	}
}

// report is a full runtime report: reviews with ready endpoints (none when
// 0), and an east-west gateway at address.
func report(seq uint64, address string, ready uint32, extra ...*agentv1.ServiceState) *agentv1.ConnectRequest {
	reviews := &agentv1.ServiceState{Namespace: "shop", Name: "reviews", Selector: map[string]string{"app": "reviews"},
		Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}}}
	if ready > 0 {
		reviews.Endpoints = []*agentv1.LocalityEndpoints{{Region: "region-1", Zone: "zone-1a", Ready: ready}}
	}
	m := &agentv1.Runtime{Seq: seq, Full: true, Services: append([]*agentv1.ServiceState{reviews}, extra...),
		EastWestGateway: &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: address, Port: 15443}}
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: m}}
}

// instances lists, through the API, the clusters that run namespace/name,
// each as "<cluster>:<ready>", with "(stale)" when it is.
func (h *harness) instances(t *testing.T, namespace, name string) []string {
	t.Helper()
	res, err := h.fleet.ListServices(context.Background(), connect.NewRequest(&pb.ListServicesRequest{Namespace: namespace, Name: name}))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range res.Msg.GetServices() {
		for _, in := range s.GetInstances() {
			e := fmt.Sprintf("%s:%d", in.GetCluster()[strings.LastIndex(in.GetCluster(), "/")+1:], in.GetReady())
			if in.GetStale() {
				e += "(stale)"
			}
			out = append(out, e)
		}
	}
	return out
}

// eventually polls h's registry through the API until namespace/name runs
// in exactly want, for at most 10 s.
func (h *harness) eventually(t *testing.T, namespace, name string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		if got = h.instances(t, namespace, name); slices.Equal(got, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s/%s runs in %v; want %v", namespace, name, got, want)
}

// Two replicas on one PostgreSQL, each serving one cluster's agent: each
// replica's registry holds the other's cluster too, so each cluster's
// bundle carries the other's endpoints; a scale to zero and a disconnect
// on one replica reach the other.
func TestEveryReplicaKnowsTheServicesOfClustersTheOthersServe(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := startOn(t, url, Shared())
	b := startOn(t, url, Shared())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := a.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: multiclusterIntent(t)})); err != nil {
		t.Fatal(err)
	}
	c1 := a.fakeAgent(t, ctx, "c1")
	c2 := b.fakeAgent(t, ctx, "c2")
	ratings := &agentv1.ServiceState{Namespace: "shop", Name: "ratings", Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}},
		Endpoints: []*agentv1.LocalityEndpoints{{Region: "region-2", Zone: "zone-2a", Ready: 1}}}
	if err := c1.stream.Send(report(1, "10.0.0.1", 2)); err != nil {
		t.Fatal(err)
	}
	if err := c2.stream.Send(report(1, "10.0.0.2", 3, ratings)); err != nil {
		t.Fatal(err)
	}
	// Each cluster's bundle, from its own replica, has the other's gateway.
	c1.await(t, `"address":"10.0.0.2"`)
	c2.await(t, `"address":"10.0.0.1"`)
	a.eventually(t, "shop", "ratings", "c2:1")
	b.eventually(t, "shop", "reviews", "c1:2", "c2:3")
	a.eventually(t, "shop", "reviews", "c1:2", "c2:3")

	// c2 scales reviews to zero: c1's replica learns it.
	if err := c2.stream.Send(report(2, "10.0.0.2", 0, ratings)); err != nil {
		t.Fatal(err)
	}
	a.eventually(t, "shop", "reviews", "c1:2", "c2:0")

	// c2's agent goes away: a keeps its endpoints, marked stale.
	c2.stream.CloseRequest()
	c2.stream.CloseResponse()
	a.eventually(t, "shop", "ratings", "c2:1(stale)")
}

// A restarted server knows its clusters' services before any agent
// reports again, so the first bundle it sends a cluster still carries the
// remote endpoints: the cluster's version does not move, and nothing is
// pruned.
func TestARestartedServerKeepsTheRemoteEndpointsUntilTheAgentsReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flotilla.db")
	h := startOn(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: multiclusterIntent(t)})); err != nil {
		t.Fatal(err)
	}
	c1 := h.fakeAgent(t, ctx, "c1")
	c2 := h.fakeAgent(t, ctx, "c2")
	if err := c1.stream.Send(report(1, "10.0.0.1", 2)); err != nil {
		t.Fatal(err)
	}
	if err := c2.stream.Send(report(1, "10.0.0.2", 3)); err != nil {
		t.Fatal(err)
	}
	// The bundle made from both reports (c1's own gateway address and
	// c2's); one made from c2's alone may come first.
	first := c1.await(t, `"address":"10.0.0.2"`, `"address":"10.0.0.1"`)
	before := first.GetVersion()
	// The server ran with both agents: their snapshots are stored, and so is
	// their status, connected (at the next flush tick).
	deadline := time.Now().Add(10 * time.Second)
	for {
		snaps, _, err := h.c.st.Runtimes(ctx, -1, nil)
		if err != nil {
			t.Fatal(err)
		}
		connected := 0
		for _, c := range []string{"c1", "c2"} {
			if r, err := h.c.st.Get(ctx, "organizations/acme/clusters/"+c); err == nil && strings.Contains(string(r.Status), `"connected":true`) {
				connected++
			}
		}
		if len(snaps) == 2 && connected == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d runtime snapshots and %d connected statuses stored; want 2 and 2", len(snaps), connected)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.stop()

	again := startOn(t, path)
	<-again.c.Ready()
	again.c.mu.Lock()
	after := again.c.version("organizations/acme/clusters/c1")
	again.c.mu.Unlock()
	if after != before {
		again.c.mu.Lock()
		content, _ := again.c.content("organizations/acme/clusters/c1")
		again.c.mu.Unlock()
		t.Logf("before: %s\nafter: %s", first.GetContent(), content)
		t.Fatalf("c1's bundle version after the restart is %s; before it, %s (the remote endpoints were lost)", after, before)
	}
	if got := again.instances(t, "shop", "reviews"); !slices.Equal(got, []string{"c1:2", "c2:3"}) {
		t.Fatalf("after the restart, reviews runs in %v", got)
	}
}
