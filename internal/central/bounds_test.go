package central

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// A runtime report over the registry's bounds is refused whole: the
// cluster's state stays, the agent is told why in one Resync, and for a
// minute after it no report (however out of sync) asks for another.
func TestARuntimeReportOverTheBoundsIsRefusedWithOneResync(t *testing.T) {
	clk := new(clock)
	h := start(t, WithClock(clk.now))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k, err := h.join("c1", h.onboard(t, "c1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s := h.agent.Connect(ctx)
	s.RequestHeader().Set("Authorization", k.headerAt(clk.now()))
	send := func(m *agentv1.ConnectRequest) {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	resyncs := make(chan string, 8)
	go func() {
		defer close(resyncs)
		for {
			msg, err := s.Receive()
			if err != nil {
				return
			}
			if r := msg.GetResync(); r != nil {
				resyncs <- r.GetReason()
			}
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case why, ok := <-resyncs:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			return why
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no Resync", what)
		}
		return ""
	}
	rt := func(m *agentv1.Runtime) *agentv1.ConnectRequest {
		return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: m}}
	}
	web := &agentv1.ServiceState{Namespace: "shop", Name: "web", Endpoints: []*agentv1.LocalityEndpoints{{Region: "r", Zone: "z", Ready: 2}}}
	send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c1"}}})
	send(rt(&agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{web}}))
	huge := &agentv1.ServiceState{Namespace: "shop", Name: strings.Repeat("n", 300)}
	send(rt(&agentv1.Runtime{Seq: 2, Full: true, Services: []*agentv1.ServiceState{huge}}))
	if why := next("a report over the bounds"); !strings.Contains(why, "name has 300 bytes, at most 253") {
		t.Fatalf("the Resync says %q; want what is over the bounds", why)
	}
	res, err := h.fleet.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{}))
	if err != nil || len(res.Msg.GetServices()) != 1 || res.Msg.GetServices()[0].GetName() != "web" {
		t.Fatalf("after the refused report the fleet has %v (%v); want c1's web alone", res.Msg.GetServices(), err)
	}
	// Within the quiet minute, a gap asks for nothing; after it, one does.
	send(rt(&agentv1.Runtime{Seq: 7, Services: []*agentv1.ServiceState{web}}))
	// Once the drift report after it is in, the server has read the gap.
	send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Drift{Drift: &agentv1.Drift{Name: "marker"}}})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cl, _ := h.c.status.Get("organizations/acme/clusters/c1"); len(cl.Drifts) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the drift report never arrived")
		}
	}
	clk.advance(resyncQuiet + time.Second)
	send(rt(&agentv1.Runtime{Seq: 9, Services: []*agentv1.ServiceState{web}}))
	if why := next("a gap after the quiet minute"); !strings.Contains(why, "delta 9") {
		t.Fatalf("the next Resync says %q; want the one for delta 9 (delta 7's came within the quiet minute)", why)
	}
}
