package central

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Fleet serves the FleetService from a Central. Every call is authorized
// against Policies, for the caller the authentication interceptor put in
// the context.
type Fleet struct {
	*Central
	Policies *authz.Cache
}

var _ flotillav1alpha1connect.FleetServiceHandler = Fleet{}

// States of a resource in one cluster, and aggregates over clusters.
const (
	StatePending = "Pending"
	StateApplied = "Applied"
	StateFailed  = "Failed"

	Accepted = "ACCEPTED"
	Ready    = "READY"
	Partial  = "PARTIAL"
	Failed   = "FAILED"
)

// internal answers a failure of the server itself: the caller learns that
// it failed and where to look, the log gets what failed and why.
func (f Fleet) internal(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New(op+": the request ended before it was answered"))
	}
	f.log.Error(op+" failed", "err", err)
	return connect.NewError(connect.CodeInternal, errors.New(op+" failed on the server: its log says why"))
}

// DefaultTokenTTL is how long a join token lives unless asked otherwise.
const DefaultTokenTTL = time.Hour

func (f Fleet) target(kindName, fqn string, md *pb.Metadata) (*resource.Kind, string, error) {
	k, out, err := f.reg.Target(kindName, fqn, md)
	if err != nil {
		return nil, "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return k, out, nil
}

// Onboard implements FleetService.Onboard.
func (f Fleet) Onboard(ctx context.Context, req *connect.Request[pb.OnboardRequest]) (*connect.Response[pb.OnboardResponse], error) {
	_, fqn, err := f.target(resource.KindCluster, req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	ttl := DefaultTokenTTL
	if req.Msg.GetTtl() != nil {
		ttl = req.Msg.GetTtl().AsDuration()
		if ttl <= 0 || ttl > 7*24*time.Hour {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ttl %s: give a duration between 1s and 168h", ttl))
		}
	}
	kind := credJoin
	if req.Msg.GetForce() {
		kind = credJoinForce
	}
	token, hash := newSecret("flj_")
	expires := f.now().Add(ttl).UTC()
	var (
		missing bool
		denied  error
	)
	err = f.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, f.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		rec, err := tx.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != resource.KindCluster || !access.CanRead(chk, rec)) {
			missing = true
			return nil
		} else if err != nil {
			return err
		}
		// A join token lets its holder act as the cluster: it takes Write.
		if ok, reason := chk.Can(authz.Write, resource.KindCluster, fqn); !ok {
			denied = connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: onboarding issues the cluster's credential; "+reason))
			return nil
		}
		// Only now, to one who may onboard it: whether its agent is there.
		if f.agentConnected(fqn) && !req.Msg.GetForce() {
			denied = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has a connected agent: a new join would replace its credential; pass --force to move the cluster to a new agent", fqn))
			return nil
		}
		for _, k := range []string{credJoin, credJoinForce} {
			if err := tx.DeleteCredentials(ctx, fqn, k); err != nil {
				return err
			}
		}
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: fqn, Kind: kind, Expires: expires})
	})
	if err != nil {
		return nil, f.internal("onboard", err)
	}
	if denied != nil {
		return nil, denied
	}
	if missing {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("cluster %s does not exist: apply a Cluster resource first", fqn))
	}
	return connect.NewResponse(&pb.OnboardResponse{Cluster: fqn, Token: token, ExpireTime: timestamppb.New(expires)}), nil
}

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

// view is the caller's view of the fleet (access.View) over the
// workspaces the central control plane knows.
func (f Fleet) view(ctx context.Context) (*access.View, error) {
	chk, err := access.ReadChecker(ctx, f.Policies, f.st)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	ws := maps.Clone(f.mc.workspaces) // the selectors are replaced, never changed
	f.mu.Unlock()
	return access.NewView(chk, ws), nil
}

