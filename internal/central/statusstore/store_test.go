package statusstore

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
)

const (
	c1  = "organizations/acme/clusters/c1"
	c2  = "organizations/acme/clusters/c2"
	igw = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"
)

// openStore opens the store at where (a SQLite file, or a postgres:// URL)
// and, unless another test's opening did, stores organization acme with
// clusters c1 and c2.
func openStore(t *testing.T, where string) store.Store {
	t.Helper()
	ctx := context.Background()
	var (
		st  store.Store
		err error
	)
	if strings.HasPrefix(where, "postgres://") {
		st, err = postgres.Open(ctx, where)
	} else {
		st, err = sqlite.Open(ctx, where)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Get(ctx, c1); err == nil {
		return st
	}
	if err := st.Update(ctx, "test", func(tx store.Tx) error {
		for _, r := range []store.Record{
			{Kind: "Organization", FQN: "organizations/acme", Name: "acme", Spec: json.RawMessage(`{}`)},
			{Kind: "Cluster", FQN: c1, Name: "c1", Parent: "organizations/acme", Spec: json.RawMessage(`{}`)},
			{Kind: "Cluster", FQN: c2, Name: "c2", Parent: "organizations/acme", Spec: json.RawMessage(`{}`)},
		} {
			if _, err := tx.Put(ctx, r); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return st
}

func sqliteFile(t *testing.T) string { return filepath.Join(t.TempDir(), "flotilla.db") }

// streams records the sessions a Store lets go of.
type streams struct {
	mu   sync.Mutex
	gone []session
}

func (s *streams) LetGo(fqn string, epoch int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = append(s.gone, session{fqn, epoch})
}

func (s *streams) sessions() []session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gone)
}

// clock is a test's clock: the wall clock moved by an offset the test sets.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// replica is one server's Store, with its registry, streams and clock,
// tracking c1 and c2 as stored.
type replica struct {
	t        *testing.T
	st       store.Store
	s        *Store
	services *registry.Registry
	streams  *streams
	clock    *clock
}

func newReplica(t *testing.T, st store.Store, shared bool, offset time.Duration) *replica {
	t.Helper()
	r := &replica{t: t, st: st, services: registry.New(), streams: &streams{}, clock: &clock{}}
	r.clock.advance(offset)
	r.s = New(st, r.services, r.streams, slog.New(slog.NewTextHandler(io.Discard, nil)), Config{Shared: shared, Now: r.clock.now})
	for _, fqn := range []string{c1, c2} {
		rec, err := st.Get(context.Background(), fqn)
		if err != nil {
			t.Fatal(err)
		}
		r.s.Track(fqn, rec)
	}
	r.s.SetDesired(1, map[string]string{c1: "v1", c2: "v1"})
	return r
}

// serve claims a session for the cluster and opens it, as a stream's hello.
func (r *replica) serve(fqn string, hello *agentv1.Hello) int64 {
	r.t.Helper()
	epoch, err := r.s.Claim(context.Background(), fqn)
	if err != nil {
		r.t.Fatal(err)
	}
	r.s.Open(fqn, epoch, hello)
	return epoch
}

func (r *replica) report(fqn string, epoch int64, msg *agentv1.ConnectRequest) {
	r.t.Helper()
	if err := r.s.Report(fqn, epoch, msg); err != nil {
		r.t.Fatal(err)
	}
}

func ackOf(version string, rev int64, state string) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: &agentv1.Ack{BundleVersion: version, Revision: rev,
		Resources: []*agentv1.ResourceStatus{{Fqn: igw, State: state, Message: "1 object(s)"}}}}}
}

