package apiserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"k8s.io/apimachinery/pkg/labels"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/apierror"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Resources implements the ResourceService.
type Resources struct {
	reg  *resource.Registry
	st   store.Store
	log  *slog.Logger
	stop <-chan struct{} // closed when the server shuts down; ends watches
	auth *Auth
}

var _ flotillav1alpha1connect.ResourceServiceHandler = (*Resources)(nil)

// errRollback ends a transaction that must not commit (dry run or violations).
var errRollback = errors.New("rollback")

// Apply implements ResourceService.Apply.
func (s *Resources) Apply(ctx context.Context, req *connect.Request[pb.ApplyRequest]) (*connect.Response[pb.ApplyResponse], error) {
	in := req.Msg.GetResources()
	if len(in) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("no resources to apply"))
	}
	objs, vs := s.reg.ParseAll(in)
	if len(vs) > 0 {
		return nil, apierror.Violations(vs, false)
	}
	for _, o := range objs {
		o.Force = req.Msg.GetForce()
	}
	var (
		written  []resource.Written
		conflict bool
		denied   bool
		rev      int64
	)
	err := s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, s.auth.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		guard := access.Guard(chk, tx)
		written, vs, conflict, err = s.reg.Write(ctx, tx, objs, func(ctx context.Context, obj *resource.Object, rec *store.Record, old *store.Record) (string, error) {
			refusal, err := guard(ctx, obj, rec, old)
			denied = denied || refusal != ""
			return refusal, err
		})
		rev = tx.Revision()
		if err == nil && (len(vs) > 0 || req.Msg.GetDryRun()) {
			return errRollback
		}
		return err
	})
	switch {
	case denied:
		return nil, apierror.Denied(vs)
	case len(vs) > 0:
		return nil, apierror.Violations(vs, conflict)
	case err != nil && !errors.Is(err, errRollback):
		return nil, internal(s.log, "apply", err)
	}
	results, err := s.reg.Results(len(in), written)
	if err != nil {
		return nil, internal(s.log, "apply", err)
	}
	return connect.NewResponse(&pb.ApplyResponse{Results: results, Revision: rev}), nil
}

func internal(log *slog.Logger, op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	log.Error(op+" failed", "err", err)
	if errors.Is(err, store.ErrUnavailable) {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s failed: the store is unavailable, so nothing was written: retry once it is back (GET /readyz says when)", op))
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("%s failed: %w", op, err))
}

// target resolves the kind and FQN a Get or Delete names.
func (s *Resources) target(kindName, fqn string, md *pb.Metadata) (*resource.Kind, string, error) {
	k, out, err := s.reg.Target(kindName, fqn, md)
	if err != nil {
		return nil, "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return k, out, nil
}

func notFound(k *resource.Kind, fqn string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %s not found", k.Name, fqn))
}

// Get implements ResourceService.Get.
func (s *Resources) Get(ctx context.Context, req *connect.Request[pb.GetRequest]) (*connect.Response[pb.GetResponse], error) {
	k, fqn, err := s.target(req.Msg.GetKind(), req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
	if err != nil {
		return nil, internal(s.log, "get", err)
	}
	rec, err := s.st.Get(ctx, fqn)
	// A record the caller may not read looks absent: same code, same words.
	if errors.Is(err, store.ErrNotFound) || (err == nil && (rec.Kind != k.Name || !access.CanRead(chk, rec))) {
		return nil, notFound(k, fqn)
	} else if err != nil {
		return nil, internal(s.log, "get", err)
	}
	res, err := s.reg.Resource(rec)
	if err != nil {
		return nil, internal(s.log, "get", err)
	}
	return connect.NewResponse(&pb.GetResponse{Resource: res}), nil
}

// List implements ResourceService.List.
func (s *Resources) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	k, ok := s.reg.Lookup(req.Msg.GetKind())
	if !ok {
		return nil, connect.NewError(connect.CodeInvalidArgument, s.reg.UnknownKind(req.Msg.GetKind()))
	}
	sel, err := labels.Parse(req.Msg.GetLabelSelector())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("label selector %q: %w", req.Msg.GetLabelSelector(), err))
	}
	size := int(req.Msg.GetPageSize())
	switch {
	case size < 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("page_size %d: give 0 (the default, %d) up to %d", size, DefaultPageSize, MaxPageSize))
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	after, err := decodePageToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	rev, err := s.st.Revision(ctx)
	if err != nil {
		return nil, internal(s.log, "list", err)
	}
	chk, err := access.Checker(ctx, s.auth.Policies, s.st, rev)
	if err != nil {
		return nil, internal(s.log, "list", err)
	}
	out := &pb.ListResponse{Revision: rev}
	// Hidden and unselected records are skipped without counting, so a
	// page is full unless the list ends; a scan is bounded all the same.
	for scanned := 0; len(out.Resources) < size && scanned < 50*size; {
		recs, err := s.st.List(ctx, store.Query{Kind: k.Name, Ancestor: req.Msg.GetParent(), Name: req.Msg.GetName(), After: after, Limit: size})
		if err != nil {
			return nil, internal(s.log, "list", err)
		}
		scanned += len(recs)
		for _, rec := range recs {
			after = rec.FQN
			if !sel.Matches(labels.Set(rec.Labels)) || !access.CanRead(chk, rec) {
				continue
			}
			res, err := s.reg.Resource(rec)
			if err != nil {
				return nil, internal(s.log, "list", err)
			}
			out.Resources = append(out.Resources, res)
			if len(out.Resources) == size {
				break
			}
		}
		if len(recs) < size {
			after = ""
			break
		}
	}
	if after != "" {
		out.NextPageToken = encodePageToken(after)
	}
	return connect.NewResponse(out), nil
}

