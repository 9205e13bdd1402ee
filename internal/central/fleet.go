package central

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Fleet serves the FleetService from a Central.
type Fleet struct{ *Central }

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
	token, hash := newSecret("flj_")
	expires := f.now().Add(ttl).UTC()
	var missing bool
	err = f.st.Update(ctx, "onboard:"+fqn, func(tx store.Tx) error {
		rec, err := tx.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) || err == nil && rec.Kind != resource.KindCluster {
			missing = true
			return nil
		} else if err != nil {
			return err
		}
		if err := tx.DeleteCredentials(ctx, fqn, credJoin); err != nil {
			return err
		}
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: fqn, Kind: credJoin, Expires: expires})
	})
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	if missing {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("cluster %s does not exist: apply a Cluster resource first", fqn))
	}
	return connect.NewResponse(&pb.OnboardResponse{Cluster: fqn, Token: token, ExpireTime: timestamppb.New(expires)}), nil
}

// clusterStates returns the state of resource fqn in every cluster whose
// bundle carries it. Callers hold c.mu.
func (c *Central) clusterStates(fqn string) []*pb.ClusterState {
	var out []*pb.ClusterState
	for _, cl := range c.clusters {
		if cl.bundle == nil || !carries(cl, fqn) {
			continue
		}
		row := &pb.ClusterState{Cluster: cl.name, Connected: cl.conn != nil, State: StatePending}
		if cl.ack != nil {
			row.Version = cl.ack.GetBundleVersion()
		}
		switch {
		case cl.ack != nil && cl.ack.GetBundleVersion() == cl.version:
			row.State, row.Message = StateApplied, "applied"
			for _, r := range cl.ack.GetResources() {
				if r.GetFqn() == fqn {
					row.State, row.Message = r.GetState(), r.GetMessage()
				}
			}
		case cl.conn == nil:
			row.Message = fmt.Sprintf("agent not connected; version %s is queued for it", short(cl.version))
		default:
			row.Message = fmt.Sprintf("applying version %s", short(cl.version))
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cluster < out[j].Cluster })
	return out
}

func short(v string) string { return v[:min(len(v), 12)] }

func carries(cl *cluster, fqn string) bool {
	objs := cl.bundle.Objects
	i := sort.Search(len(objs), func(i int) bool { return objs[i].FQN >= fqn })
	return i < len(objs) && objs[i].FQN == fqn
}

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

// GetStatus implements FleetService.GetStatus.
func (f Fleet) GetStatus(ctx context.Context, req *connect.Request[pb.GetStatusRequest]) (*connect.Response[pb.GetStatusResponse], error) {
	k, fqn, err := f.target(req.Msg.GetKind(), req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	rec, err := f.st.Get(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) || err == nil && rec.Kind != k.Name {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %s not found", k.Name, fqn))
	} else if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	out := &pb.GetStatusResponse{Fqn: fqn, Kind: k.Name}
	if k.Parent == resource.KindGroup {
		f.mu.Lock()
		out.Clusters = f.clusterStates(fqn)
		f.mu.Unlock()
		out.Aggregate = aggregate(out.Clusters)
		return connect.NewResponse(out), nil
	}
	if k.Name == resource.KindCluster {
		f.mu.Lock()
		if cl := f.clusters[fqn]; cl != nil {
			row := &pb.ClusterState{Cluster: cl.name, Connected: cl.conn != nil, State: StatePending, Message: "no agent has acknowledged a bundle yet"}
			if cl.ack != nil {
				row.Version = cl.ack.GetBundleVersion()
				if row.Version == cl.version {
					row.State, row.Message = StateApplied, "converged"
				} else {
					row.Message = fmt.Sprintf("has %s, wants %s", short(row.Version), short(cl.version))
				}
			}
			out.Clusters = []*pb.ClusterState{row}
		}
		f.mu.Unlock()
		out.Aggregate = aggregate(out.Clusters)
		return connect.NewResponse(out), nil
	}
	// Containers (groups, workspaces, ...) aggregate the resources below them.
	for _, bk := range bundleKinds(f.reg) {
		children, err := f.st.List(ctx, store.Query{Kind: bk, Ancestor: fqn})
		if err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
		for _, ch := range children {
			f.mu.Lock()
			rows := f.clusterStates(ch.FQN)
			f.mu.Unlock()
			out.Children = append(out.Children, &pb.GetStatusResponse{Fqn: ch.FQN, Kind: ch.Kind, Aggregate: aggregate(rows), Clusters: rows})
		}
	}
	sort.Slice(out.Children, func(i, j int) bool { return out.Children[i].GetFqn() < out.Children[j].GetFqn() })
	out.Aggregate = aggregateChildren(out.Children)
	return connect.NewResponse(out), nil
}

// GetCompiled implements FleetService.GetCompiled: the cluster's current
// bundle compiled against the namespaces its agent last reported, exactly
// as the agent compiles it.
func (f Fleet) GetCompiled(ctx context.Context, req *connect.Request[pb.GetCompiledRequest]) (*connect.Response[pb.GetCompiledResponse], error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	f.mu.Lock()
	cl, err := f.clusterByName(req.Msg.GetCluster())
	if err != nil {
		f.mu.Unlock()
		if errors.Is(err, store.ErrNotFound) {
			return nil, connect.NewError(connect.CodeNotFound, err)
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	b, version, namespaces := cl.bundle, cl.version, cl.inv.namespaceNames()
	f.mu.Unlock()
	res := compile.Compile(b, namespaces)
	var docs []string
	for _, o := range res.Objects {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
		docs = append(docs, string(y))
	}
	out := &pb.GetCompiledResponse{Cluster: cl.fqn, BundleVersion: version, Objects: strings.Join(docs, "---\n")}
	for _, d := range res.Diagnostics {
		out.Diagnostics = append(out.Diagnostics, d.String())
	}
	return connect.NewResponse(out), nil
}
