package apiserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Identity implements the IdentityService.
type Identity struct {
	auth *Auth
	reg  *resource.Registry
	st   store.Store
	log  *slog.Logger
}

var _ flotillav1alpha1connect.IdentityServiceHandler = (*Identity)(nil)

// GetLoginConfig implements IdentityService.GetLoginConfig.
func (s *Identity) GetLoginConfig(context.Context, *connect.Request[pb.GetLoginConfigRequest]) (*connect.Response[pb.GetLoginConfigResponse], error) {
	out := &pb.GetLoginConfigResponse{}
	if s.auth.Issuer != nil {
		out.Issuer = s.auth.Issuer.Name
	}
	if o := s.auth.OIDC; o != nil {
		out.OidcIssuer, out.OidcClientId = o.Issuer, o.ClientID
	}
	return connect.NewResponse(out), nil
}

func unauthenticated(format string, args ...any) error {
	return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf(format, args...))
}

// Token implements IdentityService.Token.
func (s *Identity) Token(ctx context.Context, req *connect.Request[pb.TokenRequest]) (*connect.Response[pb.TokenResponse], error) {
	var (
		p   authn.Principal
		ttl = s.auth.UserTTL
	)
	switch g := req.Msg.GetGrant().(type) {
	case *pb.TokenRequest_BootstrapCredential:
		hash := authn.HashSecret(strings.TrimSpace(g.BootstrapCredential))
		ok, why, err := s.auth.bootstrapCredential(ctx, s.st, hash)
		if err != nil {
			return nil, internal(s.log, "token", err)
		} else if !ok {
			return nil, unauthenticated("%s: use the one the server wrote to %s in its data directory", why, BootstrapAdminFile)
		}
		// The token names its credential, so that its session ends with it.
		p = authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap, Session: hash}
	case *pb.TokenRequest_ServiceAccountAssertion:
		account, keyID, err := authn.AssertionAccount(g.ServiceAccountAssertion)
		if err != nil {
			return nil, connect.NewError(connect.CodeUnauthenticated, err)
		}
		pub, err := s.accountKey(ctx, account, keyID)
		if err != nil {
			return nil, err
		}
		if err := authn.VerifyAssertion(g.ServiceAccountAssertion, pub, time.Now(), s.auth.Issuer.Name); err != nil {
			return nil, connect.NewError(connect.CodeUnauthenticated, err)
		}
		p, ttl = authn.Principal{Subject: authn.ServiceAccountPrefix + account, Method: authn.MethodServiceAccount}, s.auth.MachineTTL
	case *pb.TokenRequest_OidcIdToken:
		var err error
		if p, err = s.auth.OIDC.Verify(ctx, g.OidcIdToken); err != nil {
			return nil, connect.NewError(connect.CodeUnauthenticated, err)
		}
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("give a credential: bootstrap_credential, service_account_assertion or oidc_id_token"))
	}
	token, exp, err := s.auth.Issuer.Mint(p, ttl)
	if err != nil {
		return nil, internal(s.log, "token", err)
	}
	return connect.NewResponse(&pb.TokenResponse{AccessToken: token, ExpireTime: timestamppb.New(exp), Subject: p.Subject}), nil
}

// accountKey finds a service account's public key by id. A missing
// account or key gets the same answer as a bad signature (ErrAssertion);
// the log says which it was.
func (s *Identity) accountKey(ctx context.Context, account, keyID string) (ed25519.PublicKey, error) {
	rec, err := s.st.Get(ctx, account)
	if errors.Is(err, store.ErrNotFound) || err == nil && rec.Kind != authz.KindServiceAccount {
		s.log.Info("service-account assertion refused: no such service account", "account", account)
		return nil, connect.NewError(connect.CodeUnauthenticated, authn.ErrAssertion)
	} else if err != nil {
		return nil, internal(s.log, "token", err)
	}
	var spec pb.ServiceAccountSpec
	if err := protojson.Unmarshal(rec.Spec, &spec); err != nil {
		return nil, internal(s.log, "token", err)
	}
	for _, k := range spec.GetKeys() {
		if k.GetId() == keyID {
			pub, err := authn.ParsePublicKey(k.GetPublicKey())
			if err != nil {
				return nil, internal(s.log, "token", err)
			}
			return pub, nil
		}
	}
	s.log.Info("service-account assertion refused: the account has no such key (removed?)", "account", account, "key", keyID)
	return nil, connect.NewError(connect.CodeUnauthenticated, authn.ErrAssertion)
}

// WhoAmI implements IdentityService.WhoAmI.
func (s *Identity) WhoAmI(ctx context.Context, _ *connect.Request[pb.WhoAmIRequest]) (*connect.Response[pb.WhoAmIResponse], error) {
	chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
	if err != nil {
		return nil, internal(s.log, "whoami", err)
	}
	p := chk.Principal()
	out := &pb.WhoAmIResponse{Subject: p.Subject, Method: p.Method, Teams: chk.Teams(), Groups: p.Groups}
	if !p.Expires.IsZero() {
		out.ExpireTime = timestamppb.New(p.Expires)
	}
	return connect.NewResponse(out), nil
}

