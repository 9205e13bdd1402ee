package apiserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

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
//
// Both procedures read the store in batches below (ListAudit, newest first)
// or above (ExportAudit, oldest first) a cursor, narrowed in SQL to the
// subtrees the caller holds a grant on, and judge each record as a read of
// what it is about (auditReader). Hidden records move the cursor and are
// not counted, so a page is full unless the audit ends or the scan bound
// is reached; either way the cursor says where to go on.
type Audit struct {
	reg  *resource.Registry
	st   store.Store
	log  *slog.Logger
	auth *Auth
}

var _ flotillav1alpha1connect.AuditServiceHandler = (*Audit)(nil)

// Audit page sizes and scan bounds.
const (
	// MaxAuditPage caps the records of one ListAudit page (and is the
	// default).
	MaxAuditPage = 1000
	// auditBatch is the least one store read asks for.
	auditBatch = 200
	// auditScanPages bounds one page's scan, in page sizes (or batches,
	// whichever is larger) of records read.
	auditScanPages = 50
	// exportBatch is one store read, and at most one message, of an export.
	exportBatch = 500
	// maxScopeTerms bounds the subtrees a scan is narrowed to in SQL; a
	// caller with grants on more nodes is judged record by record alone.
	maxScopeTerms = 100
	// bindingHistoryPages bounds the look back for an access binding's
	// target, in batches.
	bindingHistoryPages = 20
)

// ListAudit implements AuditService.ListAudit.
func (a *Audit) ListAudit(ctx context.Context, req *connect.Request[pb.ListAuditRequest]) (*connect.Response[pb.ListAuditResponse], error) {
	m := req.Msg
	size := int(m.GetLimit())
	switch {
	case size < 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("limit %d: give 0 (the default, %d) up to %d", size, MaxAuditPage, MaxAuditPage))
	case size == 0 || size > MaxAuditPage:
		size = MaxAuditPage
	}
	q, err := a.query(m.GetSince(), m.GetKind(), m.GetFqn(), m.GetRefused())
	if err != nil {
		return nil, err
	}
	cur, ok, err := decodeAuditToken("page_token", m.GetPageToken())
	if err != nil {
		return nil, err
	}
	rd, err := a.reader(ctx)
	if err != nil {
		return nil, internal(a.log, "list audit", err)
	}
	if !ok {
		if cur, err = a.st.AuditTop(ctx); err != nil {
			return nil, internal(a.log, "list audit", err)
		}
	}
	if q.AnyOf, err = rd.scope(ctx); err != nil {
		return nil, internal(a.log, "list audit", err)
	}
	q.Limit = max(size, auditBatch)
	out := &pb.ListAuditResponse{}
	more := true
	for scanned := 0; more && len(out.Records) < size && scanned < auditScanPages*q.Limit; {
		q.Before = &cur
		recs, err := a.st.Audit(ctx, q)
		if err != nil {
			return nil, internal(a.log, "list audit", err)
		}
		scanned += len(recs)
		more = len(recs) == q.Limit
		for i := len(recs) - 1; i >= 0; i-- { // newest first
			r := recs[i]
			cur = cur.Past(r)
			if ok, err := rd.canRead(ctx, r); err != nil {
				return nil, internal(a.log, "list audit", err)
			} else if ok {
				out.Records = append(out.Records, auditRecord(r))
			}
			if len(out.Records) == size {
				more = more || i > 0
				break
			}
		}
	}
	if more {
		out.NextPageToken = encodeAuditToken(cur)
	}
	return connect.NewResponse(out), nil
}

