package statusstore

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/store"
)

// Streams are the agent streams whose sessions the Store holds.
type Streams interface {
	// LetGo ends the cluster's stream of session epoch, if it still has
	// one: another server replica serves the cluster now. The Store calls
	// it without its lock held, after it let go of the session itself.
	LetGo(fqn string, epoch int64)
}

// Config is how a Store runs.
type Config struct {
	// Shared says that other server replicas share the store: Refresh and
	// RefreshRuntime then read back what they wrote.
	Shared bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Store holds, per cluster, what its agent reported and the status session
// this replica holds of it. Its methods are safe for concurrent use; the
// callers of Flush and FlushRuntime must not hold a lock that
// Streams.LetGo takes.
type Store struct {
	st       store.Store
	services *registry.Registry
	streams  Streams
	log      *slog.Logger
	now      func() time.Time
	shared   bool

	mu       sync.Mutex
	clusters map[string]*cluster // by FQN: those Track added
	rev      int64               // the store revision the desired versions reflect

	// The status feed (store.Statuses): the mark of its last complete read,
	// and the clusters let go of, whose status to read whole.
	statusMark int64
	refetch    map[string]bool
	// The runtime feed (store.Runtimes): the mark of its last complete
	// read, and by cluster the Gen of the snapshot last read.
	runtimeMark int64
	runtimeGens map[string]int64
}

// New returns a Store over st that keeps the registry's liveness of each
// cluster current and restores stored snapshots into it.
func New(st store.Store, services *registry.Registry, streams Streams, log *slog.Logger, cfg Config) *Store {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Store{st: st, services: services, streams: streams, log: log, now: now, shared: cfg.Shared,
		clusters: map[string]*cluster{}, refetch: map[string]bool{}, runtimeGens: map[string]int64{}}
}

// cluster is what the Store knows of one cluster. Guarded by Store.mu.
type cluster struct {
	fqn     string
	version string // the desired bundle version (SetDesired)

	epoch  int64 // the status session this server holds; 0 when none, -1 once let go of
	served bool  // a stream of this replica holds the session epoch

	agentVersion string
	lastSeen     time.Time
	ack          *agentv1.Ack // set with setAck; never altered once set
	// resourcesJSON is ack's resource statuses as stored (nil until the
	// status is next written); setAck clears it.
	resourcesJSON json.RawMessage
	// sessionAck is the last acknowledgement of the session's stream,
	// which a partial one amends; nil before the first.
	sessionAck *agentv1.Ack
	inv        clusterstatus.Inventory
	drifts     []*agentv1.Drift // newest last, bounded

	dirty       bool      // status not yet written to the store
	written     time.Time // when status was last written (body or lease)
	bodyWritten time.Time // when the status body was last written
	// storedConnected is the connection state in the body last written.
	storedConnected bool

	runtimeWritten uint64 // the registry Generation of the runtime snapshot last stored

	// mirror is set while the status comes from the store rather than from
	// a stream of ours: another server replica serves the cluster (or
	// served it before this one started). A mirror is never written back,
	// except to mark a dead writer's cluster disconnected.
	mirror          bool
	mirrorSays      bool      // the stored status says connected
	mirrorConnected bool      // the stored status says connected, and its writer renews it
	statusTime      time.Time // when the mirrored status was written
}

// setAck replaces the cluster's last acknowledgement.
func (cl *cluster) setAck(a *agentv1.Ack) {
	cl.ack, cl.resourcesJSON = a, nil
}

// connected reports whether an agent of the cluster has a live stream, to
// this replica or, as far as the store says, to another.
func (cl *cluster) connected() bool { return cl.served || cl.mirror && cl.mirrorConnected }

// maxDrifts bounds the drift history kept per cluster.
const maxDrifts = 20

// Track adds the cluster, with its stored status and session when stored
// has one (a previous run's of this server, or another replica's). A
// cluster already tracked stays as it is.
func (s *Store) Track(fqn string, stored store.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clusters[fqn] != nil {
		return
	}
	cl := &cluster{fqn: fqn}
	s.restore(cl, stored)
	s.clusters[fqn] = cl
}

// Forget drops the cluster: it no longer exists.
func (s *Store) Forget(fqn string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clusters, fqn)
	delete(s.runtimeGens, fqn)
}

// SetDesired records the desired bundle versions of the clusters whose
// version moved, as of store revision rev, which every other tracked
// cluster's version reflects too. A moved version marks the status for
// writing, unless it is a mirror: the replica that serves the cluster
// writes it (every replica computes the same version), and a mirror
// written back here would overwrite that replica's newer status with this
// one's older copy.
func (s *Store) SetDesired(rev int64, versions map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev = rev
	for fqn, v := range versions {
		if cl := s.clusters[fqn]; cl != nil && cl.version != v {
			cl.version = v
			cl.dirty = cl.dirty || !cl.mirror
		}
	}
}

