package central

import (
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/central/statusstore"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// FleetView is the view of the control plane the fleet API serves from.
// Each of its calls holds c.mu only while it copies what it answers, and
// reads what the agents reported from the status store after.
func (c *Central) FleetView() fleetapi.View { return fleetView{c} }

// fleetView implements fleetapi.View; its methods are the only way the
// fleet API reads the control plane.
type fleetView struct{ c *Central }

var _ fleetapi.View = fleetView{}

func (v fleetView) Ready() <-chan struct{} { return v.c.ready }

func (v fleetView) Revision() int64 {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	return v.c.rev
}

func (v fleetView) Workspaces() map[string]selector.Set {
	return v.c.disc.Workspaces() // under the discovery's lock, not c.mu
}

func (v fleetView) Summaries() map[string]*pb.ClusterSummary {
	c := v.c
	c.mu.Lock()
	out := make(map[string]*pb.ClusterSummary, len(c.clusters))
	for fqn, cl := range c.clusters {
		_, org, known := c.idx.Cluster(fqn)
		if !known {
			continue
		}
		info := c.disc.Cluster(fqn)
		out[fqn] = &pb.ClusterSummary{Fqn: fqn, Name: cl.name, Organization: org, Region: info.Region, Zone: info.Zone, Drained: info.Drained, DesiredBundleVersion: cl.version}
	}
	c.mu.Unlock()
	for fqn, st := range c.status.All() { // under the status store's lock, not c.mu
		s := out[fqn]
		if s == nil {
			continue
		}
		s.Connected, s.KubernetesVersion, s.AgentVersion = st.Connected, st.KubernetesVersion, st.AgentVersion
		if st.Istio != nil && st.Istio.Installed {
			s.IstioVersion = st.Istio.Version
		}
		if !st.LastSeen.IsZero() {
			s.LastSeen = timestamppb.New(st.LastSeen)
		}
		if st.Ack != nil {
			s.BundleVersion = st.Ack.GetBundleVersion()
			for _, r := range st.Ack.GetResources() {
				switch r.GetState() {
				case fleetapi.StateApplied:
					s.Applied++
				case fleetapi.StateFailed:
					s.Failed++
				}
			}
		}
		for _, d := range st.Drifts {
			if !d.GetRestored() {
				s.Drifts++
			}
		}
	}
	for _, s := range out {
		s.InSync = s.BundleVersion != "" && s.BundleVersion == s.DesiredBundleVersion
	}
	return out
}

func (v fleetView) ClusterFQNs(name string) []string {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	var out []string
	if _, ok := v.c.clusters[name]; ok {
		out = append(out, name)
	}
	for fqn, cl := range v.c.clusters {
		if cl.name == name && fqn != name {
			out = append(out, fqn)
		}
	}
	return out
}

func (v fleetView) Cluster(fqn string) (fleetapi.Cluster, bool) {
	c := v.c
	c.mu.Lock()
	cl := c.clusters[fqn]
	if cl == nil {
		c.mu.Unlock()
		return fleetapi.Cluster{}, false
	}
	out := fleetapi.Cluster{FQN: cl.fqn, Name: cl.name, Bundle: c.bundleOf(fqn), Version: cl.version, Revision: c.rev}
	c.mu.Unlock()
	out.In = c.status.Reported(fqn)
	return out, true
}

// target is a cluster whose status rows are judged: its name and version
// as of rev, copied under c.mu, then its status (withStatus).
type target struct {
	fqn, name, version string
	rev                int64
	served             bool // a stream of this replica serves it
	status             statusstore.Cluster
}

// applied is the store revision the target has applied.
func (t target) applied() int64 { return clusterstatus.AppliedRevision(t.status.Ack, t.version, t.rev) }

// targets are the named clusters that exist. Callers hold c.mu.
func (c *Central) targets(fqns ...string) []target {
	var out []target
	for _, fqn := range fqns {
		if cl := c.clusters[fqn]; cl != nil {
			out = append(out, target{fqn: fqn, name: cl.name, version: cl.version, rev: c.rev, served: cl.conn != nil})
		}
	}
	return out
}

// withStatus adds to each target its status, under the status store's
// lock. Callers do not hold c.mu.
func (c *Central) withStatus(ts []target) []target {
	for i := range ts {
		ts[i].status, _ = c.status.Get(ts[i].fqn)
	}
	return ts
}

func (v fleetView) ObjectStatus(q fleetapi.StatusQuery) fleetapi.Status {
	c := v.c
	c.mu.Lock()
	if q.Group == "" {
		defer c.mu.Unlock()
		return c.judge(q.Need, q.FQN)
	}
	out, ts := c.judge(q.Need, q.FQN, q.Group), c.targets(c.idx.Targets(q.Group, q.FQN)...)
	c.mu.Unlock()
	out.Clusters = clusterStates(c.withStatus(ts), q.FQN, q.Need)
	return out
}

func (v fleetView) ClusterStatus(fqn string, need int64) fleetapi.Status {
	c := v.c
	c.mu.Lock()
	out, ts := c.judge(need, fqn), c.targets(fqn)
	c.mu.Unlock()
	for _, t := range c.withStatus(ts) {
		applied := t.applied()
		row := &pb.ClusterState{Cluster: t.name, Connected: t.status.Connected, State: fleetapi.StatePending, Revision: applied, Version: t.status.Ack.GetBundleVersion(), Message: "no agent has acknowledged a bundle yet"}
		switch {
		case t.status.Ack == nil:
		case applied >= need:
			row.State, row.Message = fleetapi.StateApplied, "converged"
			if t.status.Ack.GetBundleVersion() != t.version {
				row.Message = fmt.Sprintf("has revision %d; applying %s", applied, short(t.version))
			}
		default:
			row.Message = fmt.Sprintf("has revision %d (%s), needs %d (%s)", applied, short(row.Version), need, short(t.version))
		}
		out.Clusters = []*pb.ClusterState{row}
	}
	return out
}

func short(v string) string { return v[:min(len(v), 12)] }

// clusterStates returns the state of the object fqn in every target (the
// clusters whose bundle carries it), judged against store revision need: a
// cluster counts as Applied only once it has applied need.
func clusterStates(targets []target, fqn string, need int64) []*pb.ClusterState {
	var out []*pb.ClusterState
	for _, t := range targets {
		applied := t.applied()
		row := &pb.ClusterState{Cluster: t.name, Connected: t.status.Connected, State: fleetapi.StatePending, Revision: applied, Version: t.status.Ack.GetBundleVersion()}
		switch {
		case applied >= need:
			row.Message = "not in the bundle the cluster applied yet"
			for _, r := range t.status.Ack.GetResources() {
				if r.GetFqn() == fqn {
					row.State, row.Message = r.GetState(), r.GetMessage()
				}
			}
		case !t.served:
			row.Message = fmt.Sprintf("agent not connected; has revision %d, revision %d is queued for it", applied, need)
		default:
			row.Message = fmt.Sprintf("applying: has revision %d, needs %d", applied, need)
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cluster < out[j].Cluster })
	return out
}

// judge is the status at need, without its rows: when the central control
// plane cannot compute bundles up to need, or a record the answer depends
// on cannot be used, its Error says why. Callers hold c.mu.
func (c *Central) judge(need int64, fqns ...string) fleetapi.Status {
	out := fleetapi.Status{Revision: c.rev}
	for _, f := range fqns {
		if why, ok := c.broken[f]; ok {
			out.Error = fmt.Sprintf("%s cannot be used: %s", f, why)
		}
	}
	if c.failure != nil && c.rev < need {
		out.Error = fmt.Sprintf("the central control plane cannot compute bundles past revision %d since %s: the server log says why", c.rev, c.failure.since.UTC().Format(time.RFC3339))
	}
	return out
}

func (v fleetView) Services(visible func(cluster string) bool, f registry.Filter) []registry.Service {
	return v.c.services.Services(visible, f) // under the registry's lock, not c.mu
}

func (v fleetView) ExposedBy(services []registry.Service) [][]string {
	out := make([][]string, len(services))
	for i, s := range services {
		out[i] = v.c.disc.ExposedBy(s) // under the discovery's lock, not c.mu
	}
	return out
}

func (v fleetView) Plan(written []resource.Written) ([]fleetapi.PlannedCluster, error) {
	c := v.c
	c.mu.Lock()
	planned := c.idx.Clone()
	affected := map[string]bool{}
	for _, w := range written {
		if w.Outcome == resource.Unchanged || !planned.Relevant(w.Record.Kind) {
			continue
		}
		if err := planned.Apply(store.Event{Type: store.EventPut, Record: w.Record}, affected); err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("plan %s: %w", w.Record.FQN, err)
		}
	}
	var out []fleetapi.PlannedCluster
	var of []string
	for fqn := range affected {
		// The planned bundle is assembled under the lock too: the clone
		// shares the index's unchanged groups, which the index's own
		// writers change in place. Compiling them is the caller's, after.
		next := planned.Bundle(fqn)
		if next == nil {
			continue
		}
		// Plan previews intent: the multicluster slice (runtime state) is
		// the same before and after.
		next.Multicluster = c.disc.Slice(fqn)
		name, _, _ := planned.Cluster(fqn)
		out = append(out, fleetapi.PlannedCluster{Name: name, Current: c.bundleOf(fqn), Next: next})
		of = append(of, fqn)
	}
	c.mu.Unlock()
	for i, fqn := range of {
		out[i].In = c.status.Reported(fqn) // under the status store's lock, not c.mu
	}
	return out, nil
}

func (v fleetView) AgentConnected(fqn string) bool { return v.c.agentConnected(fqn) }

func (v fleetView) EndStream(fqn, why string) bool { return v.c.endStream(fqn, why) }
