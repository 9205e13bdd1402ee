package central

import (
	"context"
	"encoding/json"
	"errors"
	"sort"

	"connectrpc.com/connect"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// errPlanDone ends the plan's transaction without committing it.
var errPlanDone = errors.New("plan: roll back")

// Plan implements FleetService.Plan: it writes the resources in a
// transaction it never commits, computes the bundles that would result, and
// compiles each cluster's old and new bundle against the namespaces its
// agent last reported.
func (f Fleet) Plan(ctx context.Context, req *connect.Request[pb.PlanRequest]) (*connect.Response[pb.PlanResponse], error) {
	objs, vs := f.reg.ParseAll(req.Msg.GetResources())
	if len(vs) > 0 {
		return nil, apiserver.ViolationError(vs, false)
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	var (
		written  []resource.Written
		conflict bool
		planned  map[string]*bundle.Bundle
		clusters []store.Record
	)
	err := f.st.Update(ctx, "plan", func(tx store.Tx) error {
		var err error
		if written, vs, conflict, err = f.reg.Write(ctx, tx, objs); err != nil || len(vs) > 0 {
			return errors.Join(err, errPlanDone)
		}
		in, err := readIntent(ctx, f.reg, tx)
		if err != nil {
			return err
		}
		clusters = in.Clusters
		if planned, err = Bundles(f.reg, in); err != nil {
			return err
		}
		return errPlanDone
	})
	if len(vs) > 0 {
		return nil, apiserver.ViolationError(vs, conflict)
	}
	if err != nil && !errors.Is(err, errPlanDone) || errors.Is(err, errPlanDone) && planned == nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	results, err := apiserver.ApplyResults(f.reg, len(objs), written)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	out := &pb.PlanResponse{Results: results}
	for _, rec := range clusters {
		f.mu.Lock()
		var (
			current    *bundle.Bundle
			namespaces []string
		)
		if cl := f.clusters[rec.FQN]; cl != nil {
			current, namespaces = cl.bundle, cl.inv.namespaceNames()
		}
		f.mu.Unlock()
		cp := &pb.ClusterPlan{Cluster: rec.Name}
		before := compileOrEmpty(current, namespaces)
		after := compile.Compile(planned[rec.FQN], namespaces)
		cp.Changes = diffObjects(before.Objects, after.Objects)
		for _, d := range after.Diagnostics {
			cp.Diagnostics = append(cp.Diagnostics, d.String())
		}
		out.Clusters = append(out.Clusters, cp)
	}
	sort.Slice(out.Clusters, func(i, j int) bool { return out.Clusters[i].GetCluster() < out.Clusters[j].GetCluster() })
	return connect.NewResponse(out), nil
}

func compileOrEmpty(b *bundle.Bundle, namespaces []string) compile.Result {
	if b == nil {
		return compile.Result{}
	}
	return compile.Compile(b, namespaces)
}

type objectKey struct{ apiVersion, kind, namespace, name string }

func keyOf(u *unstructured.Unstructured) objectKey {
	return objectKey{u.GetAPIVersion(), u.GetKind(), u.GetNamespace(), u.GetName()}
}

// diffObjects lists what turning before into after creates, updates and deletes.
func diffObjects(before, after []*unstructured.Unstructured) []*pb.PlannedChange {
	old := map[objectKey]*unstructured.Unstructured{}
	for _, u := range before {
		old[keyOf(u)] = u
	}
	var out []*pb.PlannedChange
	change := func(action string, u *unstructured.Unstructured) {
		out = append(out, &pb.PlannedChange{Action: action, ApiVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Owner: u.GetAnnotations()[compile.AnnotationOwner]})
	}
	for _, u := range after {
		k := keyOf(u)
		prev, ok := old[k]
		delete(old, k)
		switch {
		case !ok:
			change("create", u)
		case !sameObject(prev, u):
			change("update", u)
		}
	}
	for _, u := range before {
		if _, gone := old[keyOf(u)]; gone {
			change("delete", u)
		}
	}
	return out
}

func sameObject(a, b *unstructured.Unstructured) bool {
	ja, errA := json.Marshal(a.Object)
	jb, errB := json.Marshal(b.Object)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

// readIntent reads what bundles are computed from.
func readIntent(ctx context.Context, reg *resource.Registry, r store.Reader) (Intent, error) {
	var (
		in  Intent
		err error
	)
	if in.Clusters, err = r.List(ctx, store.Query{Kind: resource.KindCluster}); err != nil {
		return in, err
	}
	if in.Groups, err = r.List(ctx, store.Query{Kind: resource.KindGroup}); err != nil {
		return in, err
	}
	for _, k := range bundleKinds(reg) {
		objs, err := r.List(ctx, store.Query{Kind: k})
		if err != nil {
			return in, err
		}
		in.Objects = append(in.Objects, objs...)
	}
	return in, nil
}
