package fleetapi

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

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

// WatchFleet implements FleetService.WatchFleet.
func (s *Server) WatchFleet(ctx context.Context, _ *connect.Request[pb.WatchFleetRequest], stream *connect.ServerStream[pb.WatchFleetResponse]) error {
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
			if view, err = s.caller(ctx); err != nil {
				return s.internal("watch fleet", err)
			}
			checked = time.Now()
		}
		now := s.cp.Summaries()
		for fqn, sum := range now {
			switch {
			case view.ReadsCluster(fqn):
			case view.SeesCluster(fqn):
				// A tenant sees the clusters its workspaces reach, not
				// the count of everyone's resources in them.
				sum.Applied, sum.Failed, sum.Drifts = 0, 0, 0
			default:
				delete(now, fqn)
			}
		}
		msg := &pb.WatchFleetResponse{Full: sent == nil}
		for fqn, sum := range now {
			if old, ok := sent[fqn]; !ok || !proto.Equal(old, sum) {
				msg.Clusters = append(msg.Clusters, sum)
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
