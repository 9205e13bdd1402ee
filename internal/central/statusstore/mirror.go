package statusstore

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"flotilla.io/flotilla/internal/store"
)

// Refresh reads back, from the store's status feed, the stored status of
// the clusters that no stream of this replica serves, where it moved since
// the last read (with other replicas only), and marks disconnected the
// mirrors whose writer stopped renewing them. Call it about once a second,
// once every cluster is tracked.
func (s *Store) Refresh(ctx context.Context) error {
	if s.shared {
		if err := s.readMirrors(ctx); err != nil {
			return err
		}
	}
	// A mirror that nobody renews any more is a dead writer's (alone on the
	// store: this server's previous run's).
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.clusters {
		if !cl.served && cl.mirror && cl.mirrorConnected && s.now().Sub(cl.statusTime) >= staleAfter {
			cl.mirrorConnected, cl.dirty = false, true
			s.services.SetLive(cl.fqn, false, cl.lastSeen)
		}
	}
	return nil
}

// readMirrors takes the status rows that moved since the last read into
// the mirrors, and reads whole the clusters this replica let go of.
func (s *Store) readMirrors(ctx context.Context) error {
	s.mu.Lock()
	since, refetch := s.statusMark, slices.Sorted(maps.Keys(s.refetch))
	s.mu.Unlock()
	changes, mark, err := s.st.Statuses(ctx, since)
	if err != nil {
		return err
	}
	for _, fqn := range refetch {
		r, err := s.st.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		changes = append(changes, store.StatusChange{FQN: fqn, Epoch: r.StatusEpoch, Time: r.StatusTime, Status: r.Status})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fqn := range refetch {
		delete(s.refetch, fqn)
	}
	complete := true
	for _, ch := range changes {
		cl := s.clusters[ch.FQN]
		switch {
		case cl == nil:
			if isClusterFQN(ch.FQN) {
				complete = false // not tracked yet: read it again next time
			}
			continue
		case cl.served:
			continue // ours: its stream is newer than the store
		case ch.Status != nil:
			s.restore(cl, store.Record{Status: ch.Status, StatusEpoch: ch.Epoch, StatusTime: ch.Time})
		case !cl.mirror:
			s.refetch[cl.fqn] = true // moved, and this replica has no body of it: read it whole
		default: // a claim or a renewal: the body stands
			cl.epoch, cl.statusTime = ch.Epoch, ch.Time
			live := cl.mirrorSays && s.now().Sub(ch.Time) < staleAfter
			if live != cl.mirrorConnected {
				cl.mirrorConnected = live
				s.services.SetLive(cl.fqn, cl.connected(), cl.lastSeen)
			}
			cl.dirty = cl.mirrorSays && !live
		}
	}
	if complete {
		s.statusMark = mark
	}
	return nil
}

// isClusterFQN reports whether fqn names a cluster
// ("organizations/<org>/clusters/<name>"), not another record with status.
func isClusterFQN(fqn string) bool {
	parts := strings.Split(fqn, "/")
	return len(parts) == 4 && parts[0] == "organizations" && parts[2] == "clusters"
}
