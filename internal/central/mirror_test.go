package central

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
)

// Two replicas on one PostgreSQL answer the status of a cluster whichever
// serves it, from the status feed: the replica that does not serve c1 sees
// its acknowledgement; when c1's agent moves, the replica it left mirrors
// the new one's status (a later acknowledgement); when it leaves, both
// replicas say so.
func TestEveryReplicaAnswersTheStatusOfClustersTheOthersServe(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := startOn(t, url, Shared())
	b := startOn(t, url, Shared())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const igw = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"
	apply := func(host string) int64 {
		t.Helper()
		res, err := a.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallGateway(host)}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetRevision()
	}
	// row waits until h says c1 is in state at revision rev or later, and
	// whether its agent is connected.
	row := func(h *harness, name, state string, rev int64, connected bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		var last string
		for time.Now().Before(deadline) {
			res, err := h.fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: igw}))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Msg.GetClusters() {
				if r.GetCluster() == "c1" {
					if r.GetState() == state && r.GetRevision() >= rev && r.GetConnected() == connected {
						return
					}
					last = fmt.Sprintf("%s at revision %d (connected %v): %s", r.GetState(), r.GetRevision(), r.GetConnected(), r.GetMessage())
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("replica %s: c1 is %s; want %s at revision %d or later (connected %v)", name, last, state, rev, connected)
	}

	rev := apply("shop1.example.com")
	onA := a.fakeAgent(t, ctx, "c1")
	onA.ack(t, onA.await(t, "shop1.example.com"), igw)
	row(a, "a", fleetapi.StateApplied, rev, true)
	row(b, "b", fleetapi.StateApplied, rev, true)

	// The agent moves to b (it has the bundle, as b's mirror of its status
	// says, so b sends the next one); a lets go and mirrors b's status from
	// then on.
	onA.stream.CloseRequest()
	onA.stream.CloseResponse()
	onB := b.connectAs(t, ctx, onA.cred, &agentv1.Hello{Cluster: "c1"})
	rev = apply("shop2.example.com")
	onB.ack(t, onB.await(t, "shop2.example.com"), igw)
	row(b, "b", fleetapi.StateApplied, rev, true)
	row(a, "a", fleetapi.StateApplied, rev, true)

	// The agent leaves b: both replicas say c1 is disconnected.
	onB.stream.CloseRequest()
	onB.stream.CloseResponse()
	row(b, "b", fleetapi.StateApplied, rev, false)
	row(a, "a", fleetapi.StateApplied, rev, false)
}
