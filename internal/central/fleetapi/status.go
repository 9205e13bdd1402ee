package fleetapi

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Aggregates of a resource's states over clusters.
const (
	Accepted = "ACCEPTED"
	Ready    = "READY"
	Partial  = "PARTIAL"
	Failed   = "FAILED"
)

func aggregate(rows []*pb.ClusterState) string {
	if len(rows) == 0 {
		return Accepted
	}
	applied := 0
	for _, r := range rows {
		switch r.GetState() {
		case StateFailed:
			return Failed
		case StateApplied:
			applied++
		}
	}
	if applied == len(rows) {
		return Ready
	}
	return Partial
}

func aggregateChildren(children []*pb.GetStatusResponse) string {
	counts := map[string]int{}
	for _, ch := range children {
		counts[ch.GetAggregate()]++
	}
	switch {
	case counts[Failed] > 0:
		return Failed
	case len(children) == 0 || counts[Accepted] == len(children):
		return Accepted
	case counts[Ready]+counts[Accepted] == len(children) && counts[Ready] > 0:
		return Ready
	}
	return Partial
}

// judged fills out from the control plane's judgement at need: its rows,
// revisions and aggregate (FAILED with the reason when the answer cannot be
// trusted).
func judged(out *pb.GetStatusResponse, need int64, st Status) {
	out.Clusters = st.Clusters
	out.Revision, out.CentralRevision, out.Error = need, st.Revision, st.Error
	if out.Error != "" {
		out.Aggregate = Failed
		return
	}
	out.Aggregate = aggregate(out.Clusters)
}

// GetStatus implements FleetService.GetStatus. A resource counts as
// Applied in a cluster only once the cluster has applied the store revision
// of its last write, of its group's last write, and the caller's
// min_revision, whichever is newest: status never reports a change live
// before it is.
func (s *Server) GetStatus(ctx context.Context, req *connect.Request[pb.GetStatusRequest]) (*connect.Response[pb.GetStatusResponse], error) {
	k, fqn, err := s.target(req.Msg.GetKind(), req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	chk, err := access.ReadChecker(ctx, s.policies, s.st)
	if err != nil {
		return nil, s.internal("status", err)
	}
	rec, err := s.st.Get(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != k.Name || !access.CanRead(chk, rec)) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %s not found", k.Name, fqn))
	} else if err != nil {
		return nil, s.internal("status", err)
	}
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	need := max(req.Msg.GetMinRevision(), rec.Revision)
	out := &pb.GetStatusResponse{Fqn: fqn, Kind: k.Name}
	switch {
	case s.health[k.Name] != nil:
		out.Clusters = s.health[k.Name](fqn)
		out.Revision, out.CentralRevision = need, s.cp.Revision()
		out.Aggregate = aggregate(out.Clusters)
	case k.Parent == resource.KindGroup || k.Name == resource.KindOrganizationSetting || k.Name == resource.KindTenantSetting ||
		k.Name == resource.KindWorkspaceSetting || k.Name == resource.KindIstioInstallation:
		// Settings and IstioInstallations live in their scope's group; a
		// workspace setting's multicluster problems are in the same
		// acknowledgement.
		group, err := s.st.Get(ctx, rec.Parent)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, s.internal("status", err)
		}
		need = max(need, group.Revision)
		judged(out, need, s.cp.ObjectStatus(StatusQuery{FQN: fqn, Group: rec.Parent, Need: need}))
	case k.Name == resource.KindCluster:
		judged(out, need, s.cp.ClusterStatus(fqn, need))
	default:
		// Containers (groups, workspaces, ...) aggregate the resources below
		// them; a group's own write counts for each of its children.
		for _, bk := range s.reg.BundleKinds() {
			children, err := s.st.List(ctx, store.Query{Kind: bk, Ancestor: fqn})
			if err != nil {
				return nil, s.internal("status", err)
			}
			groups := map[string]int64{}
			for _, ch := range children {
				if !access.CanRead(chk, ch) {
					continue
				}
				if _, ok := groups[ch.Parent]; !ok {
					g, err := s.st.Get(ctx, ch.Parent)
					if err != nil && !errors.Is(err, store.ErrNotFound) {
						return nil, s.internal("status", err)
					}
					groups[ch.Parent] = g.Revision
				}
				childNeed := max(need, ch.Revision, groups[ch.Parent])
				row := &pb.GetStatusResponse{Fqn: ch.FQN, Kind: ch.Kind}
				judged(row, childNeed, s.cp.ObjectStatus(StatusQuery{FQN: ch.FQN, Group: ch.Parent, Need: childNeed}))
				out.Children = append(out.Children, row)
			}
		}
		sort.Slice(out.Children, func(i, j int) bool { return out.Children[i].GetFqn() < out.Children[j].GetFqn() })
		judged(out, need, s.cp.ObjectStatus(StatusQuery{FQN: fqn, Need: need}))
		if out.GetError() == "" {
			out.Aggregate = aggregateChildren(out.Children)
		}
	}
	return connect.NewResponse(out), nil
}
