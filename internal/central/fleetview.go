package central

import (
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// FleetView is the view of the control plane the fleet API serves from.
// Each of its calls holds c.mu only while it copies what it answers.
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
	defer c.mu.Unlock()
	out := make(map[string]*pb.ClusterSummary, len(c.clusters))
	for fqn, cl := range c.clusters {
		_, org, known := c.idx.Cluster(fqn)
		if !known {
			continue
		}
		info := c.disc.Cluster(fqn)
		s := &pb.ClusterSummary{
			Fqn: fqn, Name: cl.name, Organization: org, Region: info.Region, Zone: info.Zone, Drained: info.Drained,
			Connected: cl.connected(), DesiredBundleVersion: cl.version, KubernetesVersion: cl.inv.KubernetesVersion,
			AgentVersion: cl.agentVersion,
		}
		if cl.inv.Istio != nil && cl.inv.Istio.Installed {
			s.IstioVersion = cl.inv.Istio.Version
		}
		if !cl.lastSeen.IsZero() {
			s.LastSeen = timestamppb.New(cl.lastSeen)
		}
		if cl.ack != nil {
			s.BundleVersion = cl.ack.GetBundleVersion()
			for _, r := range cl.ack.GetResources() {
				switch r.GetState() {
				case fleetapi.StateApplied:
					s.Applied++
				case fleetapi.StateFailed:
					s.Failed++
				}
			}
		}
		s.InSync = s.BundleVersion != "" && s.BundleVersion == s.DesiredBundleVersion
		for _, d := range cl.drifts {
			if !d.GetRestored() {
				s.Drifts++
			}
		}
		out[fqn] = s
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
	defer c.mu.Unlock()
	cl := c.clusters[fqn]
	if cl == nil {
		return fleetapi.Cluster{}, false
	}
	return fleetapi.Cluster{FQN: cl.fqn, Name: cl.name, Bundle: c.bundleOf(fqn), Version: cl.version, Revision: c.rev, In: cl.inv.Cluster()}, true
}

func (v fleetView) ObjectStatus(q fleetapi.StatusQuery) fleetapi.Status {
	c := v.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if q.Group == "" {
		return c.judge(nil, q.Need, q.FQN)
	}
	return c.judge(c.clusterStates(q.Group, q.FQN, q.Need), q.Need, q.FQN, q.Group)
}

func (v fleetView) ClusterStatus(fqn string, need int64) fleetapi.Status {
	c := v.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var rows []*pb.ClusterState
	if cl := c.clusters[fqn]; cl != nil {
		applied := c.appliedRevision(cl)
		row := &pb.ClusterState{Cluster: cl.name, Connected: cl.connected(), State: fleetapi.StatePending, Revision: applied, Version: cl.ack.GetBundleVersion(), Message: "no agent has acknowledged a bundle yet"}
		switch {
		case cl.ack == nil:
		case applied >= need:
			row.State, row.Message = fleetapi.StateApplied, "converged"
			if cl.ack.GetBundleVersion() != cl.version {
				row.Message = fmt.Sprintf("has revision %d; applying %s", applied, short(cl.version))
			}
		default:
			row.Message = fmt.Sprintf("has revision %d (%s), needs %d (%s)", applied, short(row.Version), need, short(cl.version))
		}
		rows = []*pb.ClusterState{row}
	}
	return c.judge(rows, need, fqn)
}

func short(v string) string { return v[:min(len(v), 12)] }

// clusterStates returns the state of the object fqn (in group) in every
// cluster whose bundle carries it, judged against store revision need: a
// cluster counts as Applied only once it has applied need. Callers hold c.mu.
func (c *Central) clusterStates(group, fqn string, need int64) []*pb.ClusterState {
	var out []*pb.ClusterState
	for _, cf := range c.idx.Targets(group, fqn) {
		cl := c.clusters[cf]
		if cl == nil {
			continue
		}
		applied := c.appliedRevision(cl)
		row := &pb.ClusterState{Cluster: cl.name, Connected: cl.connected(), State: fleetapi.StatePending, Revision: applied, Version: cl.ack.GetBundleVersion()}
		switch {
		case applied >= need:
			row.Message = "not in the bundle the cluster applied yet"
			for _, r := range cl.ack.GetResources() {
				if r.GetFqn() == fqn {
					row.State, row.Message = r.GetState(), r.GetMessage()
				}
			}
		case cl.conn == nil:
			row.Message = fmt.Sprintf("agent not connected; has revision %d, revision %d is queued for it", applied, need)
		default:
			row.Message = fmt.Sprintf("applying: has revision %d, needs %d", applied, need)
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cluster < out[j].Cluster })
	return out
}

// judge is the status of rows at need: when the central control plane
// cannot compute bundles up to need, or a record the answer depends on
// cannot be used, its Error says why. Callers hold c.mu.
func (c *Central) judge(rows []*pb.ClusterState, need int64, fqns ...string) fleetapi.Status {
	out := fleetapi.Status{Clusters: rows, Revision: c.rev}
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
	defer c.mu.Unlock()
	planned := c.idx.Clone()
	affected := map[string]bool{}
	for _, w := range written {
		if w.Outcome == resource.Unchanged || !planned.Relevant(w.Record.Kind) {
			continue
		}
		if err := planned.Apply(store.Event{Type: store.EventPut, Record: w.Record}, affected); err != nil {
			return nil, fmt.Errorf("plan %s: %w", w.Record.FQN, err)
		}
	}
	var out []fleetapi.PlannedCluster
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
		pc := fleetapi.PlannedCluster{Name: name, Current: c.bundleOf(fqn), Next: next}
		if cl := c.clusters[fqn]; cl != nil {
			pc.In = cl.inv.Cluster()
		}
		out = append(out, pc)
	}
	return out, nil
}

func (v fleetView) AgentConnected(fqn string) bool { return v.c.agentConnected(fqn) }

func (v fleetView) EndStream(fqn, why string) bool { return v.c.endStream(fqn, why) }