// List page sizes.
const (
	DefaultPageSize = 500
	MaxPageSize     = 1000
)

func encodePageToken(after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(after))
}

func decodePageToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", errors.New("page_token is damaged: pass the next_page_token of the previous page unchanged")
	}
	return string(b), nil
}

// Delete implements ResourceService.Delete.
func (s *Resources) Delete(ctx context.Context, req *connect.Request[pb.DeleteRequest]) (*connect.Response[pb.DeleteResponse], error) {
	k, fqn, err := s.target(req.Msg.GetKind(), req.Msg.GetFqn(), req.Msg.GetMetadata())
	if err != nil {
		return nil, err
	}
	var (
		deleted []string
		refusal error
		rev     int64
	)
	err = s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, s.auth.Policies, tx, tx.Revision())
		if err != nil {
			return err
		}
		rec, err := tx.Get(ctx, fqn)
		if errors.Is(err, store.ErrNotFound) || (err == nil && (rec.Kind != k.Name || !access.CanRead(chk, rec))) {
			refusal = notFound(k, fqn)
			return errRollback
		} else if err != nil {
			return err
		}
		if ok, reason := access.CanDelete(chk, rec); !ok {
			refusal = connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: "+reason))
			return errRollback
		}
		if e := req.Msg.GetEtag(); e != "" && e != rec.ETag {
			refusal = connect.NewError(connect.CodeAborted, fmt.Errorf("etag %q is stale: %s is now at %q; get it again and retry", e, fqn, rec.ETag))
			return errRollback
		}
		children, err := tx.List(ctx, store.Query{Ancestor: fqn})
		if err != nil {
			return err
		}
		if len(children) > 0 && !req.Msg.GetCascade() {
			names := make([]string, 0, 3)
			for _, c := range children[:min(3, len(children))] {
				names = append(names, c.FQN)
			}
			refusal = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has %d descendant(s), e.g. %s: delete them first, or delete with cascade (--cascade)", fqn, len(children), strings.Join(names, ", ")))
			return errRollback
		}
		// Deepest first, so no child outlives its parent even mid-transaction.
		sort.SliceStable(children, func(i, j int) bool {
			return strings.Count(children[i].FQN, "/") > strings.Count(children[j].FQN, "/")
		})
		for _, c := range children {
			if ok, reason := access.CanDelete(chk, c); !ok {
				refusal = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: deleting %s deletes %s: %s", fqn, c.FQN, reason))
				return errRollback
			}
		}
		if !req.Msg.GetForce() {
			for _, c := range append(children, rec) {
				ck, ok := s.reg.Kind(c.Kind)
				if !ok || ck.CheckDelete == nil {
					continue
				}
				why, err := ck.CheckDelete(ctx, tx, c)
				if err != nil {
					return err
				}
				if why != "" {
					refusal = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s %s: %s", c.Kind, c.FQN, why))
					return errRollback
				}
			}
		}
		gone := map[string]bool{fqn: true}
		for _, c := range children {
			gone[c.FQN] = true
		}
		for _, c := range append(children, rec) {
			// A binding naming a role, team or account that is going would
			// dangle, and grant to whoever re-created the name.
			var keep []string
			for _, b := range access.References(chk, c) {
				if !gone[b] {
					keep = append(keep, b)
				}
			}
			if len(keep) > 0 {
				refusal = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s %s is named by access binding(s) %s: remove it from them (or delete them) first", c.Kind, c.FQN, strings.Join(keep, ", ")))
				return errRollback
			}
		}
		// The bindings on a deleted node go with it: none may come back to
		// life when someone re-creates the name.
		var bindings []string
		for _, c := range append(children, rec) {
			if access.IsNode(c.Kind) {
				for _, b := range access.BindingsOn(chk, c.FQN) {
					if !gone[b] {
						gone[b] = true
						bindings = append(bindings, b)
					}
				}
			}
		}
		for _, c := range append(children, rec) {
			if _, err := tx.Delete(ctx, c.FQN); err != nil {
				return err
			}
			deleted = append(deleted, c.FQN)
		}
		for _, b := range bindings {
			if _, err := tx.Delete(ctx, b); errors.Is(err, store.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			deleted = append(deleted, b)
		}
		rev = tx.Revision()
		return nil
	})
	if refusal != nil {
		return nil, refusal
	}
	if err != nil {
		return nil, internal(s.log, "delete", err)
	}
	return connect.NewResponse(&pb.DeleteResponse{Deleted: deleted, Revision: rev}), nil
}

