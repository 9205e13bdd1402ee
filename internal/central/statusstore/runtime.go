package statusstore

import (
	"context"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/store"
)

// Runtime snapshots: the registry (package registry) holds what the agents
// connected to this replica report. So that every replica knows the whole
// fleet's services, and a restarted server keeps its clusters' remote
// endpoints until their agents report again, each replica stores the
// snapshot of every cluster it serves (one row per cluster, overwritten,
// fenced by the cluster's status session; never in the event log), and
// reads back the snapshots of the others.
//
//	agent ─report─▶ registry ─FlushRuntime (changed: after the slices are recomputed, and every flush)─▶ PutRuntime
//	Runtimes ─ReadRuntime (load; with replicas, every wake-up and flush)─▶ RestoreRuntime into the registry, unless a stream of ours serves the cluster

// FlushRuntime stores the snapshot of every cluster served here whose
// runtime state changed since it was last stored. A write that a newer
// status session fenced lets go of the cluster, as Flush does.
func (s *Store) FlushRuntime(ctx context.Context) error {
	type pending struct {
		epoch int64
		gen   uint64
	}
	s.mu.Lock()
	var writes []store.RuntimeWrite
	gens := map[string]pending{}
	for fqn, cl := range s.clusters {
		if !cl.served || cl.epoch <= 0 {
			continue
		}
		snap, gen := s.services.Snapshot(fqn)
		if snap == nil || gen == cl.runtimeWritten {
			continue
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		writes = append(writes, store.RuntimeWrite{FQN: fqn, Epoch: cl.epoch, Runtime: b})
		gens[fqn] = pending{cl.epoch, gen}
	}
	s.mu.Unlock()
	for len(writes) > 0 { // in batches, as status
		batch := writes[:min(len(writes), statusBatch)]
		writes = writes[len(batch):]
		fenced, err := s.st.PutRuntime(ctx, batch)
		if err != nil {
			return err
		}
		s.mu.Lock()
		statuses := make([]store.StatusWrite, 0, len(batch))
		for _, w := range batch {
			p := gens[w.FQN]
			if cl := s.clusters[w.FQN]; cl != nil && cl.epoch == p.epoch {
				cl.runtimeWritten = p.gen
			}
			statuses = append(statuses, store.StatusWrite{FQN: w.FQN, Epoch: p.epoch})
		}
		gone := s.letGo(statuses, fenced)
		s.mu.Unlock()
		s.release(gone)
	}
	return nil
}

// Runtimes are stored snapshots as ReadRuntime read them, for
// RestoreRuntime.
type Runtimes struct {
	snaps []store.Runtime
	mark  int64
}

// ReadRuntime reads the stored snapshots that changed since the last read
// that RestoreRuntime took whole.
func (s *Store) ReadRuntime(ctx context.Context) (Runtimes, error) {
	s.mu.Lock()
	since := s.runtimeMark
	have := make(map[string]int64, len(s.runtimeGens))
	for fqn, gen := range s.runtimeGens {
		have[fqn] = gen
	}
	s.mu.Unlock()
	snaps, mark, err := s.st.Runtimes(ctx, since, have)
	return Runtimes{snaps, mark}, err
}

// RestoreRuntime takes read snapshots into the registry, except those of
// clusters a stream of this replica serves: their own agent's reports are
// newer. A snapshot of a cluster not tracked yet is read again next time.
func (s *Store) RestoreRuntime(r Runtimes) {
	s.mu.Lock()
	defer s.mu.Unlock()
	complete := true
	for _, snap := range r.snaps {
		cl := s.clusters[snap.FQN]
		if cl == nil {
			complete = false
			continue
		}
		s.runtimeGens[snap.FQN] = snap.Gen
		if cl.served {
			continue
		}
		rt := &agentv1.Runtime{}
		if err := proto.Unmarshal(snap.Runtime, rt); err != nil {
			s.log.Error("a stored runtime snapshot cannot be read; the cluster's services are unknown here until its agent reports again", "cluster", snap.FQN, "err", err)
			continue
		}
		s.services.Restore(snap.FQN, rt, cl.connected(), cl.lastSeen)
	}
	if complete {
		s.runtimeMark = r.mark
	}
}

// RefreshRuntime reads and restores the snapshots other replicas stored
// since the last read.
func (s *Store) RefreshRuntime(ctx context.Context) error {
	r, err := s.ReadRuntime(ctx)
	if err != nil {
		return err
	}
	s.RestoreRuntime(r)
	return nil
}
