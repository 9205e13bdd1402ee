package central

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/testauth"
)

func TestAJoinWithABadTokenNeverWaitsForTheStoresWriteLock(t *testing.T) {
	h := start(t)
	token := h.onboard(t, "c1", time.Hour)
	// Another writer holds the write lock for as long as the test wants.
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- h.c.st.Update(context.Background(), "test", func(store.Tx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, req := range map[string]*agentv1.JoinRequest{
		"a made-up token":        {Cluster: "c1", Token: "flj_made-up", PublicKey: newKey("c1").key.Public()},
		"an empty token":         {Cluster: "c1", PublicKey: newKey("c1").key.Public()},
		"an overlong token":      {Cluster: "c1", Token: strings.Repeat("x", 10_000), PublicKey: newKey("c1").key.Public()},
		"another cluster's name": {Cluster: "c2", Token: token, PublicKey: newKey("c2").key.Public()},
	} {
		_, err := h.agent.Join(ctx, connect.NewRequest(req))
		if code := connect.CodeOf(err); code != connect.CodeUnauthenticated && code != connect.CodePermissionDenied {
			t.Errorf("%s, with the write lock held: %v; want a refusal at once", name, err)
		}
	}
	if _, err := h.agent.Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: "c1", Token: token, PublicKey: []byte("short")})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "public_key") {
		t.Errorf("a join without a valid public key: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The good token still works once the lock is free: nothing above used it.
	if _, err := h.join("c1", token); err != nil {
		t.Fatalf("the good token after the refusals: %v", err)
	}
}

func TestAJoinThatWasNotNotedCanBeRepeatedWithTheSameKeyOnly(t *testing.T) {
	h := start(t)
	token := h.onboard(t, "c1", time.Hour)
	k, err := h.join("c1", token)
	if err != nil {
		t.Fatal(err)
	}
	// The agent stopped before it noted the join: it joins again with the
	// key it stored before joining, and its credential is the same.
	again, err := h.joinWith(agentKey{key: k.key, cluster: "c1"}, token)
	if err != nil {
		t.Fatalf("the same key joining again with its token: %v", err)
	}
	if again.audience != "flotilla-test" {
		t.Errorf("the join's audience is %q, want the server's issuer", again.audience)
	}
	if msg, err := h.hello(t, k, "c1"); err != nil || msg.GetBundle() == nil {
		t.Fatalf("the key after joining twice: %v %v", msg, err)
	}
	// Another key with the used token is refused, and changes nothing.
	if _, err := h.join("c1", token); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("another key with a used token: %v", err)
	}
	if _, err := h.hello(t, k, "c1"); err != nil {
		t.Fatalf("the joined key after another key's refused join: %v", err)
	}
}

func TestRevokingAClusterEndsItsStreamAtOnceAndItsCredential(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles
	b := h.fakeAgent(t, ctx, "c2")
	<-b.bundles
	res, err := h.fleet.RevokeCluster(ctx, connect.NewRequest(&pb.RevokeClusterRequest{Metadata: &pb.Metadata{Name: "c1", Organization: "acme"}}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetCluster() != "organizations/acme/clusters/c1" || res.Msg.GetCredentials() != 2 || !res.Msg.GetStreamEnded() {
		t.Errorf("revoke answered %v; want c1, its credential and used token, and its stream ended", res.Msg)
	}
	// Right after the call: the stream is no longer the cluster's, and the
	// key opens no other.
	h.c.mu.Lock()
	conn := h.c.clusters["organizations/acme/clusters/c1"].conn
	h.c.mu.Unlock()
	if conn != nil {
		t.Fatal("c1's stream is still open after the revoke returned")
	}
	if _, err := h.hello(t, a.cred, "c1"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("c1's key after the revoke: %v", err)
	}
	if err := <-a.ended; connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("c1's stream ended with %v; want Unauthenticated, revoked", err)
	}
	// c2 is untouched.
	if err := b.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: &agentv1.Ack{BundleVersion: "x"}}}); err != nil {
		t.Fatalf("c2's stream: %v", err)
	}
	if _, err := h.hello(t, b.cred, "c2"); err != nil {
		t.Fatalf("c2's key after c1's revoke: %v", err)
	}
	// The cluster stays: onboarding it again lets a new agent in.
	if _, err := h.join("c1", h.onboard(t, "c1", time.Hour)); err != nil {
		t.Fatalf("joining c1 again after the revoke: %v", err)
	}
	if _, err := h.fleet.RevokeCluster(ctx, connect.NewRequest(&pb.RevokeClusterRequest{Metadata: &pb.Metadata{Name: "c9", Organization: "acme"}})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("revoking a cluster that does not exist: %v", err)
	}
}

