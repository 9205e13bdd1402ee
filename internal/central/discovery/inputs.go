package discovery

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// inputs are the intent the slices are made of: workspaces and their
// selectors, workspace settings, clusters, and the edge kinds.
type inputs struct {
	workspaces map[string]selector.Set // workspace FQN → its namespace selector
	settings   map[string]setting      // WorkspaceSetting FQN → setting
	clusters   map[string]clusterRef   // Cluster FQN → its organization and name
	edges      edges
}

type setting struct {
	fqn, workspace, org string
	ew                  *pb.EastWestGatewaySettings
}

// clusterRef is a cluster as the slices name it.
type clusterRef struct{ org, name string }

func newInputs() inputs {
	return inputs{workspaces: map[string]selector.Set{}, settings: map[string]setting{}, clusters: map[string]clusterRef{}, edges: newEdges()}
}

// Relevant reports whether records of kind feed the slices.
func Relevant(kind string) bool {
	return kind == resource.KindWorkspace || kind == resource.KindWorkspaceSetting || kind == resource.KindGroup || edgeKind(kind)
}

// apply takes one event of a relevant kind. It reports whether the slices
// must be recomputed whole (an input moved) and whether they must be
// before the bundles of the event's revision are sent (now: an edge input
// moved while edge gateways exist, or an edge gateway did: a drain, or an
// edge gateway, is then in every bundle of a later revision, which
// `cluster drain --wait` and status rely on). A record it cannot decode
// is dropped from the inputs and reported.
func (in *inputs) apply(ev store.Event) (moved, now bool, err error) {
	r := ev.Record
	switch {
	case r.Kind == resource.KindGroup: // a group's reach moves edge targets
		return len(in.edges.gateways) > 0, false, nil
	case edgeKind(r.Kind):
		if r.Kind == resource.KindCluster {
			if ev.Type == store.EventDelete {
				delete(in.clusters, r.FQN)
			} else {
				in.clusters[r.FQN] = clusterRef{org: resource.OrganizationOf(r.FQN), name: r.Name}
			}
		}
		changed, err := in.edges.apply(ev) // a cluster that comes or goes is a change there too
		return changed, changed && len(in.edges.gateways) > 0 || r.Kind == resource.KindEdgeGateway, err
	}
	if ev.Type == store.EventDelete {
		delete(in.workspaces, r.FQN)
		delete(in.settings, r.FQN)
		return true, false, nil
	}
	switch r.Kind {
	case resource.KindWorkspace:
		sel, err := resource.StoredWorkspaceSelector(r)
		if err != nil {
			delete(in.workspaces, r.FQN)
			return true, false, err
		}
		in.workspaces[r.FQN] = sel
	case resource.KindWorkspaceSetting:
		spec := &pb.WorkspaceSettingSpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			delete(in.settings, r.FQN)
			return true, false, fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		in.settings[r.FQN] = setting{fqn: r.FQN, workspace: r.Parent, org: resource.OrganizationOf(r.FQN), ew: spec.GetEastWestGateway()}
	}
	return true, false, nil
}

// load reads every input from the store.
func loadInputs(ctx context.Context, st store.Reader) (inputs, error) {
	in := newInputs()
	for _, kind := range []string{resource.KindWorkspace, resource.KindWorkspaceSetting, resource.KindCluster, resource.KindIngressGateway, resource.KindEdgeGateway} {
		recs, err := st.List(ctx, store.Query{Kind: kind})
		if err != nil {
			return inputs{}, err
		}
		for _, r := range recs {
			_, _, _ = in.apply(store.Event{Type: store.EventPut, Record: r}) // an undecodable record is left out; the API refuses to write one
		}
	}
	return in, nil
}