// Claim opens a new status session for the cluster in the store: from now
// on, status written under an older session (here or on another replica)
// is refused. store.ErrNotFound when the cluster is not stored.
func (s *Store) Claim(ctx context.Context, fqn string) (int64, error) {
	return s.st.ClaimStatus(ctx, fqn)
}

// Open makes the claimed session epoch the cluster's, served by a stream of
// this replica whose agent said hello, and returns the bundle version the
// agent is known to have ("" when none).
func (s *Store) Open(fqn string, epoch int64, hello *agentv1.Hello) (has string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.clusters[fqn]
	if cl == nil {
		return ""
	}
	cl.epoch, cl.served, cl.mirror, cl.sessionAck = epoch, true, false, nil
	cl.agentVersion = hello.GetAgentVersion()
	cl.lastSeen = s.now()
	if hello.GetLast() != nil {
		cl.setAck(hello.GetLast())
	}
	cl.dirty = true
	return cl.ack.GetBundleVersion()
}

// ErrPartialFirst is Report's answer to a partial acknowledgement that no
// whole one preceded in its session.
var ErrPartialFirst = errors.New("a partial acknowledgement before any whole one on this stream")

// Report takes one message of the agent's stream of session epoch into the
// cluster's status: every message renews lastSeen; inventories, acks and
// drift change the status. The messages of a session no longer the
// cluster's are dropped.
func (s *Store) Report(fqn string, epoch int64, msg *agentv1.ConnectRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.clusters[fqn]
	if cl == nil || !cl.served || cl.epoch != epoch {
		return nil
	}
	cl.lastSeen = s.now()
	cl.dirty = true
	switch m := msg.GetMsg().(type) {
	case *agentv1.ConnectRequest_Inventory:
		cl.inv.Merge(m.Inventory)
	case *agentv1.ConnectRequest_Ack:
		a, keep := m.Ack, json.RawMessage(nil)
		if a.GetPartial() {
			if cl.sessionAck == nil {
				return ErrPartialFirst
			}
			if len(a.GetResources())+len(a.GetRemoved()) == 0 && cl.ack == cl.sessionAck {
				keep = cl.resourcesJSON // the resources' statuses stand: only the version moved
			}
			a = ack.Merge(cl.sessionAck, a)
		}
		cl.sessionAck = a
		cl.setAck(a)
		cl.resourcesJSON = keep
	case *agentv1.ConnectRequest_Drift:
		cl.drifts = append(cl.drifts, m.Drift)
		if len(cl.drifts) > maxDrifts {
			cl.drifts = cl.drifts[len(cl.drifts)-maxDrifts:]
		}
	}
	return nil
}

// Close ends the session epoch, whose stream ended, and reports whether it
// was still the cluster's: its status is then written as disconnected.
func (s *Store) Close(fqn string, epoch int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.clusters[fqn]
	if cl == nil || !cl.served || cl.epoch != epoch {
		return false
	}
	cl.served, cl.dirty = false, true
	return true
}

// Cluster is a copy of what the Store knows of one cluster. Ack, Istio and
// the Drifts' elements are shared: they are never altered.
type Cluster struct {
	// Connected says an agent of the cluster has a live stream, to this
	// replica or, as far as the store says, to another.
	Connected         bool
	AgentVersion      string
	LastSeen          time.Time // zero when never seen
	Ack               *agentv1.Ack
	KubernetesVersion string
	Istio             *clusterstatus.Istio
	Drifts            []*agentv1.Drift // newest last
}

func (cl *cluster) copy() Cluster {
	return Cluster{Connected: cl.connected(), AgentVersion: cl.agentVersion, LastSeen: cl.lastSeen, Ack: cl.ack,
		KubernetesVersion: cl.inv.KubernetesVersion, Istio: cl.inv.Istio, Drifts: slices.Clone(cl.drifts)}
}

// Get is a copy of what the Store knows of the cluster; false when it does
// not track it.
func (s *Store) Get(fqn string) (Cluster, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.clusters[fqn]
	if cl == nil {
		return Cluster{}, false
	}
	return cl.copy(), true
}

// All is Get of every tracked cluster, by FQN.
func (s *Store) All() map[string]Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Cluster, len(s.clusters))
	for fqn, cl := range s.clusters {
		out[fqn] = cl.copy()
	}
	return out
}

// Reported is what compiling for the cluster needs of what its agent
// reported (namespaces, the cluster's own policies); zero when the Store
// does not track it.
func (s *Store) Reported(fqn string) compile.Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cl := s.clusters[fqn]; cl != nil {
		return cl.inv.Cluster()
	}
	return compile.Cluster{}
}

// Behind counts the clusters whose agent has not acknowledged their
// desired bundle version.
func (s *Store) Behind() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, cl := range s.clusters {
		if cl.ack.GetBundleVersion() != cl.version {
			n++
		}
	}
	return n
}