// Kinds implements ResourceService.Kinds.
func (s *Resources) Kinds(context.Context, *connect.Request[pb.KindsRequest]) (*connect.Response[pb.KindsResponse], error) {
	out := &pb.KindsResponse{}
	for _, k := range s.reg.Kinds() {
		out.Kinds = append(out.Kinds, &pb.KindInfo{Kind: k.Name, Plural: k.Plural, ShortNames: k.Short, Parent: k.Parent})
	}
	return connect.NewResponse(out), nil
}

// watchBatch bounds one read of the event log.
const watchBatch = 500

// watchPoll bounds how long a watcher sleeps without a local commit, so
// commits by another server process on a shared database are seen too.
const watchPoll = time.Second

// Watch implements ResourceService.Watch.
func (s *Resources) Watch(ctx context.Context, req *connect.Request[pb.WatchRequest], stream *connect.ServerStream[pb.WatchResponse]) error {
	want := map[string]bool{}
	for _, name := range req.Msg.GetKinds() {
		k, ok := s.reg.Lookup(name)
		if !ok {
			return connect.NewError(connect.CodeInvalidArgument, s.reg.UnknownKind(name))
		}
		want[k.Name] = true
	}
	after, sent := req.Msg.GetFromRevision(), req.Msg.GetFromRevision()
	// States: read a batch and send it; when caught up, send a bookmark if
	// filtered events moved us past the last one sent, then sleep until a
	// commit, the poll interval, shutdown or the client leaving.
	for {
		changed := s.st.Changed()
		evs, err := s.st.Events(ctx, after, watchBatch)
		if errors.Is(err, store.ErrCompacted) {
			return connect.NewError(connect.CodeOutOfRange, err)
		} else if err != nil {
			return internal(s.log, "watch", err)
		}
		chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
		if err != nil {
			return internal(s.log, "watch", err)
		}
		for _, ev := range evs {
			after = ev.Revision
			if len(want) > 0 && !want[ev.Record.Kind] || !access.CanRead(chk, ev.Record) {
				continue
			}
			res, err := s.reg.Resource(ev.Record)
			if err != nil {
				return internal(s.log, "watch", err)
			}
			typ := pb.EventType_EVENT_TYPE_PUT
			if ev.Type == store.EventDelete {
				typ = pb.EventType_EVENT_TYPE_DELETE
			}
			if err := stream.Send(&pb.WatchResponse{Type: typ, Revision: ev.Revision, Resource: res}); err != nil {
				return err
			}
			sent = ev.Revision
		}
		if len(evs) == watchBatch {
			continue
		}
		if after > sent {
			if err := stream.Send(&pb.WatchResponse{Type: pb.EventType_EVENT_TYPE_BOOKMARK, Revision: after}); err != nil {
				return err
			}
			sent = after
		}
		select {
		case <-changed:
		case <-time.After(watchPoll):
		case <-s.stop:
			return connect.NewError(connect.CodeUnavailable, errors.New("server shutting down: reconnect and resume from your last revision"))
		case <-ctx.Done():
			return nil
		}
	}
}
