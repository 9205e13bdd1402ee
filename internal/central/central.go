package central

import (
	"context"
	"encoding/json"
	"errors"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"fmt"
	"log/slog"
	"sync"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/agentauth"
	"flotilla.io/flotilla/internal/central/discovery"
	"flotilla.io/flotilla/internal/central/intent"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Central is the central control plane. Create it with New, serve its
// handlers, and run Run for its whole life.
type Central struct {
	reg *resource.Registry
	st  store.Store
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	idx      *intent.Index       // intent as of rev
	clusters map[string]*cluster // by FQN
	rev      int64               // store revision the index and versions reflect
	broken   map[string]string   // FQN -> why a stored record cannot be used
	failure  *failure            // why the index cannot catch up with the store; nil when it does
	ready    chan struct{}       // closed after the first load
	closing  bool                // set at shutdown: no new streams
	metrics  *metrics

	sendTimeout time.Duration        // see DefaultSendTimeout
	shared      bool                 // other server replicas share the store
	authCfg     agentauth.Config     // set by the options; auth is made with it in New
	auth        *agentauth.Authority // agents' credentials: join, stream open, extension, recheck

	services *registry.Registry   // what runs in the clusters: runtime state, outside the event log
	disc     *discovery.Discovery // the bundles' multicluster slices, under a lock of their own

	// The stored runtime snapshots this replica has read (see runtime.go);
	// guarded by mu.
	runtimeMark int64 // the mark of the runtime feed's last complete read (store.Runtimes)
	// The status feed (store.Statuses), as runtime's; guarded by mu.
	statusMark int64
	refetch    map[string]bool // clusters let go of, whose status to read whole

	runtimeGens map[string]int64 // by cluster FQN: the Gen of the snapshot last read
}

// Services is the fleet service registry: the runtime state the agents
// connected to this replica report, and what the stored snapshots say of
// the others.
func (c *Central) Services() *registry.Registry { return c.services }

// WithAgentCredentialTTL sets the life of agent credentials
// (agentauth.DefaultTTL).
func WithAgentCredentialTTL(d time.Duration) Option { return func(c *Central) { c.authCfg.TTL = d } }

// Option configures a Central.
type Option func(*Central)

// Shared says that other server replicas share the store: status of
// clusters whose agents they serve is then read back from the store's
// status feed every flush interval, so every replica answers status for
// the whole fleet.
func Shared() Option { return func(c *Central) { c.shared = true } }

// failure is why the central control plane cannot follow the store.
type failure struct {
	err   error
	since time.Time
}

// cluster is what Central knows of one cluster. Guarded by Central.mu.
type cluster struct {
	fqn, name string

	version string // the bundle version the cluster should have (index.version)

	conn         *agentConn // nil while no agent is connected
	epoch        int64      // the status session this server holds; 0 when none
	agentVersion string
	lastSeen     time.Time
	ack          *agentv1.Ack // set with setAck
	// resourcesJSON is ack's resource statuses as stored (nil until the
	// status is next written); setAck clears it.
	resourcesJSON json.RawMessage
	inv           clusterstatus.Inventory
	drifts        []*agentv1.Drift // newest last, bounded
	dirty         bool             // status not yet written to the store
	written       time.Time        // when status was last written (body or lease)
	bodyWritten   time.Time        // when the status body was last written
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

// versionMoved marks the status for writing once the cluster's desired
// bundle version moved, unless the status is a mirror: the replica that
// serves the cluster writes it (every replica computes the same version),
// and a mirror written back here would overwrite that replica's newer
// status with this one's older copy.
func (cl *cluster) versionMoved() {
	cl.dirty = cl.dirty || !cl.mirror
}

// setAck replaces the cluster's last acknowledgement.
func (cl *cluster) setAck(a *agentv1.Ack) {
	cl.ack, cl.resourcesJSON = a, nil
}

// connected reports whether an agent of the cluster has a live stream, to
// this replica or, as far as the store says, to another. Callers hold
// Central.mu.
func (cl *cluster) connected() bool { return cl.conn != nil || cl.mirror && cl.mirrorConnected }

// agentConn is one live agent stream.
type agentConn struct {
	epoch  int64         // the status session claimed for this stream
	wake   chan struct{} // capacity 1: a pending wake-up coalesces the next ones
	resync chan string   // capacity 1: ask the agent for a full runtime report, and why
	done   chan struct{} // closed to end the stream; why says why
	why    string
	deltas bool // the agent takes bundle deltas and sends partial acks

	// ack is the last acknowledgement on this stream, which a partial one
	// amends; nil before the first. Guarded by Central.mu.
	ack *agentv1.Ack
}

// end ends the stream for the given reason. Callers hold Central.mu.
func (a *agentConn) end(why string) {
	a.why = why
	close(a.done)
}

func (a *agentConn) poke() {
	select {
	case a.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// maxDrifts bounds the drift history kept per cluster.
const maxDrifts = 20

// New returns a central control plane over st.
func New(reg *resource.Registry, st store.Store, log *slog.Logger, opts ...Option) *Central {
	c := &Central{reg: reg, st: st, log: log, now: time.Now, idx: intent.New(reg), clusters: map[string]*cluster{}, broken: map[string]string{},
		ready: make(chan struct{}), metrics: newMetrics(), sendTimeout: DefaultSendTimeout,
		services: registry.New(), runtimeGens: map[string]int64{}, refetch: map[string]bool{}}
	for _, o := range opts {
		o(c)
	}
	c.disc = discovery.New(c.services)
	c.auth = agentauth.New(st, log, c.now, c.authCfg)
	return c
}

// flushInterval bounds how often cluster status is written to the store;
// leaseInterval is how often a connected cluster's status is rewritten even
// unchanged, so readers can tell a live writer from a dead one.
const (
	flushInterval = time.Second
	leaseInterval = 10 * time.Second
)

// eventBatch bounds one read of the event log.
const eventBatch = 1000

// Run keeps the index and every cluster's version current with the store,
// and flushes status, until ctx ends.
func (c *Central) Run(ctx context.Context) error {
	flush := time.NewTicker(flushInterval)
	defer flush.Stop()
	// States: catch up with the store (load it whole first, and again when
	// events were compacted away); then wait for a commit, the flush tick
	// (status, and a retry after a failure) or the end.
	go c.runMulticluster(ctx)
	loaded := false
	for {
		changed := c.st.Changed()
		err := c.catchUp(ctx, !loaded)
		if err == nil && !loaded {
			loaded = true
			close(c.ready)
		}
		if ctx.Err() == nil {
			c.setFailure(err)
		}
		if loaded && c.shared {
			// A wake-up is a commit, or a runtime snapshot stored by another
			// replica: read the snapshots that changed (one read when none did).
			if err := c.refreshRuntime(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("read other replicas' runtime snapshots", "err", err)
			}
		}
		select {
		case <-changed:
		case <-flush.C:
			if err := c.flushStatus(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("write cluster status", "err", err)
			}
			if err := c.flushRuntime(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("write runtime snapshots", "err", err)
			}
			if loaded {
				if err := c.refreshMirrors(ctx); err != nil && ctx.Err() == nil {
					c.log.Warn("read other replicas' cluster status", "err", err)
				}
			}
		case <-ctx.Done():
			c.closeStreams()
			return nil
		}
	}
}

// setFailure records whether the last catch-up failed.
func (c *Central) setFailure(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		if c.failure != nil {
			c.log.Info("bundles caught up with the store again", "revision", c.rev)
		}
		c.failure = nil
	case c.failure == nil:
		c.log.Error("bundles cannot follow the store", "revision", c.rev, "err", err)
		c.failure = &failure{err: err, since: c.now()}
	default:
		c.failure.err = err
	}
}

// Health is nil while bundles follow the store, and otherwise says since
// when they do not; the reason is in status (for those who may read it)
// and in the log, not here: Health is served to anyone on /readyz.
func (c *Central) Health() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.failure != nil:
		return fmt.Errorf("central control plane: bundles are stuck at store revision %d since %s (see the server log)", c.rev, c.failure.since.UTC().Format(time.RFC3339))
	case len(c.broken) > 0:
		return fmt.Errorf("central control plane: %d stored record(s) cannot be used, so bundles that need them are stale (see status and the server log)", len(c.broken))
	}
	return nil
}

// maxPending bounds the events read before they are applied; a catch-up
// further behind reloads the index instead.
const maxPending = 100_000

// catchUp brings the index up to the store: it reads every event after
// c.rev, then applies them all at once, so that bundles only ever reflect
// whole transactions (one apply of ten thousand objects is ten thousand
// events). It reloads the index from scratch when asked, when those events
// were compacted, or when there are too many of them.
func (c *Central) catchUp(ctx context.Context, reload bool) error {
	for {
		if reload {
			if err := c.reload(ctx); err != nil {
				return err
			}
			reload = false
		}
		c.mu.Lock()
		after := c.rev
		c.mu.Unlock()
		var pending []store.Event
		for {
			evs, err := c.st.Events(ctx, after, eventBatch)
			if errors.Is(err, store.ErrCompacted) {
				reload = true
				break
			} else if err != nil {
				return fmt.Errorf("read the event log after revision %d: %w", after, err)
			}
			if len(evs) == 0 {
				break
			}
			pending = append(pending, evs...)
			after = evs[len(evs)-1].Revision
			if len(pending) > maxPending {
				reload = true
				break
			}
		}
		if reload {
			continue
		}
		if len(pending) > 0 {
			c.applyEvents(pending)
		}
		return nil
	}
}

// reload rebuilds the index from the store's current records. The records
// are read at or after revision rev; the events after rev are then applied
// again, which is harmless: applying an event is idempotent.
func (c *Central) reload(ctx context.Context) error {
	defer c.observeRecompute(time.Now())
	rev, err := c.st.Revision(ctx)
	if err != nil {
		return fmt.Errorf("read the store's revision: %w", err)
	}
	in, err := intent.Read(ctx, c.reg, c.st)
	if err != nil {
		return fmt.Errorf("read intent: %w", err)
	}
	idx, broken := intent.Build(c.reg, in)
	if err := c.disc.Load(ctx, c.st); err != nil {
		return fmt.Errorf("read workspace settings: %w", err)
	}
	statuses := map[string]store.Record{}
	for _, r := range in.Clusters {
		statuses[r.FQN] = r
	}
	snaps, mark, err := c.readRuntime(ctx)
	if err != nil {
		return fmt.Errorf("read runtime snapshots: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx, c.broken, c.rev = idx, broken, rev
	c.syncClusters(idx.ClusterSet(), statuses)
	// The slices are computed before any agent is served: a bundle sent
	// without them would remove every cluster's remote endpoints until the
	// agents report again.
	c.restoreRuntime(snaps, mark)
	c.wake(c.updateSlices())
	return nil
}

// applyEvents applies a batch of events to the live index and refreshes
// the versions of the clusters they affect.
func (c *Central) applyEvents(evs []store.Event) {
	defer c.observeRecompute(time.Now())
	c.mu.Lock()
	defer c.mu.Unlock()
	affected := map[string]bool{}
	slicesNow := false
	for _, ev := range evs {
		c.rev = ev.Revision
		if discovery.Relevant(ev.Record.Kind) {
			now, err := c.disc.Apply(ev)
			if err != nil {
				c.log.Error("stored record cannot be used for multicluster or edge config", "fqn", ev.Record.FQN, "err", err)
			}
			slicesNow = slicesNow || now
		}
		if !c.idx.Relevant(ev.Record.Kind) {
			continue
		}
		if err := c.idx.Apply(ev, affected); err != nil {
			c.broken[ev.Record.FQN] = err.Error()
			c.log.Error("stored intent cannot be used; bundles keep its previous state", "fqn", ev.Record.FQN, "revision", ev.Revision, "err", err)
			continue
		}
		delete(c.broken, ev.Record.FQN)
	}
	c.idx.Rehash()
	c.syncClusters(affected, nil)
	if slicesNow { // still under c.mu: no stream sends this revision without its slices
		c.wake(c.updateSlices())
	}
}

// syncClusters brings the named clusters' state in line with the index:
// new clusters appear (with their stored status, when given), deleted ones
// lose their stream, and changed versions wake their streams. Callers hold
// c.mu.
func (c *Central) syncClusters(fqns map[string]bool, stored map[string]store.Record) {
	if stored != nil { // a reload: clusters no longer in the index go too
		for fqn := range c.clusters {
			fqns[fqn] = true
		}
	}
	for fqn := range fqns {
		name, _, known := c.idx.Cluster(fqn)
		cl := c.clusters[fqn]
		if !known {
			if cl != nil {
				if cl.conn != nil {
					cl.conn.end("the cluster was deleted from Flotilla")
				}
				delete(c.clusters, fqn)
			}
			c.services.Remove(fqn)
			delete(c.runtimeGens, fqn)
			continue
		}
		if cl == nil {
			cl = &cluster{fqn: fqn, name: name}
			if r, ok := stored[fqn]; ok {
				c.restore(cl, r)
			}
			c.clusters[fqn] = cl
		}
		if v := c.version(fqn); v != cl.version {
			cl.version = v
			cl.versionMoved()
			if cl.conn != nil {
				cl.conn.poke()
			}
		}
	}
}

// closeStreams ends every agent stream, and refuses new ones: agents
// reconnect with backoff, to this server once it is back or to another
// replica.
func (c *Central) closeStreams() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	for _, cl := range c.clusters {
		if cl.conn != nil {
			cl.conn.end("the server is shutting down: reconnect")
			cl.conn = nil
		}
	}
}

// Ready is closed once bundles reflect the store.
func (c *Central) Ready() <-chan struct{} { return c.ready }

// appliedRevision is the store revision the cluster has applied: every
// intent change up to it is in the bundle its agent acknowledged. Callers
// hold c.mu.
func (c *Central) appliedRevision(cl *cluster) int64 {
	switch {
	case cl.ack == nil:
		return 0
	case cl.ack.GetBundleVersion() == cl.version:
		// The acknowledged bundle equals the one computed at c.rev.
		return c.rev
	}
	return cl.ack.GetRevision()
}

// errNoCluster is returned for a stream whose cluster is not (or no longer) known.
var errNoCluster = errors.New("cluster not registered")

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
