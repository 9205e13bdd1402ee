package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/bundle"
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
	clusters map[string]*cluster // by FQN
	etags    map[string]string   // FQN -> etag of the intent the bundles were computed from
	rev      int64               // store revision the bundles reflect
	ready    chan struct{}       // closed after the first recompute
	metrics  *metrics

	sendTimeout time.Duration // see DefaultSendTimeout
}

// cluster is what Central knows of one cluster. Guarded by Central.mu.
type cluster struct {
	fqn, name string

	bundle  *bundle.Bundle
	version string
	content []byte // the bundle as JSON, sent on the stream

	conn         *agentConn // nil while no agent is connected
	agentVersion string
	lastSeen     time.Time
	ack          *agentv1.Ack
	inv          inventory
	drifts       []*agentv1.Drift // newest last, bounded
	dirty        bool             // status not yet written to the store
}

// agentConn is one live agent stream.
type agentConn struct {
	wake chan struct{} // capacity 1: a pending wake-up coalesces the next ones
	done chan struct{} // closed to end the stream; why says why
	why  string
}

// end ends the stream for the given reason. Callers hold Central.mu.
func (a *agentConn) end(why string) {
	a.why = why
	close(a.done)
}

// maxDrifts bounds the drift history kept per cluster.
const maxDrifts = 20

// New returns a central control plane over st.
func New(reg *resource.Registry, st store.Store, log *slog.Logger) *Central {
	return &Central{reg: reg, st: st, log: log, now: time.Now, clusters: map[string]*cluster{}, etags: map[string]string{}, ready: make(chan struct{}), metrics: newMetrics(), sendTimeout: DefaultSendTimeout}
}

// flushInterval bounds how often cluster status is written to the store.
const flushInterval = time.Second

// Run keeps bundles current and flushes status until ctx ends.
func (c *Central) Run(ctx context.Context) error {
	flush := time.NewTicker(flushInterval)
	defer flush.Stop()
	first := true
	// States: recompute when the store moved past what the bundles reflect;
	// then wait for a commit, the flush tick (status, and commits by other
	// processes on a shared database) or the end.
	for {
		changed := c.st.Changed()
		if err := c.recomputeIfNeeded(ctx); err != nil && ctx.Err() == nil {
			c.log.Error("recompute bundles", "err", err)
		} else if first && err == nil {
			first = false
			close(c.ready)
		}
		select {
		case <-changed:
		case <-flush.C:
			if err := c.flushStatus(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("write cluster status", "err", err)
			}
		case <-ctx.Done():
			c.closeStreams()
			return nil
		}
	}
}

// closeStreams ends every agent stream; agents reconnect with backoff.
func (c *Central) closeStreams() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cl := range c.clusters {
		if cl.conn != nil {
			cl.conn.end("the server is shutting down: reconnect")
			cl.conn = nil
		}
	}
}

// Ready is closed once bundles reflect the store.
func (c *Central) Ready() <-chan struct{} { return c.ready }

// recomputeIfNeeded recomputes bundles when an intent change arrived since
// the last computation. Status-only writes (our own) do not count.
func (c *Central) recomputeIfNeeded(ctx context.Context) error {
	rev, err := c.st.Revision(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	last := c.rev
	c.mu.Unlock()
	if rev == last && last != 0 {
		return nil
	}
	relevant := last == 0
	if !relevant {
		kinds := map[string]bool{resource.KindGroup: true, resource.KindCluster: true}
		for _, k := range bundleKinds(c.reg) {
			kinds[k] = true
		}
		evs, err := c.st.Events(ctx, last, 100000)
		if err != nil {
			relevant = true // compacted: recompute to be safe
		}
		c.mu.Lock()
		for _, ev := range evs {
			if kinds[ev.Record.Kind] && (ev.Type == store.EventDelete || c.etags[ev.Record.FQN] != ev.Record.ETag) {
				relevant = true
				break
			}
		}
		c.mu.Unlock()
	}
	if !relevant {
		c.mu.Lock()
		c.rev = rev
		c.mu.Unlock()
		return nil
	}
	return c.recompute(ctx, rev)
}

func (c *Central) recompute(ctx context.Context, rev int64) error {
	defer c.observeRecompute(time.Now())
	in, err := readIntent(ctx, c.reg, c.st)
	if err != nil {
		return err
	}
	bundles, err := Bundles(c.reg, in)
	if err != nil {
		return err
	}
	etags := map[string]string{}
	for _, list := range [][]store.Record{in.Clusters, in.Groups, in.Objects} {
		for _, r := range list {
			etags[r.FQN] = r.ETag
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.etags, c.rev = etags, rev
	var removed []string
	for fqn, cl := range c.clusters {
		if _, ok := bundles[fqn]; !ok {
			if cl.conn != nil {
				cl.conn.end("the cluster was deleted from Flotilla")
			}
			delete(c.clusters, fqn)
			removed = append(removed, fqn)
		}
	}
	if len(removed) > 0 {
		// A deleted cluster's tokens and credential stop working at once.
		err := c.st.Update(ctx, "flotilla-central", func(tx store.Tx) error {
			for _, fqn := range removed {
				for _, kind := range []string{credJoin, credAgent} {
					if err := tx.DeleteCredentials(ctx, fqn, kind); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("revoke credentials of deleted clusters: %w", err)
		}
	}
	for _, rec := range in.Clusters {
		b := bundles[rec.FQN]
		cl := c.clusters[rec.FQN]
		if cl == nil {
			cl = &cluster{fqn: rec.FQN, name: rec.Name}
			c.clusters[rec.FQN] = cl
			cl.restore(rec.Status)
		}
		if v := b.Version(); v != cl.version {
			content, err := json.Marshal(b)
			if err != nil {
				return fmt.Errorf("encode bundle of %s: %w", rec.FQN, err)
			}
			cl.bundle, cl.version, cl.content = b, v, content
			cl.dirty = true
			if cl.conn != nil {
				select {
				case cl.conn.wake <- struct{}{}:
				default: // a wake-up is already pending
				}
			}
		}
	}
	return nil
}

// clusterByName finds a cluster by name or FQN. Callers hold c.mu.
func (c *Central) clusterByName(name string) (*cluster, error) {
	if cl, ok := c.clusters[name]; ok {
		return cl, nil
	}
	var found []*cluster
	for _, cl := range c.clusters {
		if cl.name == name {
			found = append(found, cl)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("cluster %q: %w", name, store.ErrNotFound)
	}
	names := make([]string, len(found))
	for i, cl := range found {
		names[i] = cl.fqn
	}
	sort.Strings(names)
	return nil, fmt.Errorf("cluster %q is ambiguous (%v): give its FQN", name, names)
}

// errNoCluster is returned for a stream whose cluster is not (or no longer) known.
var errNoCluster = errors.New("cluster not registered")
