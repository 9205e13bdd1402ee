package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"connectrpc.com/connect"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/apierror"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// errPlanDone ends the plan's transaction without committing it.
var errPlanDone = errors.New("plan: roll back")

// Plan implements FleetService.Plan. It validates the resources exactly as
// Apply would, in a transaction it never commits and leaves at once (it
// holds the write lock only while the writes are checked). It then applies
// the would-be records to a copy-on-write clone of the central control
// plane's index, outside any lock on the store, and compiles the old and
// new bundle of each affected cluster against the namespaces its agent last
// reported.
func (f Fleet) Plan(ctx context.Context, req *connect.Request[pb.PlanRequest]) (*connect.Response[pb.PlanResponse], error) {
	objs, vs := f.reg.ParseAll(req.Msg.GetResources())
	if len(vs) > 0 {
		return nil, apierror.Violations(vs, false)
	}
	for _, o := range objs {
		o.Force = true // show what a forced apply would delete
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
	var (
		written  []resource.Written
		conflict bool
		denied   bool
	)
	err := f.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, f.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		guard := access.Guard(chk, tx)
		if written, vs, conflict, err = f.reg.Write(ctx, tx, objs, func(ctx context.Context, obj *resource.Object, rec *store.Record, old *store.Record) (string, error) {
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
		return nil, f.internal("plan", err)
	}
	results, err := f.reg.Results(len(objs), written)
	if err != nil {
		return nil, f.internal("plan", err)
	}

	type before struct {
		name         string
		current      *bundle.Bundle
		next         *bundle.Bundle // as planned
		cluster      compile.Cluster
		multicluster *bundle.Multicluster
	}
	f.mu.Lock()
	planned := f.idx.clone()
	affected := map[string]bool{}
	for _, w := range written {
		if w.Outcome == resource.Unchanged || !planned.relevant(w.Record.Kind) {
			continue
		}
		if err := planned.apply(store.Event{Type: store.EventPut, Record: w.Record}, affected); err != nil {
			f.mu.Unlock()
			return nil, f.internal("plan", fmt.Errorf("plan %s: %w", w.Record.FQN, err))
		}
	}
	olds := map[string]before{}
	for fqn := range affected {
		// The planned bundle is assembled under the lock too: the clone
		// shares the index's unchanged groups, which the index's own
		// writers change in place.
		b := before{current: f.bundleOf(fqn), next: planned.bundle(fqn), multicluster: f.mc.slices[fqn]}
		if ce := planned.clusters[fqn]; ce != nil {
			b.name = ce.name
		}
		if cl := f.clusters[fqn]; cl != nil {
			b.cluster = cl.inv.cluster()
		}
		olds[fqn] = b
	}
	f.mu.Unlock()

	// The plan shows what the caller may read: another tenant's objects
	// in the same clusters, and what is wrong with them, are not its to see.
	v, err := f.view(ctx)
	if err != nil {
		return nil, f.internal("plan", err)
	}
	out := &pb.PlanResponse{Results: results}
	for _, old := range olds {
		next := old.next
		if next == nil {
			continue
		}
		// Plan previews intent: the multicluster slice (runtime state) is
		// the same before and after.
		next.Multicluster = old.multicluster
		cp := &pb.ClusterPlan{Cluster: old.name}
		after := compile.CompileIn(readable(v, next), old.cluster)
		cp.Changes = diffObjects(compileOrEmpty(readable(v, old.current), old.cluster).Objects, after.Objects)
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