func TestAStreamEndsOnItsRecheckOnceItsCredentialIsGone(t *testing.T) {
	h := start(t, WithCredentialRecheck(50*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.fakeAgent(t, ctx, "c1")
	<-a.bundles
	// As another replica's revoke leaves it: the credential gone from the
	// store, this replica not told.
	if err := h.c.st.Update(ctx, "test", func(tx store.Tx) error {
		return tx.DeleteCredentials(ctx, "organizations/acme/clusters/c1", agentcred.KindAgentKey)
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.ended:
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("the stream ended with %v; want Unauthenticated", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived its deleted credential")
	}
}

// Two replicas on one PostgreSQL: a revoke through one ends the cluster's
// stream to the other at that one's next recheck.
func TestARevokeThroughAnotherReplicaEndsTheStreamAtItsRecheck(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := startOn(t, url, Shared())
	b := startOn(t, url, Shared(), WithCredentialRecheck(100*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := b.fakeAgent(t, ctx, "c1")
	<-agent.bundles
	if _, err := a.fleet.RevokeCluster(ctx, connect.NewRequest(&pb.RevokeClusterRequest{Metadata: &pb.Metadata{Name: "c1", Organization: "acme"}})); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-agent.ended:
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("the stream to the other replica ended with %v; want Unauthenticated", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream to the other replica outlived the revoke")
	}
}

func TestAnAgentCredentialIsExtendedOnItsStreamButNotPastItsLongestLife(t *testing.T) {
	clk := new(clock)
	h := start(t, WithClock(clk.now), WithAgentCredentialTTL(time.Hour), WithAgentCredentialMaxLife(2*time.Hour))
	k, err := h.join("c1", h.onboard(t, "c1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// extended opens a stream at the test's time and returns the credential
	// message it brings (the bundle may come before or after it).
	extended := func() *agentv1.AgentCredential {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream := h.agent.Connect(ctx)
		stream.RequestHeader().Set("Authorization", k.headerAt(clk.now()))
		stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c1"}}})
		for range 10 {
			msg, err := stream.Receive()
			if err != nil {
				t.Fatalf("no extension on the stream: %v", err)
			}
			if c := msg.GetCredential(); c != nil {
				return c
			}
		}
		t.Fatal("no extension in the stream's first ten messages")
		return nil
	}
	// Fresh, it is not extended: the stream opens with the bundle.
	if msg, err := h.helloWith(t, k.headerAt(clk.now()), "c1"); err != nil || msg.GetBundle() == nil {
		t.Fatalf("a fresh credential's stream: %v %v", msg, err)
	}
	// With less than a third of its life left, the stream extends it by a
	// full life, keeping the key: nothing secret travels.
	clk.advance(41 * time.Minute)
	c := extended()
	if c.GetFinal() {
		t.Fatalf("no extension at 41 minutes: %v", c)
	}
	if got, want := c.GetExpireTime().AsTime(), clk.now().Add(time.Hour); got.Sub(want).Abs() > 5*time.Second {
		t.Fatalf("extended to %s, want %s", got, want)
	}
	clk.advance(20 * time.Minute) // past the first expiry
	if _, err := h.helloWith(t, k.headerAt(clk.now()), "c1"); err != nil {
		t.Fatalf("the extended credential past its first expiry: %v", err)
	}
	// The next extension stops at two hours from the join, and says so.
	clk.advance(30 * time.Minute)
	c = extended()
	if !c.GetFinal() {
		t.Fatalf("the extension that reaches the longest life: %v", c)
	}
	if left := time.Until(c.GetExpireTime().AsTime()); left > 2*time.Hour+time.Minute || left < 2*time.Hour-time.Minute {
		t.Fatalf("the final extension leaves the credential %s from the join; want two hours", left)
	}
	clk.advance(30 * time.Minute) // 2h01 after the join
	if _, err := h.helloWith(t, k.headerAt(clk.now()), "c1"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("the credential past its longest life: %v", err)
	}
	var ce *connect.Error
	if _, err := h.helloWith(t, k.headerAt(time.Now()), "c1"); !errors.As(err, &ce) || !strings.Contains(err.Error(), "time window") {
		t.Fatalf("an assertion signed by a clock two hours behind the server's: %v", err)
	}
}

// RevokeCluster takes Write on the cluster, as onboarding does: every
// built-in role bound at every level that reaches a cluster (its
// organization, the cluster itself) or does not (a tenant), against what
// its permissions say. A caller without Write changes nothing, whatever it
// may read.
func TestRevokingAClusterTakesWriteOnItForEveryRoleAtEveryLevel(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	const c1 = "organizations/acme/clusters/c1"
	if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{
		resourceOf(t, "Tenant", &pb.Metadata{Name: "t1", Organization: "acme"}, nil),
	}})); err != nil {
		t.Fatal(err)
	}
	perms := map[string]bool{"admin": true, "editor": true, "creator": false, "writer": true, "reader": false} // Write, per docs/access.md
	levels := map[string]struct {
		node    string
		reaches bool
	}{
		"organization": {"organizations/acme", true},
		"cluster":      {c1, true},
		"tenant":       {"organizations/acme/tenants/t1", false},
	}
	for _, role := range authz.BuiltinRoles {
		for level, l := range levels {
			user := "user:" + role + "-at-" + level + "@example.com"
			if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{
				resourceOf(t, "AccessBinding", &pb.Metadata{Name: role + "-" + level, Organization: "acme"}, map[string]any{
					"target": l.node, "allow": []any{map[string]any{"role": role, "subjects": []any{user}}}}),
			}})); err != nil {
				t.Fatal(err)
			}
			// A fresh agent each time (forced: the last case's may be connected).
			tok, err := h.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Fqn: c1, Force: true}))
			if err != nil {
				t.Fatal(err)
			}
			k, err := h.join("c1", tok.Msg.GetToken())
			if err != nil {
				t.Fatal(err)
			}
			as := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, h.url, testauth.Bearer(testauth.Token(t, h.auth, user, authn.MethodOIDC)))
			_, err = as.RevokeCluster(ctx, connect.NewRequest(&pb.RevokeClusterRequest{Fqn: c1}))
			_, helloErr := h.hello(t, k, "c1")
			switch want := perms[role] && l.reaches; {
			case want && (err != nil || connect.CodeOf(helloErr) != connect.CodeUnauthenticated):
				t.Errorf("%s at %s: revoke %v, then the agent's key: %v; want it revoked", role, level, err, helloErr)
			case !want && (connect.CodeOf(err) != connect.CodePermissionDenied && connect.CodeOf(err) != connect.CodeNotFound || helloErr != nil):
				t.Errorf("%s at %s: revoke %v, then the agent's key: %v; want a refusal that changes nothing", role, level, err, helloErr)
			case !want && !l.reaches && connect.CodeOf(err) != connect.CodeNotFound:
				t.Errorf("%s at %s, which does not reach the cluster: %v; want NotFound (it is not theirs to see)", role, level, err)
			}
		}
	}
}

func resourceOf(t *testing.T, kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	t.Helper()
	s, err := structpb.NewStruct(spec)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
}