// clusterStates returns the state of the object fqn (in group) in every
// cluster whose bundle carries it, judged against store revision need: a
// cluster counts as Applied only once it has applied need. Callers hold c.mu.
func (c *Central) clusterStates(group, fqn string, need int64) []*pb.ClusterState {
	var out []*pb.ClusterState
	for _, cf := range c.idx.targets(group, fqn) {
		cl := c.clusters[cf]
		if cl == nil {
			continue
		}
		applied := c.appliedRevision(cl)
		row := &pb.ClusterState{Cluster: cl.name, Connected: cl.connected(), State: StatePending, Revision: applied, Version: cl.ack.GetBundleVersion()}
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

func short(v string) string { return v[:min(len(v), 12)] }

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

// GetStatus implements FleetService.GetStatus. A resource counts as
// Applied in a cluster only once the cluster has applied the store revision
// of its last write, of its group's last write, and the caller's
// min_revision, whichever is newest: status never reports a change live
// before it is.
func (f Fleet) GetStatus(ctx context.Context, req *connect.Request[pb.GetStatusRequest]) (*connect.Response[pb.GetStatusResponse], error) {
	k, fqn, err := f.target(req.Msg.GetKind(), req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	chk, err := access.ReadChecker(ctx, f.Policies, f.st)
	if err != nil {
		return nil, f.internal("status", err)
	}
	rec, err := f.st.Get(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) || err == nil && (rec.Kind != k.Name || !access.CanRead(chk, rec)) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %s not found", k.Name, fqn))
	} else if err != nil {
		return nil, f.internal("status", err)
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	need := max(req.Msg.GetMinRevision(), rec.Revision)
	out := &pb.GetStatusResponse{Fqn: fqn, Kind: k.Name}
	switch {
	case f.health[k.Name] != nil:
		out.Clusters = f.health[k.Name](fqn)
		f.mu.Lock()
		out.Revision, out.CentralRevision = need, f.rev
		f.mu.Unlock()
		out.Aggregate = aggregate(out.Clusters)
	case k.Parent == resource.KindGroup || k.Name == resource.KindOrganizationSetting || k.Name == resource.KindTenantSetting ||
		k.Name == resource.KindWorkspaceSetting:
		// Settings live in their scope's group; a workspace setting's
		// multicluster problems are in the same acknowledgement.
		group, err := f.st.Get(ctx, rec.Parent)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, f.internal("status", err)
		}
		need = max(need, group.Revision)
		f.mu.Lock()
		out.Clusters = f.clusterStates(rec.Parent, fqn, need)
		f.judge(out, need, fqn, rec.Parent)
		f.mu.Unlock()
	case k.Name == resource.KindCluster:
		f.mu.Lock()
		if cl := f.clusters[fqn]; cl != nil {
			applied := f.appliedRevision(cl)
			row := &pb.ClusterState{Cluster: cl.name, Connected: cl.connected(), State: StatePending, Revision: applied, Version: cl.ack.GetBundleVersion(), Message: "no agent has acknowledged a bundle yet"}
			switch {
			case cl.ack == nil:
			case applied >= need:
				row.State, row.Message = StateApplied, "converged"
				if cl.ack.GetBundleVersion() != cl.version {
					row.Message = fmt.Sprintf("has revision %d; applying %s", applied, short(cl.version))
				}
			default:
				row.Message = fmt.Sprintf("has revision %d (%s), needs %d (%s)", applied, short(row.Version), need, short(cl.version))
			}
			out.Clusters = []*pb.ClusterState{row}
		}
		f.judge(out, need, fqn)
		f.mu.Unlock()
	default:
		// Containers (groups, workspaces, ...) aggregate the resources below
		// them; a group's own write counts for each of its children.
		for _, bk := range bundleKinds(f.reg) {
			children, err := f.st.List(ctx, store.Query{Kind: bk, Ancestor: fqn})
			if err != nil {
				return nil, f.internal("status", err)
			}
			groups := map[string]int64{}
			for _, ch := range children {
				if !access.CanRead(chk, ch) {
					continue
				}
				if _, ok := groups[ch.Parent]; !ok {
					g, err := f.st.Get(ctx, ch.Parent)
					if err != nil && !errors.Is(err, store.ErrNotFound) {
						return nil, f.internal("status", err)
					}
					groups[ch.Parent] = g.Revision
				}
				childNeed := max(need, ch.Revision, groups[ch.Parent])
				row := &pb.GetStatusResponse{Fqn: ch.FQN, Kind: ch.Kind}
				f.mu.Lock()
				row.Clusters = f.clusterStates(ch.Parent, ch.FQN, childNeed)
				f.judge(row, childNeed, ch.FQN, ch.Parent)
				f.mu.Unlock()
				out.Children = append(out.Children, row)
			}
		}
		sort.Slice(out.Children, func(i, j int) bool { return out.Children[i].GetFqn() < out.Children[j].GetFqn() })
		f.mu.Lock()
		f.judge(out, need, fqn)
		f.mu.Unlock()
		if out.GetError() == "" {
			out.Aggregate = aggregateChildren(out.Children)
		}
	}
	return connect.NewResponse(out), nil
}

// judge sets the response's revisions and aggregate. When the central
// control plane cannot compute bundles up to need, or a record the answer
// depends on cannot be used, the aggregate is FAILED with the reason.
// Callers hold c.mu.
func (c *Central) judge(out *pb.GetStatusResponse, need int64, fqns ...string) {
	out.Revision, out.CentralRevision = need, c.rev
	for _, f := range fqns {
		if why, ok := c.broken[f]; ok {
			out.Error = fmt.Sprintf("%s cannot be used: %s", f, why)
		}
	}
	if c.failure != nil && c.rev < need {
		out.Error = fmt.Sprintf("the central control plane cannot compute bundles past revision %d since %s: the server log says why", c.rev, c.failure.since.UTC().Format(time.RFC3339))
	}
	if out.Error != "" {
		out.Aggregate = Failed
		return
	}
	out.Aggregate = aggregate(out.Clusters)
}

// clusterView is a cluster's current bundle and what its agent reported of
// it, for a caller who sees the cluster.
type clusterView struct {
	cl      *cluster
	bundle  *bundle.Bundle
	version string
	rev     int64
	in      compile.Cluster
	view    *access.View
}

// clusterView looks up the cluster named name (or its FQN) among those the
// caller sees (access.View.SeesCluster), once the central control plane is
// ready. Any other cluster, in any organization, answers exactly as one
// that does not exist.
func (f Fleet) clusterView(ctx context.Context, name string) (clusterView, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return clusterView{}, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	v, err := f.view(ctx)
	if err != nil {
		return clusterView{}, f.internal("fleet view", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cl, err := f.clusterByName(name, v.SeesCluster)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return clusterView{}, connect.NewError(connect.CodeNotFound, fmt.Errorf("no cluster named %q", name))
		}
		return clusterView{}, connect.NewError(connect.CodeInvalidArgument, err)
	}
	return clusterView{cl: cl, bundle: f.bundleOf(cl.fqn), version: cl.version, rev: f.rev, in: cl.inv.cluster(), view: v}, nil
}

// GetCompiled implements FleetService.GetCompiled: the cluster's current
// bundle compiled against the namespaces its agent last reported, exactly
// as the agent compiles it.
func (f Fleet) GetCompiled(ctx context.Context, req *connect.Request[pb.GetCompiledRequest]) (*connect.Response[pb.GetCompiledResponse], error) {
	v, err := f.clusterView(ctx, req.Msg.GetCluster())
	if err != nil {
		return nil, err
	}
	cl, b, version, rev, in := v.cl, v.bundle, v.version, v.rev, v.in
	res := compile.CompileIn(readable(v.view, b), in)
	var docs []string
	for _, o := range res.Objects {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, f.internal("get compiled", err)
		}
		docs = append(docs, string(y))
	}
	out := &pb.GetCompiledResponse{Cluster: cl.fqn, BundleVersion: version, Revision: rev, Objects: strings.Join(docs, "---\n")}
	for _, d := range res.Diagnostics {
		out.Diagnostics = append(out.Diagnostics, d.String())
	}
	return connect.NewResponse(out), nil
}

// GetEffective implements FleetService.GetEffective: the settings merged
// for one namespace of one cluster from the cluster's current bundle, as
// the agent merges them. The caller needs Read on the cluster and on the
// namespace's workspace; every setting in effect there is shown.
func (f Fleet) GetEffective(ctx context.Context, req *connect.Request[pb.GetEffectiveRequest]) (*connect.Response[pb.GetEffectiveResponse], error) {
	ns := req.Msg.GetNamespace()
	if ns == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("namespace is required: the namespace whose settings to show"))
	}
	v, err := f.clusterView(ctx, req.Msg.GetCluster())
	if err != nil {
		return nil, err
	}
	cl, b, in := v.cl, v.bundle, v.in
	// A namespace's settings are its owner's to see: the workspace's
	// readers, or for a namespace of no workspace the cluster's.
	if !v.view.Sees(cl.fqn, ns) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("namespace %s of cluster %s is not one you may see: it is in a workspace you may not read, or in none and you may not read the cluster", ns, cl.name))
	}
	eff := compile.Effective(b, in, ns)
	out := &pb.GetEffectiveResponse{Cluster: cl.fqn, Namespace: ns, Workspace: eff.Workspace}
	for _, s := range eff.Settings {
		out.Settings = append(out.Settings, &pb.EffectiveSetting{Field: s.Field, Value: s.ValueJSON(), Source: s.Source, Level: s.Level,
			LimitSource: s.LimitSource, LimitLevel: s.LimitLevel})
	}
	for _, p := range eff.Problems {
		out.Problems = append(out.Problems, compile.Diagnostic{FQN: p.FQN, Field: p.Field, Message: p.Message}.String())
	}
	return connect.NewResponse(out), nil
}

