package central

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/central/fleetapi"
)

// An agent that takes deltas gets its first bundle whole, then only what
// changed: a one-object change is a delta of that object, against the
// version it holds, which applied to it hashes to the new version. Its
// partial acknowledgements amend the last one, so status stays whole; and
// a partial one before any whole one ends the stream.
func TestAStreamThatTakesDeltasGetsOnlyWhatChangedAndPartialAcksKeepStatusWhole(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const (
		shop  = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"
		other = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/other"
	)
	intent := func(host string) []*pb.Resource {
		rs := smallGateway(host)
		o := smallGateway("other.example.com")[3]
		o.Metadata.Name = "other"
		return append(rs, o)
	}
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent("a.example.com")})); err != nil {
		t.Fatal(err)
	}
	a := h.fakeAgentWith(t, ctx, &agentv1.Hello{Cluster: "c1", AcceptsDeltas: true})
	first := a.await(t, "a.example.com")
	if first.GetBase() != "" {
		t.Fatalf("the first bundle on a stream is a delta against %s", first.GetBase())
	}
	var held bundle.Bundle
	if err := json.Unmarshal(first.GetContent(), &held); err != nil || len(held.Objects) != 2 {
		t.Fatalf("first bundle: %d objects, %v", len(held.Objects), err)
	}
	whole := &agentv1.Ack{BundleVersion: first.GetVersion(), Revision: first.GetRevision(), Resources: []*agentv1.ResourceStatus{
		{Fqn: other, State: fleetapi.StateApplied, Message: "1 object(s)"}, {Fqn: shop, State: fleetapi.StateApplied, Message: "1 object(s)"}}}
	if err := a.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: whole}}); err != nil {
		t.Fatal(err)
	}

	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent("b.example.com")})); err != nil {
		t.Fatal(err)
	}
	next := a.await(t, "b.example.com")
	if next.GetBase() != first.GetVersion() {
		t.Fatalf("a one-object change came whole (base %q), not as a delta against %s", next.GetBase(), first.GetVersion())
	}
	var d bundle.Delta
	if err := json.Unmarshal(next.GetContent(), &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Objects) != 1 || d.Objects[0].FQN != shop || len(d.Groups)+len(d.Removed)+len(d.RemovedGroups) != 0 || d.SetMulticluster {
		t.Fatalf("the delta of a one-object change carries more than that object: %s", next.GetContent())
	}
	if got := held.Apply(d).Version(); got != next.GetVersion() {
		t.Fatalf("the held bundle with the delta hashes to %s, not %s", got, next.GetVersion())
	}

	// A partial acknowledgement: shop failed there; other's status stands.
	now := &agentv1.Ack{BundleVersion: next.GetVersion(), Revision: next.GetRevision(), Resources: []*agentv1.ResourceStatus{
		{Fqn: other, State: fleetapi.StateApplied, Message: "1 object(s)"}, {Fqn: shop, State: fleetapi.StateFailed, Message: "denied by policy"}}}
	partial := ack.Diff(whole, now)
	if len(partial.GetResources()) != 1 {
		t.Fatalf("partial ack: %v", partial)
	}
	if err := a.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: partial}}); err != nil {
		t.Fatal(err)
	}
	state := func(fqn string) (string, string) {
		res, err := h.fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: fqn}))
		if err != nil || len(res.Msg.GetClusters()) == 0 {
			t.Fatalf("status of %s: %v %v", fqn, res, err)
		}
		for _, row := range res.Msg.GetClusters() {
			if row.GetCluster() == "organizations/acme/clusters/c1" || row.GetCluster() == "c1" {
				return row.GetState(), row.GetMessage()
			}
		}
		t.Fatalf("status of %s has no row for c1: %v", fqn, res.Msg)
		return "", ""
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, msg := state(shop)
		if s == fleetapi.StateFailed && msg == "denied by policy" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shop in c1 is %s (%s) after the partial ack", s, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s, _ := state(other); s != fleetapi.StateApplied {
		t.Fatalf("other in c1 is %s after a partial ack that did not name it", s)
	}

	// A partial acknowledgement with none before it on the stream.
	b := h.fakeAgentWith(t, ctx, &agentv1.Hello{Cluster: "c2", AcceptsDeltas: true})
	<-b.bundles
	if err := b.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: partial}}); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-b.bundles:
			if !ok {
				return // the stream ended
			}
		case <-timeout:
			t.Fatal("a stream that began with a partial acknowledgement goes on")
		}
	}
}
