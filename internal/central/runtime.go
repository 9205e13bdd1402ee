package central

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
//	agent ─report─▶ registry ─(changed, after the slices are recomputed; and every flush tick)─▶ PutRuntime
//	Runtimes ◀─(load; and, with replicas, every wake-up and tick)─ restore into the registry, unless a stream of ours serves the cluster

// flushRuntime stores the snapshot of every cluster served here whose
// runtime state changed since it was last stored. A write that a newer
// status session fenced lets go of the cluster, as for status.
func (c *Central) flushRuntime(ctx context.Context) error {
	type pending struct {
		epoch int64
		gen   uint64
	}
	c.mu.Lock()
	var writes []store.RuntimeWrite
	gens := map[string]pending{}
	for fqn, cl := range c.clusters {
		if cl.conn == nil || cl.epoch <= 0 {
			continue
		}
		snap, gen := c.services.Snapshot(fqn)
		if snap == nil || gen == cl.runtimeWritten {
			continue
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
		if err != nil {
			c.mu.Unlock()
			return err
		}
		writes = append(writes, store.RuntimeWrite{FQN: fqn, Epoch: cl.epoch, Runtime: b})
		gens[fqn] = pending{cl.epoch, gen}
	}
	c.mu.Unlock()
	if len(writes) == 0 {
		return nil
	}
	for len(writes) > 0 { // in batches, as status
		batch := writes[:min(len(writes), statusBatch)]
		writes = writes[len(batch):]
		fenced, err := c.st.PutRuntime(ctx, batch)
		if err != nil {
			return err
		}
		c.mu.Lock()
		statuses := make([]store.StatusWrite, 0, len(batch))
		for _, w := range batch {
			p := gens[w.FQN]
			if cl := c.clusters[w.FQN]; cl != nil && cl.epoch == p.epoch {
				cl.runtimeWritten = p.gen
			}
			statuses = append(statuses, store.StatusWrite{FQN: w.FQN, Epoch: p.epoch})
		}
		c.letGo(statuses, fenced)
		c.mu.Unlock()
	}
	return nil
}

// readRuntime reads the stored snapshots that changed since the last read.
func (c *Central) readRuntime(ctx context.Context) ([]store.Runtime, int64, error) {
	c.mu.Lock()
	since := c.runtimeMark
	have := make(map[string]int64, len(c.runtimeGens))
	for fqn, gen := range c.runtimeGens {
		have[fqn] = gen
	}
	c.mu.Unlock()
	return c.st.Runtimes(ctx, since, have)
}

// restoreRuntime takes read snapshots into the registry, except those of
// clusters a stream of this replica serves: their own agent's reports are
// newer. Callers hold c.mu.
func (c *Central) restoreRuntime(snaps []store.Runtime, mark int64) {
	complete := true
	for _, s := range snaps {
		cl := c.clusters[s.FQN]
		if cl == nil {
			complete = false // the index has yet to learn of the cluster: read it again next time
			continue
		}
		c.runtimeGens[s.FQN] = s.Gen
		if cl.conn != nil {
			continue
		}
		rt := &agentv1.Runtime{}
		if err := proto.Unmarshal(s.Runtime, rt); err != nil {
			c.log.Error("a stored runtime snapshot cannot be read; the cluster's services are unknown here until its agent reports again", "cluster", s.FQN, "err", err)
			continue
		}
		c.services.Restore(s.FQN, rt, cl.connected(), cl.lastSeen)
	}
	if complete {
		c.runtimeMark = mark
	}
}

// refreshRuntime reads and restores the snapshots other replicas stored
// since the last read.
func (c *Central) refreshRuntime(ctx context.Context) error {
	snaps, mark, err := c.readRuntime(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restoreRuntime(snaps, mark)
	return nil
}
