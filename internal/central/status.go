package central

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/store"
)

// status renders what is known of the cluster. Callers hold Central.mu.
func (c *Central) status(cl *cluster) clusterstatus.Status {
	s := clusterstatus.Status{
		AppliedRevision:      c.appliedRevision(cl),
		Connected:            cl.connected(),
		AgentVersion:         cl.agentVersion,
		DesiredBundleVersion: cl.version,
		KubernetesVersion:    cl.inv.KubernetesVersion,
		Istio:                cl.inv.Istio,
		Namespaces:           cl.inv.NamespaceNames(),
	}
	if !cl.lastSeen.IsZero() {
		s.LastSeen = cl.lastSeen.UTC().Format(time.RFC3339)
	}
	if p := cl.inv.Policies; len(p.GetDestinationRules())+len(p.GetNamespaceWide()) > 0 {
		s.ClusterPolicies = &clusterstatus.Policies{DestinationRules: p.GetDestinationRules(), NamespaceWide: p.GetNamespaceWide()}
	}
	if cl.ack != nil {
		s.BundleVersion = cl.ack.GetBundleVersion()
		s.BundleRevision = cl.ack.GetRevision()
		if cl.resourcesJSON == nil && len(cl.ack.GetResources()) > 0 {
			list := make([]clusterstatus.Resource, 0, len(cl.ack.GetResources()))
			for _, r := range cl.ack.GetResources() {
				list = append(list, clusterstatus.Resource{FQN: r.GetFqn(), State: r.GetState(), Message: r.GetMessage(), Objects: r.GetObjects()})
			}
			cl.resourcesJSON, _ = json.Marshal(list) // plain strings
		}
		s.Resources = cl.resourcesJSON
	}
	for _, d := range cl.drifts {
		s.Drift = append(s.Drift, clusterstatus.Drift{FQN: d.GetFqn(), Object: fmt.Sprintf("%s %s/%s", d.GetKind(), d.GetNamespace(), d.GetName()), Change: d.GetChange(), Restored: d.GetRestored(), Message: d.GetMessage()})
	}
	return s
}

// staleAfter is how old a stored "connected" status may be before its
// writer counts as gone: it renews the status every leaseInterval.
const staleAfter = 3 * leaseInterval

// restore mirrors the cluster's stored status: what a previous run of this
// server, or another replica, wrote. Status thus survives a restart of the
// central control plane before the agent reconnects, and a replica answers
// for clusters it does not serve. Callers hold c.mu.
func (c *Central) restore(cl *cluster, rec store.Record) {
	var s clusterstatus.Status
	if len(rec.Status) == 0 || json.Unmarshal(rec.Status, &s) != nil {
		return
	}
	cl.mirror, cl.epoch, cl.statusTime, cl.mirrorSays = true, rec.StatusEpoch, rec.StatusTime, s.Connected
	cl.mirrorConnected = s.Connected && c.now().Sub(rec.StatusTime) < staleAfter
	cl.agentVersion = s.AgentVersion
	if t, err := time.Parse(time.RFC3339, s.LastSeen); err == nil {
		cl.lastSeen = t
	}
	cl.setAck(nil)
	if s.BundleVersion != "" {
		var resources []clusterstatus.Resource
		_ = json.Unmarshal(s.Resources, &resources) // a stored status this server wrote
		cl.setAck(&agentv1.Ack{BundleVersion: s.BundleVersion, Revision: s.BundleRevision})
		for _, r := range resources {
			cl.ack.Resources = append(cl.ack.Resources, &agentv1.ResourceStatus{Fqn: r.FQN, State: r.State, Message: r.Message, Objects: r.Objects})
		}
	}
	cl.inv.KubernetesVersion, cl.inv.Istio, cl.inv.Policies = s.KubernetesVersion, s.Istio, nil
	if p := s.ClusterPolicies; p != nil {
		cl.inv.Policies = &agentv1.ClusterPolicies{DestinationRules: p.DestinationRules, NamespaceWide: p.NamespaceWide}
	}
	cl.inv.Namespaces = map[string]map[string]string{}
	for _, ns := range s.Namespaces {
		cl.inv.Namespaces[ns] = nil
	}
	// A status that says connected but that no writer renews any more is
	// marked disconnected, with the stored epoch: if another replica
	// claims the cluster meanwhile, the write is fenced.
	cl.dirty = s.Connected && !cl.mirrorConnected
	c.services.SetLive(cl.fqn, cl.connected(), cl.lastSeen)
}