// ListServices lists the fleet's services from the registry, with only the
// instances the caller sees: those in namespaces of workspaces it may read,
// or of no workspace in clusters it may read (access.View). A service with
// no such instance is left out, and only settings it may read are named as
// exposing it.
func (f Fleet) ListServices(ctx context.Context, req *connect.Request[pb.ListServicesRequest]) (*connect.Response[pb.ListServicesResponse], error) {
	v, err := f.view(ctx)
	if err != nil {
		return nil, f.internal("list services", err)
	}
	out := &pb.ListServicesResponse{}
	// The view reads nothing: it may be asked under the registry's lock.
	services := f.services.Services(v.SeesCluster, registry.Filter{Namespace: req.Msg.GetNamespace(), Name: req.Msg.GetName()})
	kept := services[:0]
	for _, s := range services {
		ins := s.Instances[:0]
		for _, in := range s.Instances {
			if v.Sees(in.Cluster, s.Namespace) {
				ins = append(ins, in)
			}
		}
		if s.Instances = ins; len(ins) > 0 {
			kept = append(kept, s)
		}
	}
	services = kept
	exposed := make([][]string, len(services))
	f.mu.Lock()
	for i, s := range services {
		exposed[i] = f.exposedBy(s)
	}
	f.mu.Unlock()
	for i, s := range services {
		var by []string
		for _, fqn := range exposed[i] {
			if v.SeesObject(resource.KindWorkspaceSetting, fqn) {
				by = append(by, fqn)
			}
		}
		info := &pb.FleetServiceInfo{Namespace: s.Namespace, Name: s.Name, Conflicts: s.Conflicts, ExposedBy: by}
		for _, p := range s.Ports {
			info.Ports = append(info.Ports, &pb.FleetServicePort{Name: p.Name, Number: p.Number, Protocol: p.Protocol})
		}
		for _, in := range s.Instances {
			si := &pb.ServiceInstance{Cluster: in.Cluster, Ready: in.Ready, Stale: in.Stale, LastSeen: timestamppb.New(in.LastSeen)}
			for _, l := range in.Localities {
				si.Endpoints = append(si.Endpoints, &pb.LocalityCount{Region: l.GetRegion(), Zone: l.GetZone(), Ready: l.GetReady()})
			}
			info.Instances = append(info.Instances, si)
		}
		out.Services = append(out.Services, info)
	}
	return connect.NewResponse(out), nil
}
