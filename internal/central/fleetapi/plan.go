package fleetapi

import (
	"context"
	"encoding/json"
	"errors"
	"sort"

	"connectrpc.com/connect"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/apierror"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istioinstall"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// errPlanDone ends the plan's transaction without committing it.
var errPlanDone = errors.New("plan: roll back")

// Plan implements FleetService.Plan. It validates the resources exactly as
// Apply would, in a transaction it never commits and leaves at once (it
// holds the write lock only while the writes are checked). It then has the
// central control plane apply the would-be records to a copy-on-write
// clone of its index (View.Plan), outside any lock on the store, and
// compiles the old and new bundle of each affected cluster against the
// namespaces its agent last reported, outside the control plane's lock.
func (s *Server) Plan(ctx context.Context, req *connect.Request[pb.PlanRequest]) (*connect.Response[pb.PlanResponse], error) {
	objs, vs := s.reg.ParseAll(req.Msg.GetResources())
	if len(vs) > 0 {
		return nil, apierror.Violations(vs, false)
	}
	for _, o := range objs {
		o.Force = true // show what a forced apply would delete
	}
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	var (
		written  []resource.Written
		conflict bool
		denied   bool
	)
	err := s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, s.policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		guard := access.Guard(chk, tx)
		if written, vs, conflict, err = s.reg.Write(ctx, tx, objs, func(ctx context.Context, obj *resource.Object, rec *store.Record, old *store.Record) (string, error) {
			refusal, err := guard(ctx, obj, rec, old)
			denied = denied || refusal != ""
			return refusal, err
		}); err != nil {
			return err
		}
		return errPlanDone
	})
	switch {
	case denied:
		return nil, apierror.Denied(vs)
	case len(vs) > 0:
		return nil, apierror.Violations(vs, conflict)
	}
	if err != nil && !errors.Is(err, errPlanDone) {
		return nil, s.internal("plan", err)
	}
	results, err := s.reg.Results(len(objs), written)
	if err != nil {
		return nil, s.internal("plan", err)
	}
	planned, err := s.cp.Plan(written)
	if err != nil {
		return nil, s.internal("plan", err)
	}

	// The plan shows what the caller may read: another tenant's objects
	// in the same clusters, and what is wrong with them, are not its to see.
	v, err := s.caller(ctx)
	if err != nil {
		return nil, s.internal("plan", err)
	}
	out := &pb.PlanResponse{Results: results}
	for _, pc := range planned {
		cp := &pb.ClusterPlan{Cluster: pc.Name}
		after := compile.CompileIn(readable(v, pc.Next), pc.In)
		before := compileOrEmpty(readable(v, pc.Current), pc.In)
		cp.Changes = diffObjects(before.Objects, after.Objects)
		cp.Istio = istioinstall.Summary(before.Objects, after.Objects)
		for _, d := range after.Diagnostics {
			cp.Diagnostics = append(cp.Diagnostics, d.String())
		}
		out.Clusters = append(out.Clusters, cp)
	}
	sort.Slice(out.Clusters, func(i, j int) bool { return out.Clusters[i].GetCluster() < out.Clusters[j].GetCluster() })
	return connect.NewResponse(out), nil
}

func compileOrEmpty(b *bundle.Bundle, in compile.Cluster) compile.Result {
	if b == nil {
		return compile.Result{}
	}
	return compile.CompileIn(b, in)
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