// refreshMirrors reads back, from the store's status feed, the stored
// status of the clusters that no stream of this replica serves, where it
// moved since the last read, and marks disconnected the mirrors whose
// writer stopped renewing them.
func (c *Central) refreshMirrors(ctx context.Context) error {
	if c.shared {
		if err := c.readMirrors(ctx); err != nil {
			return err
		}
	}
	// A mirror that nobody renews any more is a dead writer's (alone on the
	// store: this server's previous run's).
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cl := range c.clusters {
		if cl.conn == nil && cl.mirror && cl.mirrorConnected && c.now().Sub(cl.statusTime) >= staleAfter {
			cl.mirrorConnected, cl.dirty = false, true
			c.services.SetLive(cl.fqn, false, cl.lastSeen)
		}
	}
	return nil
}

// readMirrors takes the status rows that moved since the last read into
// the mirrors, and reads whole the clusters this replica let go of.
func (c *Central) readMirrors(ctx context.Context) error {
	c.mu.Lock()
	since, refetch := c.statusMark, slices.Sorted(maps.Keys(c.refetch))
	c.mu.Unlock()
	changes, mark, err := c.st.Statuses(ctx, since)
	if err != nil {
		return err
	}
	for _, fqn := range refetch {
		r, err := c.st.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		changes = append(changes, store.StatusChange{FQN: fqn, Epoch: r.StatusEpoch, Time: r.StatusTime, Status: r.Status})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, fqn := range refetch {
		delete(c.refetch, fqn)
	}
	complete := true
	for _, ch := range changes {
		cl := c.clusters[ch.FQN]
		switch {
		case cl == nil:
			if isClusterFQN(ch.FQN) {
				complete = false // the index has yet to learn of the cluster: read it again next time
			}
			continue
		case cl.conn != nil:
			continue // ours: its stream is newer than the store
		case ch.Status != nil:
			c.restore(cl, store.Record{Status: ch.Status, StatusEpoch: ch.Epoch, StatusTime: ch.Time})
		case !cl.mirror:
			c.refetch[cl.fqn] = true // moved, and this replica has no body of it: read it whole
		default: // a claim or a renewal: the body stands
			cl.epoch, cl.statusTime = ch.Epoch, ch.Time
			live := cl.mirrorSays && c.now().Sub(ch.Time) < staleAfter
			if live != cl.mirrorConnected {
				cl.mirrorConnected = live
				c.services.SetLive(cl.fqn, cl.connected(), cl.lastSeen)
			}
			cl.dirty = cl.mirrorSays && !live
		}
	}
	if complete {
		c.statusMark = mark
	}
	return nil
}

// isClusterFQN reports whether fqn names a cluster
// ("organizations/<org>/clusters/<name>"), not another record with status.
func isClusterFQN(fqn string) bool {
	parts := strings.Split(fqn, "/")
	return len(parts) == 4 && parts[0] == "organizations" && parts[2] == "clusters"
}

// flushStatus writes the status of every changed cluster, and renews that
// of every connected one whose lease is due, in one transaction. Each write carries
// the epoch of this server's status session for the cluster: a write that a
// newer session fenced means another server replica serves the cluster
// now, so this one lets go of it.
func (c *Central) flushStatus(ctx context.Context) error {
	c.mu.Lock()
	now := c.now()
	var writes []store.StatusWrite
	var bodies []clusterstatus.Status // of the last writes, in order; encoded after c.mu
	var changed []bodyCandidate
	for fqn, cl := range c.clusters {
		due := cl.conn != nil && now.Sub(cl.written) >= leaseInterval
		if !cl.dirty && !due {
			continue
		}
		if cl.epoch < 0 || cl.mirror && !cl.dirty { // another replica holds it
			cl.dirty = false
			continue
		}
		if !cl.dirty { // only the lease is due: renew it, the body stands
			writes = append(writes, store.StatusWrite{FQN: fqn, Epoch: cl.epoch})
			continue
		}
		changed = append(changed, bodyCandidate{fqn: fqn, cl: cl, urgent: cl.connected() != cl.storedConnected, written: cl.bodyWritten})
	}
	changed, later := withinBudget(changed, statusBodyBudget)
	for _, x := range later { // they stay dirty for the next tick
		if x.cl.conn != nil && now.Sub(x.cl.written) >= leaseInterval {
			writes = append(writes, store.StatusWrite{FQN: x.fqn, Epoch: x.cl.epoch})
		}
	}
	for _, x := range changed {
		bodies = append(bodies, c.status(x.cl))
		writes = append(writes, store.StatusWrite{FQN: x.fqn, Epoch: x.cl.epoch}) // its body is encoded below
		x.cl.dirty, x.cl.bodyWritten, x.cl.storedConnected = false, now, x.cl.connected()
	}
	c.mu.Unlock()
	// Encoding outside c.mu: streams and commits do not wait for it. The
	// writes with a body are the last ones, in the order of bodies.
	first := len(writes) - len(bodies)
	for i, body := range bodies {
		b, err := body.Encode()
		if err != nil {
			return err
		}
		writes[first+i].Status = b
	}
	if len(writes) == 0 {
		return nil
	}
	// In batches: on a single-writer store (SQLite) an apply waits for the
	// batch in progress, not for the status of a thousand clusters.
	for len(writes) > 0 {
		batch := writes[:min(len(writes), statusBatch)]
		writes = writes[len(batch):]
		fenced, err := c.st.PutStatus(ctx, batch)
		c.mu.Lock()
		if err != nil {
			for _, w := range append(batch, writes...) {
				if cl := c.clusters[w.FQN]; cl != nil && w.Status != nil {
					cl.dirty = true // try again at the next tick
				}
			}
			c.mu.Unlock()
			return err
		}
		for _, w := range batch {
			if cl := c.clusters[w.FQN]; cl != nil {
				cl.written = now
			}
		}
		c.letGo(batch, fenced)
		c.mu.Unlock()
	}
	return nil
}

// statusBatch bounds the status writes of one store transaction.
const statusBatch = 100

// bodyCandidate is a cluster whose status body changed.
type bodyCandidate struct {
	fqn     string
	cl      *cluster
	urgent  bool      // its connection changed since its body was last written
	written time.Time // when its body was last written
}

// withinBudget splits the changed clusters into those written now, at most
// budget, and those left for later: connection changes first, then the
// longest unwritten, then by FQN.
func withinBudget(changed []bodyCandidate, budget int) (now, later []bodyCandidate) {
	if len(changed) <= budget {
		return changed, nil
	}
	slices.SortFunc(changed, func(a, b bodyCandidate) int {
		if a.urgent != b.urgent {
			if a.urgent {
				return -1
			}
			return 1
		}
		return cmp.Or(a.written.Compare(b.written), cmp.Compare(a.fqn, b.fqn))
	})
	return changed[:budget], changed[budget:]
}

// statusBodyBudget bounds the status bodies written per flush. Each is
// the cluster's last acknowledgement with a status per resource (15 KB
// with 100 resources): at 10,000 clusters under a stream of changes,
// writing every changed one each second took the store and the garbage
// collector long enough to delay the changes themselves (p99 ×4). Over
// budget, a cluster's stored status lags its live one by a few seconds;
// this server's own answers come from the live one.
const statusBodyBudget = 500

// letGo handles status writes that a newer session fenced: when the newer
// session is another replica's, this one lets go of the cluster; when it is
// one of this replica's own streams, which claimed it while the write was
// on its way, the status is written again under it. Callers hold c.mu.
func (c *Central) letGo(writes []store.StatusWrite, fenced []string) {
	epochs := make(map[string]int64, len(writes))
	for _, w := range writes {
		epochs[w.FQN] = w.Epoch
	}
	for _, fqn := range fenced {
		cl := c.clusters[fqn]
		if cl == nil {
			continue
		}
		if cl.epoch != epochs[fqn] {
			// A stream of ours claimed a newer session while the write was
			// on its way: the fence is our own. Write again with it.
			cl.dirty = true
			continue
		}
		c.log.Info("another server replica serves this cluster now; letting go of it", "cluster", fqn)
		if cl.conn != nil {
			cl.conn.end("another server replica serves this cluster now")
			cl.conn = nil
		}
		cl.epoch = -1 // write nothing more until an agent connects here again
		if c.shared {
			c.refetch[fqn] = true // mirror the new writer's status
		}
	}
}