// ExportAudit implements AuditService.ExportAudit: every readable record
// that matches, oldest first, up to the newest when the export began.
func (a *Audit) ExportAudit(ctx context.Context, req *connect.Request[pb.ExportAuditRequest], stream *connect.ServerStream[pb.ExportAuditResponse]) error {
	m := req.Msg
	q, err := a.query(m.GetSince(), m.GetKind(), m.GetFqn(), m.GetRefused())
	if err != nil {
		return err
	}
	cur, _, err := decodeAuditToken("after_token", m.GetAfterToken())
	if err != nil {
		return err
	}
	rd, err := a.reader(ctx)
	if err != nil {
		return internal(a.log, "export audit", err)
	}
	top, err := a.st.AuditTop(ctx)
	if err != nil {
		return internal(a.log, "export audit", err)
	}
	if q.AnyOf, err = rd.scope(ctx); err != nil {
		return internal(a.log, "export audit", err)
	}
	q.Limit = exportBatch
	q.Before = &top
	// States: read the batch after the cursor, send what the caller may
	// read, and end after a short batch (nothing is left below the top).
	for {
		q.After = &cur
		recs, err := a.st.Audit(ctx, q)
		if err != nil {
			return internal(a.log, "export audit", err)
		}
		msg := &pb.ExportAuditResponse{}
		for _, r := range recs {
			cur = cur.Past(r)
			if ok, err := rd.canRead(ctx, r); err != nil {
				return internal(a.log, "export audit", err)
			} else if ok {
				msg.Records = append(msg.Records, auditRecord(r))
			}
		}
		if len(msg.Records) > 0 {
			msg.ResumeToken = encodeAuditToken(cur)
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		if len(recs) < q.Limit {
			return nil
		}
	}
}

// query checks a request's filters.
func (a *Audit) query(since *timestamppb.Timestamp, kind, fqn string, refused bool) (store.AuditQuery, error) {
	q := store.AuditQuery{FQN: fqn, Refused: refused}
	if since != nil {
		q.Since = since.AsTime()
	}
	switch k := ServerWideAuditKind(kind); {
	case k != "":
		q.Kind = k
	case kind != "":
		k, ok := a.reg.Lookup(kind)
		if !ok {
			return q, connect.NewError(connect.CodeInvalidArgument, a.reg.UnknownKind(kind))
		}
		q.Kind = k.Name
	}
	return q, nil
}

func (a *Audit) reader(ctx context.Context) (*auditReader, error) {
	chk, err := access.ReadChecker(ctx, a.auth.Policies, a.st)
	if err != nil {
		return nil, err
	}
	return &auditReader{chk: chk, st: a.st, targets: map[string][]string{}}, nil
}

func auditRecord(r store.AuditRecord) *pb.AuditRecord {
	actor, method := store.SplitActor(r.Actor)
	ar := &pb.AuditRecord{Revision: r.Revision, Refusal: r.Refusal, Time: timestamppb.New(r.Time), Actor: actor, Method: method, Operation: r.Operation, Kind: r.Kind, Fqn: r.FQN, Refused: r.Refused, Reason: r.Reason}
	for _, c := range r.Changes {
		ar.Changes = append(ar.Changes, &pb.FieldChange{Path: c.Path, Old: jsonValue(c.Old), New: jsonValue(c.New)})
	}
	return ar
}

// auditReader decides, for one caller and one policy snapshot, which audit
// records it may read:
//   - a record about an object, whoever may read that object, judged by
//     the bindings above it (a deleted object's creator is gone);
//   - a change to an access binding, whoever may read bindings on its
//     target (both targets, when the change moved it), as CanRead judges
//     the binding itself;
//   - a refused request about no object, the bootstrap administrator and
//     the caller who made it;
//   - a request about server-wide state the store does not hold (the
//     signing keys, the bootstrap credential), done or refused, the server
//     administrators too (serverAdmin).
type auditReader struct {
	chk     *authz.Checker
	st      store.Store
	targets map[string][]string // "<fqn>@<revision>" -> targets, for this request
	admin   *bool               // serverAdmin, once asked
}

// serverWide reports whether r is about server-wide state.
func serverWide(r store.AuditRecord) bool {
	return r.FQN == "" && (r.Kind == auditKindSigningKey || r.Kind == auditKindBootstrap)
}

func (rd *auditReader) serverAdmin(ctx context.Context) (bool, error) {
	if rd.admin == nil {
		why, err := serverAdmin(ctx, rd.chk, rd.st)
		if err != nil {
			return false, err
		}
		ok := why == ""
		rd.admin = &ok
	}
	return *rd.admin, nil
}

func (rd *auditReader) canRead(ctx context.Context, r store.AuditRecord) (bool, error) {
	p := rd.chk.Principal()
	switch {
	case r.FQN == "":
		if p.Bootstrap() || r.Actor == store.Actor(p.Subject, p.Method) {
			return true, nil
		}
		if serverWide(r) {
			return rd.serverAdmin(ctx)
		}
		return false, nil
	case r.Kind == authz.KindAccessBinding:
		targets, err := rd.bindingTargets(ctx, r)
		if err != nil {
			return false, err
		}
		if len(targets) == 0 {
			return p.Bootstrap(), nil
		}
		for _, t := range targets {
			if ok, _ := rd.chk.Can(authz.Read, authz.KindAccessBinding, t); ok {
				return true, nil
			}
		}
		return false, nil
	}
	kind := r.Kind
	if kind == "" {
		kind = authz.AnyKind
	}
	ok, _ := rd.chk.Can(authz.Read, kind, r.FQN)
	return ok, nil
}

// bindingTargets finds the target(s) of the access binding a record is
// about: from its changes when they name spec.target (a create, a delete,
// a move), or else from the binding's history: the newest earlier record
// that set it. A refused request about a binding is judged by the
// binding's target as stored now, or, when there is none, by the binding's
// own name (its organization).
func (rd *auditReader) bindingTargets(ctx context.Context, r store.AuditRecord) ([]string, error) {
	if r.Refused {
		rec, err := rd.st.Get(ctx, r.FQN)
		if err == nil && rec.Kind == authz.KindAccessBinding {
			return []string{authz.BindingTarget(rec)}, nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		return []string{r.FQN}, nil
	}
	if ts := changedTargets(r.Changes); len(ts) > 0 {
		return ts, nil
	}
	key := r.FQN + "@" + strconv.FormatInt(r.Revision, 10)
	if ts, ok := rd.targets[key]; ok {
		return ts, nil
	}
	q := store.AuditQuery{FQN: r.FQN, Kind: authz.KindAccessBinding, Limit: auditBatch, Before: &store.AuditCursor{Revision: r.Revision}}
	var found []string
look:
	for range bindingHistoryPages {
		recs, err := rd.st.Audit(ctx, q)
		if err != nil {
			return nil, err
		}
		for i := len(recs) - 1; i >= 0; i-- {
			q.Before = &store.AuditCursor{Revision: recs[i].Revision}
			if t := setTarget(recs[i].Changes); t != "" && recs[i].FQN == r.FQN {
				found = []string{t}
				break look
			}
		}
		if len(recs) < q.Limit {
			break
		}
	}
	rd.targets[key] = found
	return found, nil
}

// changedTargets lists the old and new values of spec.target in changes.
func changedTargets(changes []store.Change) []string {
	var out []string
	for _, c := range changes {
		if c.Path != "spec.target" {
			continue
		}
		for _, raw := range []json.RawMessage{c.Old, c.New} {
			var s string
			if json.Unmarshal(raw, &s) == nil && s != "" && !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// setTarget is the target a change left a binding with ("" when it did
// not set one).
func setTarget(changes []store.Change) string {
	for _, c := range changes {
		var s string
		if c.Path == "spec.target" && json.Unmarshal(c.New, &s) == nil {
			return s
		}
	}
	return ""
}

// scope narrows a scan to the records the caller could be shown: those
// about the nodes (and what lies below) on which it holds a grant that
// reads something, the access bindings of those nodes' organizations
// (judged by target afterwards), and its own refusals about no object.
// It is nil, no narrowing, for the bootstrap administrator and for a
// caller with grants on very many nodes.
func (rd *auditReader) scope(ctx context.Context) ([]store.AuditMatch, error) {
	p := rd.chk.Principal()
	if p.Bootstrap() {
		return nil, nil
	}
	subjects := []string{p.Subject}
	for _, t := range rd.chk.Teams() {
		subjects = append(subjects, authz.TeamSubject(t))
	}
	var nodes []string
	for _, s := range subjects {
		for _, g := range rd.chk.Policy().GrantsTo(s) {
			if g.Known && readsSomething(g.Role) {
				nodes = append(nodes, g.Target)
			}
		}
	}
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	var roots, orgs []string
	for _, n := range nodes { // sorted: an ancestor comes before its descendants
		if len(roots) > 0 && (n == roots[len(roots)-1] || strings.HasPrefix(n, roots[len(roots)-1]+"/")) {
			continue
		}
		roots = append(roots, n)
		if o := authz.OrgOf(n); o != "" && !slices.Contains(orgs, o) {
			orgs = append(orgs, o)
		}
	}
	if len(roots)+len(orgs) > maxScopeTerms {
		return nil, nil
	}
	out := []store.AuditMatch{{Actor: store.Actor(p.Subject, p.Method), NoFQN: true}}
	if admin, err := rd.serverAdmin(ctx); err != nil {
		return nil, err
	} else if admin {
		out = append(out, store.AuditMatch{Kind: auditKindSigningKey, NoFQN: true}, store.AuditMatch{Kind: auditKindBootstrap, NoFQN: true})
	}
	for _, n := range roots {
		out = append(out, store.AuditMatch{Under: n})
	}
	for _, o := range orgs {
		out = append(out, store.AuditMatch{Under: o, Kind: authz.KindAccessBinding})
	}
	return out, nil
}

func readsSomething(r authz.Role) bool {
	for _, rule := range r.Rules {
		if slices.Contains(rule.Permissions, authz.Read) {
			return true
		}
	}
	return false
}

// Audit cursors travel as opaque tokens: "a1.<revision>.<refusal>",
// base64url.
const auditTokenPrefix = "a1."

func encodeAuditToken(c store.AuditCursor) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%s%d.%d", auditTokenPrefix, c.Revision, c.Refusal))
}

// decodeAuditToken reads the token of field; ok is false for an empty one.
func decodeAuditToken(field, tok string) (c store.AuditCursor, ok bool, err error) {
	if tok == "" {
		return c, false, nil
	}
	damaged := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is damaged: pass the token the server returned unchanged, or none to start over", field))
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return c, false, damaged
	}
	rest, found := strings.CutPrefix(string(b), auditTokenPrefix)
	rev, ref, found2 := strings.Cut(rest, ".")
	if !found || !found2 {
		return c, false, damaged
	}
	if c.Revision, err = strconv.ParseInt(rev, 10, 64); err != nil || c.Revision < 0 {
		return c, false, damaged
	}
	if c.Refusal, err = strconv.ParseInt(ref, 10, 64); err != nil || c.Refusal < 0 {
		return c, false, damaged
	}
	return c, true, nil
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
