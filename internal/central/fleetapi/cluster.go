package fleetapi

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"connectrpc.com/connect"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
)

// readable is the part of a bundle the view's principal may read: the
// objects it may read and the groups they are in, and the parts of the
// multicluster slice that settings and edge gateways it may read asked for.
func readable(v *access.View, b *bundle.Bundle) *bundle.Bundle {
	if b == nil || v.Checker().Principal().Bootstrap() {
		return b
	}
	out := &bundle.Bundle{Cluster: b.Cluster}
	groups := map[string]bool{}
	for _, o := range b.Objects {
		if v.SeesObject(o.Kind, o.FQN) {
			out.Objects = append(out.Objects, o)
			groups[o.Group] = true
		}
	}
	for _, g := range b.Groups {
		if groups[g.FQN] || g.Type == compile.GroupTypeWorkspace || g.Type == compile.GroupTypeOrganization {
			// Workspaces say which namespace is whose, and the organization
			// its trust domains: structure every compilation needs.
			out.Groups = append(out.Groups, g)
		}
	}
	if mc := b.Multicluster; mc != nil {
		var part bundle.Multicluster
		for _, ew := range mc.EastWest {
			if v.SeesObject(resource.KindWorkspaceSetting, ew.Owner) {
				part.EastWest = append(part.EastWest, ew)
			}
		}
		for _, rs := range mc.Services {
			if v.SeesObject(resource.KindWorkspaceSetting, rs.Owner) {
				part.Services = append(part.Services, rs)
			}
		}
		for _, e := range mc.Edges {
			if v.SeesObject(resource.KindEdgeGateway, e.Owner) {
				part.Edges = append(part.Edges, e)
			}
		}
		if len(part.EastWest)+len(part.Services)+len(part.Edges) > 0 {
			out.Multicluster = &part
		}
	}
	return out
}

// clusterView is a cluster's current bundle and what its agent reported of
// it, for a caller who sees the cluster.
type clusterView struct {
	cluster Cluster
	caller  *access.View
}

// clusterView looks up the cluster named name (or its FQN) among those the
// caller sees (access.View.SeesCluster), once the central control plane is
// ready. Any other cluster, in any organization, answers exactly as one
// that does not exist.
func (s *Server) clusterView(ctx context.Context, name string) (clusterView, error) {
	if err := s.ready(ctx); err != nil {
		return clusterView{}, err
	}
	v, err := s.caller(ctx)
	if err != nil {
		return clusterView{}, s.internal("fleet view", err)
	}
	fqn, err := pick(name, s.cp.ClusterFQNs(name), v.SeesCluster)
	if err != nil {
		return clusterView{}, err
	}
	cl, ok := s.cp.Cluster(fqn)
	if !ok { // deleted since
		return clusterView{}, connect.NewError(connect.CodeNotFound, fmt.Errorf("no cluster named %q", name))
	}
	return clusterView{cluster: cl, caller: v}, nil
}

// pick finds the cluster name names among the FQNs of those whose FQN or
// name it is, keeping only those visible accepts: the cluster whose FQN it
// is, else the one cluster of that name. A cluster it refuses is not
// found, and an ambiguous name lists only the visible clusters.
func pick(name string, fqns []string, visible func(fqn string) bool) (string, error) {
	var found []string
	for _, fqn := range fqns {
		if !visible(fqn) {
			continue
		}
		if fqn == name {
			return fqn, nil
		}
		found = append(found, fqn)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no cluster named %q", name))
	}
	sort.Strings(found)
	return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cluster %q is ambiguous (%v): give its FQN", name, found))
}

// GetCompiled implements FleetService.GetCompiled: the cluster's current
// bundle compiled against the namespaces its agent last reported, exactly
// as the agent compiles it.
func (s *Server) GetCompiled(ctx context.Context, req *connect.Request[pb.GetCompiledRequest]) (*connect.Response[pb.GetCompiledResponse], error) {
	v, err := s.clusterView(ctx, req.Msg.GetCluster())
	if err != nil {
		return nil, err
	}
	cl, caller := v.cluster, v.caller
	res := compile.CompileIn(readable(caller, cl.Bundle), cl.In)
	var docs []string
	for _, o := range res.Objects {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, s.internal("get compiled", err)
		}
		docs = append(docs, string(y))
	}
	out := &pb.GetCompiledResponse{Cluster: cl.FQN, BundleVersion: cl.Version, Revision: cl.Revision, Objects: strings.Join(docs, "---\n")}
	for _, d := range res.Diagnostics {
		out.Diagnostics = append(out.Diagnostics, d.String())
	}
	return connect.NewResponse(out), nil
}

// GetEffective implements FleetService.GetEffective: the settings merged
// for one namespace of one cluster from the cluster's current bundle, as
// the agent merges them. The caller needs Read on the cluster and on the
// namespace's workspace; every setting in effect there is shown.
func (s *Server) GetEffective(ctx context.Context, req *connect.Request[pb.GetEffectiveRequest]) (*connect.Response[pb.GetEffectiveResponse], error) {
	ns := req.Msg.GetNamespace()
	if ns == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("namespace is required: the namespace whose settings to show"))
	}
	v, err := s.clusterView(ctx, req.Msg.GetCluster())
	if err != nil {
		return nil, err
	}
	cl := v.cluster
	// A namespace's settings are its owner's to see: the workspace's
	// readers, or for a namespace of no workspace the cluster's.
	if !v.caller.Sees(cl.FQN, ns) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("namespace %s of cluster %s is not one you may see: it is in a workspace you may not read, or in none and you may not read the cluster", ns, cl.Name))
	}
	eff := compile.Effective(cl.Bundle, cl.In, ns)
	out := &pb.GetEffectiveResponse{Cluster: cl.FQN, Namespace: ns, Workspace: eff.Workspace}
	for _, s := range eff.Settings {
		out.Settings = append(out.Settings, &pb.EffectiveSetting{Field: s.Field, Value: s.ValueJSON(), Source: s.Source, Level: s.Level,
			LimitSource: s.LimitSource, LimitLevel: s.LimitLevel})
	}
	for _, p := range eff.Problems {
		out.Problems = append(out.Problems, compile.Diagnostic{FQN: p.FQN, Field: p.Field, Message: p.Message}.String())
	}
	return connect.NewResponse(out), nil
}
