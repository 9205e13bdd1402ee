package statusstore

import (
	"cmp"
	"context"
	"slices"
	"time"

	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/store"
)

// Flush writes the status of every changed cluster, and renews that of
// every served one whose lease is due, in transactions of statusBatch.
// Each write carries the epoch of this server's status session for the
// cluster: a write that a newer session fenced means another server
// replica serves the cluster now, so this one lets go of it. Call it about
// once a second.
func (s *Store) Flush(ctx context.Context) error {
	s.mu.Lock()
	now := s.now()
	var writes []store.StatusWrite
	var bodies []clusterstatus.Status // of the last writes, in order; encoded after s.mu
	var changed []bodyCandidate
	for fqn, cl := range s.clusters {
		due := cl.served && now.Sub(cl.written) >= leaseInterval
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
	for _, x := range later { // they stay dirty for the next flush
		if x.cl.served && now.Sub(x.cl.written) >= leaseInterval {
			writes = append(writes, store.StatusWrite{FQN: x.fqn, Epoch: x.cl.epoch})
		}
	}
	for _, x := range changed {
		bodies = append(bodies, s.status(x.cl))
		writes = append(writes, store.StatusWrite{FQN: x.fqn, Epoch: x.cl.epoch}) // its body is encoded below
		x.cl.dirty, x.cl.bodyWritten, x.cl.storedConnected = false, now, x.cl.connected()
	}
	s.mu.Unlock()
	// Encoding outside s.mu: reports do not wait for it. The writes with a
	// body are the last ones, in the order of bodies.
	first := len(writes) - len(bodies)
	for i, body := range bodies {
		b, err := body.Encode()
		if err != nil {
			return err
		}
		writes[first+i].Status = b
	}
	// In batches: on a single-writer store (SQLite) an apply waits for the
	// batch in progress, not for the status of a thousand clusters.
	for len(writes) > 0 {
		batch := writes[:min(len(writes), statusBatch)]
		writes = writes[len(batch):]
		fenced, err := s.st.PutStatus(ctx, batch)
		s.mu.Lock()
		if err != nil {
			for _, w := range append(batch, writes...) {
				if cl := s.clusters[w.FQN]; cl != nil && w.Status != nil {
					cl.dirty = true // try again at the next flush
				}
			}
			s.mu.Unlock()
			return err
		}
		for _, w := range batch {
			if cl := s.clusters[w.FQN]; cl != nil {
				cl.written = now
			}
		}
		gone := s.letGo(batch, fenced)
		s.mu.Unlock()
		s.release(gone)
	}
	return nil
}

// statusBatch bounds the writes of one store transaction.
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

// session is one status session of one cluster.
type session struct {
	fqn   string
	epoch int64
}

// letGo handles writes that a newer session fenced: when the newer
// session is another replica's, this one lets go of the cluster and
// returns the session, whose stream release then ends; when it is one of
// this replica's own streams, which claimed it while the write was on its
// way, the status is written again under it. Callers hold s.mu.
func (s *Store) letGo(writes []store.StatusWrite, fenced []string) []session {
	epochs := make(map[string]int64, len(writes))
	for _, w := range writes {
		epochs[w.FQN] = w.Epoch
	}
	var gone []session
	for _, fqn := range fenced {
		cl := s.clusters[fqn]
		if cl == nil {
			continue
		}
		if cl.epoch != epochs[fqn] {
			// A stream of ours claimed a newer session while the write was
			// on its way: the fence is our own. Write again with it.
			cl.dirty = true
			continue
		}
		s.log.Info("another server replica serves this cluster now; letting go of it", "cluster", fqn)
		if cl.served {
			gone = append(gone, session{fqn, cl.epoch})
			cl.served = false
		}
		cl.epoch = -1 // write nothing more until an agent connects here again
		if s.shared {
			s.refetch[fqn] = true // mirror the new writer's status
		}
	}
	return gone
}

// release ends the streams of the sessions let go of. Callers do not hold
// s.mu.
func (s *Store) release(gone []session) {
	for _, g := range gone {
		s.streams.LetGo(g.fqn, g.epoch)
	}
}