func (r *replica) flush() {
	r.t.Helper()
	if err := r.s.Flush(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *replica) refresh() {
	r.t.Helper()
	if err := r.s.Refresh(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *replica) get(fqn string) Cluster {
	r.t.Helper()
	cl, ok := r.s.Get(fqn)
	if !ok {
		r.t.Fatalf("%s is not tracked", fqn)
	}
	return cl
}

// stored is the cluster's status as stored, with its resources, and the
// stored bytes.
func stored(t *testing.T, st store.Store, fqn string) (clusterstatus.Status, []clusterstatus.Resource, string) {
	t.Helper()
	rec, err := st.Get(context.Background(), fqn)
	if err != nil {
		t.Fatal(err)
	}
	var s clusterstatus.Status
	var rs []clusterstatus.Resource
	if len(rec.Status) > 0 {
		if err := json.Unmarshal(rec.Status, &s); err != nil {
			t.Fatalf("stored status %s: %v", rec.Status, err)
		}
		_ = json.Unmarshal(s.Resources, &rs)
	}
	return s, rs, string(rec.Status)
}

// The stored status follows partial acknowledgements: one that only moves
// the version keeps the resources' statuses (kept encoded between writes),
// one that changes a resource's state is stored with the change, and one
// that no whole acknowledgement of its session preceded is refused.
func TestStoredStatusFollowsPartialAcknowledgements(t *testing.T) {
	st := openStore(t, sqliteFile(t))
	r := newReplica(t, st, false, 0)
	epoch := r.serve(c1, &agentv1.Hello{Cluster: "c1", Last: &agentv1.Ack{BundleVersion: "v0"}})
	partial := func(version, state string) *agentv1.ConnectRequest {
		a := &agentv1.Ack{BundleVersion: version, Revision: 3, Partial: true}
		if state != "" {
			a.Resources = []*agentv1.ResourceStatus{{Fqn: igw, State: state, Message: "the API server refused it"}}
		}
		return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: a}}
	}
	if err := r.s.Report(c1, epoch, partial("v-early", "")); !errors.Is(err, ErrPartialFirst) {
		t.Fatalf("a partial acknowledgement first in its session: %v", err)
	}
	check := func(version, state, message string) {
		t.Helper()
		r.flush()
		s, rs, raw := stored(t, st, c1)
		if s.BundleVersion != version || len(rs) != 1 || rs[0].State != state || rs[0].Message != message {
			t.Fatalf("stored status %s; want version %s with %s %q", raw, version, state, message)
		}
	}
	r.report(c1, epoch, ackOf("v1", 3, "Applied"))
	check("v1", "Applied", "1 object(s)")
	r.report(c1, epoch, partial("v-next", ""))
	check("v-next", "Applied", "1 object(s)")
	r.report(c1, epoch, partial("v-failed", "Failed"))
	check("v-failed", "Failed", "the API server refused it")
	if s, _, _ := stored(t, st, c1); !s.Connected || s.DesiredBundleVersion != "v1" || s.BundleRevision != 3 || s.AppliedRevision != 3 {
		t.Fatalf("stored status %+v; want connected, desired v1, bundle and applied revision 3", s)
	}
}

// A write that another replica's newer session fenced lets go of the
// cluster: its stream is ended, the stored status stays the new writer's,
// and neither the old stream's late reports nor later flushes write again.
func TestAStatusWriteOfAReplacedSessionIsFencedAndLetsGo(t *testing.T) {
	st := openStore(t, sqliteFile(t))
	r := newReplica(t, st, false, 0)
	epoch := r.serve(c1, &agentv1.Hello{Cluster: "c1"})
	r.flush()
	_, _, before := stored(t, st, c1)
	// Another server replica claims the cluster (its agent moved there).
	if _, err := st.ClaimStatus(context.Background(), c1); err != nil {
		t.Fatal(err)
	}
	r.report(c1, epoch, ackOf("v1", 1, "Applied"))
	r.flush()
	if got := r.streams.sessions(); !slices.Equal(got, []session{{c1, epoch}}) {
		t.Fatalf("let go of %v; want c1's session %d", got, epoch)
	}
	if r.get(c1).Connected {
		t.Fatal("a cluster let go of still counts as connected here")
	}
	r.report(c1, epoch, ackOf("v2", 2, "Applied"))
	r.flush()
	if _, _, after := stored(t, st, c1); after != before {
		t.Fatalf("a server that lost the cluster still writes its status: %s -> %s", before, after)
	}
	if got := r.streams.sessions(); len(got) != 1 {
		t.Fatalf("let go of %v; want c1's session once", got)
	}
}

