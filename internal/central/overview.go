package central

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
)

// Pacing of WatchFleet: how often it looks for changed summaries, and how
// often it re-reads the caller's access (a revoked binding hides clusters
// within that time).
const (
	fleetTick        = 250 * time.Millisecond
	fleetAccessEvery = 5 * time.Second
)

// summaries returns the summary of every cluster, by FQN.
func (c *Central) summaries() map[string]*pb.ClusterSummary {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]*pb.ClusterSummary, len(c.clusters))
	for fqn, cl := range c.clusters {
		ce := c.idx.clusters[fqn]
		if ce == nil {
			continue
		}
		info := c.mc.edges.clusters[fqn]
		s := &pb.ClusterSummary{
			Fqn: fqn, Name: cl.name, Organization: ce.org, Region: info.region, Zone: info.zone, Drained: info.drained,
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
				case StateApplied:
					s.Applied++
				case StateFailed:
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

// WatchFleet implements FleetService.WatchFleet.
func (f Fleet) WatchFleet(ctx context.Context, _ *connect.Request[pb.WatchFleetRequest], stream *connect.ServerStream[pb.WatchFleetResponse]) error {
	var (
		view    *access.View
		checked time.Time
		sent    map[string]*pb.ClusterSummary
	)
	tick := time.NewTicker(fleetTick)
	defer tick.Stop()
	for {
		if time.Since(checked) >= fleetAccessEvery {
			var err error
			if view, err = f.view(ctx); err != nil {
				return f.internal("watch fleet", err)
			}
			checked = time.Now()
		}
		now := f.summaries()
		for fqn, s := range now {
			switch {
			case view.ReadsCluster(fqn):
			case view.SeesCluster(fqn):
				// A tenant sees the clusters its workspaces reach, not
				// the count of everyone's resources in them.
				s.Applied, s.Failed, s.Drifts = 0, 0, 0
			default:
				delete(now, fqn)
			}
		}
		msg := &pb.WatchFleetResponse{Full: sent == nil}
		for fqn, s := range now {
			if old, ok := sent[fqn]; !ok || !proto.Equal(old, s) {
				msg.Clusters = append(msg.Clusters, s)
			}
		}
		for fqn := range sent {
			if now[fqn] == nil {
				msg.Removed = append(msg.Removed, fqn)
			}
		}
		if msg.Full || len(msg.Clusters)+len(msg.Removed) > 0 {
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		sent = now
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}
