package resource

import (
	"context"
	"errors"
	"fmt"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/store"
)

// Outcome is what a write did to one resource.
type Outcome int

// Outcomes of Write.
const (
	Created Outcome = iota + 1
	Configured
	Unchanged
)

// Written is the result for one object of a request.
type Written struct {
	Index   int // position in the request
	Record  store.Record
	Outcome Outcome
}

// ParseAll parses every resource of a request; a resource named twice is a
// violation too. The objects are usable only when there are no violations.
func (r *Registry) ParseAll(in []*pb.Resource) ([]*Object, []Violation) {
	objs := make([]*Object, len(in))
	var vs []Violation
	seen := map[string]int{}
	for i, res := range in {
		obj, bad := r.Parse(i, res)
		vs = append(vs, bad...)
		if obj == nil {
			continue
		}
		if j, dup := seen[obj.FQN()]; dup {
			vs = append(vs, Violation{Index: i, Kind: obj.Kind.Name, Name: obj.Name, Field: "metadata.name", Message: fmt.Sprintf("%s appears twice in this request (also at index %d): keep one", obj.FQN(), j)})
			continue
		}
		seen[obj.FQN()] = i
		objs[i] = obj
	}
	return objs, vs
}

// Guard authorizes one write inside the transaction, before the write's
// references are checked. It may set the server-kept annotations of rec (the
// record about to be written); old is nil for a create. A non-empty refusal
// refuses the write.
type Guard func(ctx context.Context, obj *Object, rec *store.Record, old *store.Record) (refusal string, err error)

// Write writes parsed objects in tx, parents first, checking etags, guard
// and cross-object rules against what tx sees (earlier objects of the same
// request included). It returns every violation, not just the first;
// conflict is set when one is a stale etag. The caller must not commit tx
// when there are violations. err is for failures of the store itself.
func (r *Registry) Write(ctx context.Context, tx store.Tx, objs []*Object, guard Guard) (written []Written, vs []Violation, conflict bool, err error) {
	kinds := make([]*Kind, len(objs))
	for i, o := range objs {
		kinds[i] = o.Kind
	}
	for _, i := range r.SortByDepth(kinds) {
		obj := objs[i]
		bad := func(field, format string, args ...any) {
			vs = append(vs, Violation{Index: i, Kind: obj.Kind.Name, Name: obj.Name, Field: field, Message: fmt.Sprintf(format, args...)})
		}
		rec, err := obj.Record()
		if err != nil {
			return nil, nil, false, err
		}
		old, err := tx.Get(ctx, rec.FQN)
		exists := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, nil, false, err
		}
		// The guard first: what an etag says of an object is for those
		// who may change it.
		if guard != nil {
			var prev *store.Record
			if exists {
				prev = &old
			}
			refusal, err := guard(ctx, obj, &rec, prev)
			if err != nil {
				return nil, nil, false, err
			}
			if refusal != "" {
				bad("", "%s", refusal)
				continue
			}
		}
		switch {
		case obj.ETag != "" && !exists:
			bad("metadata.etag", "%s does not exist, so etag %q cannot match: remove the etag to create it", rec.FQN, obj.ETag)
			continue
		case obj.ETag != "" && obj.ETag != old.ETag:
			conflict = true
			bad("metadata.etag", "is %q but %s is now at %q: someone changed it since you read it; get it again, reapply your change, and retry", obj.ETag, rec.FQN, old.ETag)
			continue
		}
		fes, err := r.CheckRefs(ctx, tx, obj)
		if err != nil {
			return nil, nil, false, fmt.Errorf("check %s: %w", rec.FQN, err)
		}
		for _, fe := range fes {
			bad(fe.Field, "%s", fe.Message)
		}
		if len(fes) > 0 {
			continue
		}
		outcome := Created
		if exists {
			outcome = Configured
			if SameContent(old, rec) {
				outcome, rec = Unchanged, old
			}
		}
		if outcome != Unchanged {
			if rec, err = tx.Put(ctx, rec); err != nil {
				return nil, nil, false, err
			}
		}
		written = append(written, Written{Index: i, Record: rec, Outcome: outcome})
	}
	return written, vs, conflict, nil
}

// Results turns what Write wrote into API results, in request order (n is
// the request's length).
func (r *Registry) Results(n int, written []Written) ([]*pb.ApplyResult, error) {
	results := make([]*pb.ApplyResult, n)
	for _, w := range written {
		out, err := r.Resource(w.Record)
		if err != nil {
			return nil, err
		}
		results[w.Index] = &pb.ApplyResult{Index: int32(w.Index), Resource: out, Outcome: outcomes[w.Outcome]}
	}
	return results, nil
}

var outcomes = map[Outcome]pb.Outcome{
	Created:    pb.Outcome_OUTCOME_CREATED,
	Configured: pb.Outcome_OUTCOME_CONFIGURED,
	Unchanged:  pb.Outcome_OUTCOME_UNCHANGED,
}