// A fence of a write under the cluster's previous session, while a
// reconnect here claimed the current one, is our own: the write is made
// again under it and the new stream stays. The same fence under the
// current session means another replica.
func TestAStatusWriteFencedByAReconnectOfOurOwnDoesNotDropTheNewStream(t *testing.T) {
	st := openStore(t, sqliteFile(t))
	r := newReplica(t, st, false, 0)
	old := r.serve(c1, &agentv1.Hello{Cluster: "c1"})
	current := r.serve(c1, &agentv1.Hello{Cluster: "c1"})
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	cl := r.s.clusters[c1]
	cl.dirty = false
	if gone := r.s.letGo([]store.StatusWrite{{FQN: c1, Epoch: old}}, []string{c1}); len(gone) != 0 || !cl.served || cl.epoch != current || !cl.dirty {
		t.Fatalf("a fence of our own let go of %v: served %v epoch %d dirty %v", gone, cl.served, cl.epoch, cl.dirty)
	}
	if gone := r.s.letGo([]store.StatusWrite{{FQN: c1, Epoch: current}}, []string{c1}); !slices.Equal(gone, []session{{c1, current}}) || cl.served || cl.epoch != -1 {
		t.Fatalf("a fence by another replica let go of %v: served %v epoch %d", gone, cl.served, cl.epoch)
	}
}

// A restarted server restores each cluster's stored status before any
// agent reconnects. A "connected" that no writer renews any more is marked
// disconnected and written so, under the stored session: when another
// replica claimed the cluster meanwhile, that write is fenced and the
// other's status stands.
func TestARestartedStoreRestoresStatusAndWritesAnUnrenewedConnectionDisconnected(t *testing.T) {
	st := openStore(t, sqliteFile(t))
	first := newReplica(t, st, false, 0)
	for _, fqn := range []string{c1, c2} {
		epoch := first.serve(fqn, &agentv1.Hello{AgentVersion: "1.2.3"})
		first.report(fqn, epoch, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: &agentv1.Inventory{Full: true, KubernetesVersion: "v1.33.1", Namespaces: []*agentv1.Namespace{{Name: "shop"}}}}})
		first.report(fqn, epoch, ackOf("v1", 1, "Applied"))
	}
	first.flush()
	// The server dies, and starts again later; meanwhile another replica
	// claims c2.
	again := newReplica(t, st, false, staleAfter)
	claimed, err := st.ClaimStatus(context.Background(), c2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutStatus(context.Background(), []store.StatusWrite{{FQN: c2, Epoch: claimed, Status: json.RawMessage(`{"connected":true,"bundleVersion":"v2"}`)}}); err != nil {
		t.Fatal(err)
	}
	got := again.get(c1)
	if got.Connected || got.AgentVersion != "1.2.3" || got.KubernetesVersion != "v1.33.1" || got.Ack.GetBundleVersion() != "v1" || len(got.Ack.GetResources()) != 1 || got.LastSeen.IsZero() {
		t.Fatalf("c1 restored as %+v", got)
	}
	if in := again.s.Reported(c1); !slices.Equal(in.Namespaces, []string{"shop"}) {
		t.Fatalf("c1's namespaces restored as %v", in.Namespaces)
	}
	again.flush()
	if s, rs, raw := stored(t, st, c1); s.Connected || s.BundleVersion != "v1" || len(rs) != 1 {
		t.Fatalf("c1's stored status after the restart: %s; want it disconnected, the rest as it was", raw)
	}
	if s, _, raw := stored(t, st, c2); !s.Connected || s.BundleVersion != "v2" {
		t.Fatalf("c2's stored status after the restart: %s; want the other replica's", raw)
	}
}

