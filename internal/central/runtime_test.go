package central

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/registry"
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
	s.RequestHeader().Set("Authorization", "Bearer "+cred)
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