// CanI implements IdentityService.CanI.
func (s *Identity) CanI(ctx context.Context, req *connect.Request[pb.CanIRequest]) (*connect.Response[pb.CanIResponse], error) {
	perm, err := authz.ParsePermission(req.Msg.GetPermission())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	k, ok := s.reg.Lookup(req.Msg.GetKind())
	if !ok {
		return nil, connect.NewError(connect.CodeInvalidArgument, s.reg.UnknownKind(req.Msg.GetKind()))
	}
	chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
	if err != nil {
		return nil, internal(s.log, "can-i", err)
	}
	allowed, reason := access.Can(chk, perm, k.Name, req.Msg.GetFqn())
	return connect.NewResponse(&pb.CanIResponse{Allowed: allowed, Reason: reason}), nil
}

// keyAdmin allows signing-key changes to the bootstrap administrator and
// to whoever holds SetPolicy on every organization: the keys serve them all.
func (s *Identity) keyAdmin(ctx context.Context) error {
	chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
	if err != nil {
		return internal(s.log, "signing keys", err)
	}
	why, err := serverAdmin(ctx, chk, s.st)
	if err != nil {
		return internal(s.log, "signing keys", err)
	}
	if why != "" {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: the signing keys serve every organization, so changing them needs SetPolicy on all of them; %s", why))
	}
	return nil
}

// serverAdmin says why chk's principal is not an administrator of the
// whole server (the bootstrap administrator, or a holder of SetPolicy on
// every organization, of which there is one at least), or "" when it is.
func serverAdmin(ctx context.Context, chk *authz.Checker, st store.Store) (string, error) {
	if chk.Principal().Bootstrap() {
		return "", nil
	}
	orgs, err := st.List(ctx, store.Query{Kind: resource.KindOrganization})
	if err != nil {
		return "", err
	}
	if len(orgs) == 0 {
		return "before an organization exists only the bootstrap administrator administers the server", nil
	}
	for _, o := range orgs {
		if ok, _ := chk.Can(authz.SetPolicy, authz.KindAccessBinding, o.FQN); !ok {
			return fmt.Sprintf("%s lacks SetPolicy on %s", chk.Principal().Subject, o.FQN), nil
		}
	}
	return "", nil
}

// Kinds of the audit records of operations on server-wide state that the
// store does not hold. Their records name no object; server
// administrators read them (see auditReader).
const (
	auditKindSigningKey = "SigningKey"
	auditKindBootstrap  = "BootstrapCredential"
)

// ServerWideAuditKind returns the audit kind of server-wide state that
// name spells (in any case), or "" when it names none: no resource kind
// names these, so the audit's kind filter takes them besides the registry's.
func ServerWideAuditKind(name string) string {
	for _, k := range []string{auditKindSigningKey, auditKindBootstrap} {
		if strings.EqualFold(name, k) {
			return k
		}
	}
	return ""
}

// recordOperation audits an operation already carried out. When the record
// cannot be written, the caller is told so (the operation stands: the
// server log keeps it), rather than shown a success the audit lacks.
func (s *Identity) recordOperation(ctx context.Context, op, kind, what string) error {
	s.log.Info(what, "operation", op, "by", access.Actor(ctx))
	err := s.st.RecordOperation(ctx, store.AuditRecord{Actor: access.Actor(ctx), Operation: op, Kind: kind, Reason: what})
	if err != nil {
		s.log.Error("audit an operation", "operation", op, "what", what, "err", err)
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s, but the audit could not record it now (the server log has it): check the store", what))
	}
	return nil
}

func signingKeyPB(k authn.Key, signing bool) *pb.SigningKey {
	return &pb.SigningKey{Id: k.ID, CreateTime: timestamppb.New(k.Created), Signing: signing}
}

// ListSigningKeys implements IdentityService.ListSigningKeys.
func (s *Identity) ListSigningKeys(ctx context.Context, _ *connect.Request[pb.ListSigningKeysRequest]) (*connect.Response[pb.ListSigningKeysResponse], error) {
	out := &pb.ListSigningKeysResponse{}
	for i, k := range s.auth.Issuer.Keys.Keys() {
		out.Keys = append(out.Keys, signingKeyPB(k, i == 0))
	}
	return connect.NewResponse(out), nil
}

// RotateSigningKey implements IdentityService.RotateSigningKey.
func (s *Identity) RotateSigningKey(ctx context.Context, _ *connect.Request[pb.RotateSigningKeyRequest]) (*connect.Response[pb.RotateSigningKeyResponse], error) {
	if err := s.keyAdmin(ctx); err != nil {
		return nil, err
	}
	k, err := s.auth.Issuer.Keys.Rotate()
	if errors.Is(err, authn.ErrReadOnly) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	if err != nil {
		return nil, internal(s.log, "rotate the signing key", err)
	}
	if err := s.recordOperation(ctx, "RotateSigningKey", auditKindSigningKey, "signing key "+k.ID+" signs new tokens; the older keys keep verifying"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RotateSigningKeyResponse{Key: signingKeyPB(k, true)}), nil
}

// RemoveSigningKey implements IdentityService.RemoveSigningKey.
func (s *Identity) RemoveSigningKey(ctx context.Context, req *connect.Request[pb.RemoveSigningKeyRequest]) (*connect.Response[pb.RemoveSigningKeyResponse], error) {
	if err := s.keyAdmin(ctx); err != nil {
		return nil, err
	}
	if err := s.auth.Issuer.Keys.Remove(req.Msg.GetId()); err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	if err := s.recordOperation(ctx, "RemoveSigningKey", auditKindSigningKey, "signing key "+req.Msg.GetId()+" removed: tokens it signed are refused"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RemoveSigningKeyResponse{}), nil
}
