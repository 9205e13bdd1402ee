package apiserver

import (
	"context"
	"encoding/json"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Audit implements the AuditService.
type Audit struct {
	reg  *resource.Registry
	st   store.Store
	log  *slog.Logger
	auth *Auth
}

var _ flotillav1alpha1connect.AuditServiceHandler = (*Audit)(nil)

// ListAudit implements AuditService.ListAudit.
func (a *Audit) ListAudit(ctx context.Context, req *connect.Request[pb.ListAuditRequest]) (*connect.Response[pb.ListAuditResponse], error) {
	limit := int(req.Msg.GetLimit())
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	q := store.AuditQuery{FQN: req.Msg.GetFqn(), Limit: limit, Refused: req.Msg.GetRefused()}
	if req.Msg.GetSince() != nil {
		q.Since = req.Msg.GetSince().AsTime()
	}
	if name := req.Msg.GetKind(); name != "" {
		k, ok := a.reg.Lookup(name)
		if !ok {
			return nil, connect.NewError(connect.CodeInvalidArgument, a.reg.UnknownKind(name))
		}
		q.Kind = k.Name
	}
	chk, err := access.ReadChecker(ctx, a.auth.Policies, a.st)
	if err != nil {
		return nil, internal(a.log, "list audit", err)
	}
	recs, err := a.st.Audit(ctx, q)
	if err != nil {
		return nil, internal(a.log, "list audit", err)
	}
	out := &pb.ListAuditResponse{}
	for _, r := range recs {
		if !canReadAudit(chk, r) {
			continue
		}
		actor, method := store.SplitActor(r.Actor)
		ar := &pb.AuditRecord{Revision: r.Revision, Time: timestamppb.New(r.Time), Actor: actor, Method: method, Operation: r.Operation, Kind: r.Kind, Fqn: r.FQN, Refused: r.Refused, Reason: r.Reason}
		for _, c := range r.Changes {
			ar.Changes = append(ar.Changes, &pb.FieldChange{Path: c.Path, Old: jsonValue(c.Old), New: jsonValue(c.New)})
		}
		out.Records = append(out.Records, ar)
	}
	return connect.NewResponse(out), nil
}

// MaxAuditPage caps the records of one ListAudit.
const MaxAuditPage = 1000

// canReadAudit shows a record to whoever may read the object it is about
// (judged by the bindings above it: a deleted object's creator is gone).
// A refused request about no object is shown to the bootstrap
// administrator and to the caller who made it.
func canReadAudit(chk *authz.Checker, r store.AuditRecord) bool {
	if r.FQN == "" {
		return chk.Principal().Bootstrap() || r.Actor == store.Actor(chk.Principal().Subject, chk.Principal().Method)
	}
	kind := r.Kind
	if kind == "" {
		kind = authz.AnyKind
	}
	ok, _ := chk.Can(authz.Read, kind, r.FQN)
	return ok
}

func jsonValue(raw json.RawMessage) *structpb.Value {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return structpb.NewStringValue(string(raw))
	}
	val, err := structpb.NewValue(v)
	if err != nil {
		return structpb.NewStringValue(string(raw))
	}
	return val
}
