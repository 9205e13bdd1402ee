package central

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"flotilla.io/flotilla/internal/agentauth"
	"flotilla.io/flotilla/internal/central/discovery"
	"flotilla.io/flotilla/internal/central/intent"
	"flotilla.io/flotilla/internal/central/statusstore"
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
	status   *statusstore.Store   // what the agents report, and its sessions, under a lock of its own
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

// Shared says that other server replicas share the store: the status and
// runtime snapshots of clusters whose agents they serve are then read back
// (statusstore.Config.Shared), so every replica answers for the whole
// fleet.
func Shared() Option { return func(c *Central) { c.shared = true } }

// failure is why the central control plane cannot follow the store.
type failure struct {
	err   error
	since time.Time
}

// cluster is what Central knows of one cluster; what its agent reports is
// the status store's. Guarded by Central.mu.
type cluster struct {
	fqn, name string

	version string     // the bundle version the cluster should have (index.version)
	conn    *agentConn // nil while no agent is connected
}

// agentConn is one live agent stream.
type agentConn struct {
	epoch  int64         // the status session claimed for this stream
	wake   chan struct{} // capacity 1: a pending wake-up coalesces the next ones
	resync chan string   // capacity 1: ask the agent for a full runtime report, and why
	done   chan struct{} // closed to end the stream; why says why
	why    string
	deltas bool // the agent takes bundle deltas and sends partial acks
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

// New returns a central control plane over st.
func New(reg *resource.Registry, st store.Store, log *slog.Logger, opts ...Option) *Central {
	c := &Central{reg: reg, st: st, log: log, now: time.Now, idx: intent.New(reg), clusters: map[string]*cluster{}, broken: map[string]string{},
		ready: make(chan struct{}), metrics: newMetrics(), sendTimeout: DefaultSendTimeout, services: registry.New()}
	for _, o := range opts {
		o(c)
	}
	c.disc = discovery.New(c.services)
	c.status = statusstore.New(st, c.services, streams{c}, log, statusstore.Config{Shared: c.shared, Now: c.now})
	c.auth = agentauth.New(st, log, c.now, c.authCfg)
	return c
}

// flushInterval is how often the status store writes cluster status and
// runtime snapshots, and reads back other replicas'.
const flushInterval = time.Second

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
			if err := c.status.RefreshRuntime(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("read other replicas' runtime snapshots", "err", err)
			}
		}
		select {
		case <-changed:
		case <-flush.C:
			if err := c.status.Flush(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("write cluster status", "err", err)
			}
			if err := c.status.FlushRuntime(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("write runtime snapshots", "err", err)
			}
			if loaded {
				if err := c.status.Refresh(ctx); err != nil && ctx.Err() == nil {
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
	snaps, err := c.status.ReadRuntime(ctx)
	if err != nil {
		return fmt.Errorf("read runtime snapshots: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx, c.broken, c.rev = idx, broken, rev
	moved := map[string]string{}
	c.syncClusters(idx.ClusterSet(), statuses, moved)
	// The slices are computed before any agent is served: a bundle sent
	// without them would remove every cluster's remote endpoints until the
	// agents report again.
	c.status.RestoreRuntime(snaps)
	changed := c.updateSlices(moved)
	c.status.SetDesired(c.rev, moved)
	c.wake(changed)
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
	moved := map[string]string{}
	c.syncClusters(affected, nil, moved)
	if slicesNow { // still under c.mu: no stream sends this revision without its slices
		c.wake(c.updateSlices(moved))
	}
	c.status.SetDesired(c.rev, moved)
}

// syncClusters brings the named clusters' state in line with the index:
// new clusters appear (with their stored status, when given), deleted ones
// lose their stream, and changed versions wake their streams and are added
// to moved, for the status store. Callers hold c.mu.
func (c *Central) syncClusters(fqns map[string]bool, stored map[string]store.Record, moved map[string]string) {
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
			c.status.Forget(fqn)
			continue
		}
		if cl == nil {
			cl = &cluster{fqn: fqn, name: name}
			c.status.Track(fqn, stored[fqn])
			c.clusters[fqn] = cl
		}
		if v := c.version(fqn); v != cl.version {
			cl.version, moved[fqn] = v, v
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
			c.status.Close(cl.fqn, cl.conn.epoch)
			cl.conn = nil
		}
	}
}

// Ready is closed once bundles reflect the store.
func (c *Central) Ready() <-chan struct{} { return c.ready }

// streams are the agent streams, as the status store ends them.
type streams struct{ c *Central }

var _ statusstore.Streams = streams{}

func (s streams) LetGo(fqn string, epoch int64) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if cl := s.c.clusters[fqn]; cl != nil && cl.conn != nil && cl.conn.epoch == epoch {
		cl.conn.end("another server replica serves this cluster now")
		cl.conn = nil
	}
}

// errNoCluster is returned for a stream whose cluster is not (or no longer) known.
var errNoCluster = errors.New("cluster not registered")

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