// Two replicas on one PostgreSQL: the one that does not serve c1 mirrors
// its status from the status feed; when the agent moves to it, the one it
// left is fenced at its next write, lets go, and mirrors the new writer's
// status; once that writer stops renewing it, the mirror says
// disconnected.
func TestAReplicaMirrorsTheStatusOfClustersAnotherServes(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := newReplica(t, openStore(t, url), true, 0)
	b := newReplica(t, openStore(t, url), true, 0)
	onA := a.serve(c1, &agentv1.Hello{AgentVersion: "1"})
	a.report(c1, onA, ackOf("v1", 1, "Applied"))
	a.flush()
	b.refresh()
	b.refresh() // a row the feed hands without its body is read whole at the next
	if got := b.get(c1); !got.Connected || got.AgentVersion != "1" || got.Ack.GetBundleVersion() != "v1" {
		t.Fatalf("b mirrors c1 as %+v", got)
	}

	// The agent moves to b.
	onB := b.serve(c1, &agentv1.Hello{AgentVersion: "2", Last: &agentv1.Ack{BundleVersion: "v1", Revision: 1}})
	b.report(c1, onB, ackOf("v2", 2, "Applied"))
	b.flush()
	a.report(c1, onA, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Drift{Drift: &agentv1.Drift{Name: "late"}}})
	a.flush()
	if got := a.streams.sessions(); !slices.Equal(got, []session{{c1, onA}}) {
		t.Fatalf("a let go of %v; want c1's session %d", got, onA)
	}
	a.refresh()
	if got := a.get(c1); !got.Connected || got.AgentVersion != "2" || got.Ack.GetBundleVersion() != "v2" {
		t.Fatalf("a mirrors c1 as %+v after the agent moved to b", got)
	}

	// b stops renewing c1's status (it died): a says so, and writes it.
	a.clock.advance(staleAfter)
	a.refresh()
	if a.get(c1).Connected {
		t.Fatal("a mirror whose writer stopped renewing it still says connected")
	}
	a.flush()
	if s, _, raw := stored(t, a.st, c1); s.Connected || s.BundleVersion != "v2" {
		t.Fatalf("c1's stored status: %s; want b's, disconnected", raw)
	}
}

// Each replica stores the runtime snapshots of the clusters it serves and
// restores the others' into its registry, but never over a cluster it
// serves itself, whose own agent's reports are newer.
func TestReplicasShareRuntimeSnapshotsButNotOverTheirOwnClusters(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := newReplica(t, openStore(t, url), true, 0)
	b := newReplica(t, openStore(t, url), true, 0)
	ctx := context.Background()
	runs := func(r *replica, fqn string, services ...string) {
		t.Helper()
		m := &agentv1.Runtime{Seq: 1, Full: true}
		for _, s := range services {
			m.Services = append(m.Services, &agentv1.ServiceState{Namespace: "shop", Name: s})
		}
		if err := r.services.Apply(fqn, m, r.clock.now()); err != nil {
			t.Fatal(err)
		}
		if err := r.s.FlushRuntime(ctx); err != nil {
			t.Fatal(err)
		}
	}
	knows := func(r *replica, name, fqn string, want ...string) {
		t.Helper()
		if err := r.s.RefreshRuntime(ctx); err != nil {
			t.Fatal(err)
		}
		if got := r.services.ServiceKeys(fqn); !slices.Equal(got, want) {
			t.Fatalf("replica %s: %s runs %v; want %v", name, fqn, got, want)
		}
	}
	a.serve(c1, &agentv1.Hello{})
	runs(a, c1, "reviews")
	b.serve(c2, &agentv1.Hello{})
	runs(b, c2, "ratings")
	knows(b, "b", c1, "shop/reviews")

	// c2's agent moves to a and reports there before a reads b's snapshot
	// of it; b's next write of c2 is fenced, and b lets go.
	a.serve(c2, &agentv1.Hello{})
	if err := a.services.Apply(c2, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{{Namespace: "shop", Name: "details"}}}, a.clock.now()); err != nil {
		t.Fatal(err)
	}
	knows(a, "a", c2, "shop/details")
	runs(b, c2, "ratings", "reviews")
	if got := b.streams.sessions(); len(got) != 1 || got[0].fqn != c2 {
		t.Fatalf("b let go of %v; want c2's session, fenced by a's", got)
	}
}
