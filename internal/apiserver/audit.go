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
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Audit implements the AuditService.
type Audit struct {
	reg *resource.Registry
	st  store.Store
	log *slog.Logger
}

var _ flotillav1alpha1connect.AuditServiceHandler = (*Audit)(nil)

// ListAudit implements AuditService.ListAudit.
func (a *Audit) ListAudit(ctx context.Context, req *connect.Request[pb.ListAuditRequest]) (*connect.Response[pb.ListAuditResponse], error) {
	q := store.AuditQuery{FQN: req.Msg.GetFqn(), Limit: int(req.Msg.GetLimit())}
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
	recs, err := a.st.Audit(ctx, q)
	if err != nil {
		return nil, internal(a.log, "list audit", err)
	}
	out := &pb.ListAuditResponse{}
	for _, r := range recs {
		ar := &pb.AuditRecord{Revision: r.Revision, Time: timestamppb.New(r.Time), Actor: r.Actor, Operation: r.Operation, Kind: r.Kind, Fqn: r.FQN}
		for _, c := range r.Changes {
			ar.Changes = append(ar.Changes, &pb.FieldChange{Path: c.Path, Old: jsonValue(c.Old), New: jsonValue(c.New)})
		}
		out.Records = append(out.Records, ar)
	}
	return connect.NewResponse(out), nil
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
