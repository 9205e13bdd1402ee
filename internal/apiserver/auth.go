package apiserver

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Token lifetimes.
const (
	DefaultUserTokenTTL    = time.Hour
	DefaultMachineTokenTTL = 15 * time.Minute
)

// Files of the data directory.
const (
	SigningKeyFile     = "signing-keys.json"
	BootstrapAdminFile = "bootstrap-admin"
)

// bootstrapCluster keys the bootstrap credential in the credentials table.
const bootstrapCluster, bootstrapKind = "flotilla:bootstrap", "bootstrap"

// Auth is the server's authentication and authorization.
type Auth struct {
	Issuer *authn.Issuer
	// OIDC verifies people's ID tokens; nil when OIDC login is off.
	OIDC *authn.OIDC
	// Policies caches the access policy.
	Policies *authz.Cache
	// Insecure serves every caller as the bootstrap administrator. Only
	// for throwaway demos.
	Insecure bool
	// UserTTL and MachineTTL bound the life of people's and service
	// accounts' access tokens.
	UserTTL, MachineTTL time.Duration
	// BootstrapTTL bounds the life of the bootstrap credential from when it
	// was made (DefaultBootstrapTTL when zero).
	BootstrapTTL time.Duration
	// BootstrapFile is this server's copy of the bootstrap credential,
	// removed when the credential is disabled; may be empty.
	BootstrapFile string
	// BootstrapCopy, when set, is a second copy of the bootstrap
	// credential, written with the file and cleared when the credential is
	// disabled: for a server whose data directory its administrator cannot
	// read (a pod without a shell).
	BootstrapCopy BootstrapCopy

	st store.Store // checks bootstrap sessions; set by New

	sessionsMu sync.Mutex
	sessions   map[string]time.Time // bootstrap session → its last good check
}

// NewAuth returns authentication with the signing keys in keyFile (created
// with a first key when missing) and tokens issued as issuer.
func NewAuth(keyFile, issuer string) (*Auth, error) {
	ks, err := authn.OpenKeySet(keyFile)
	if err != nil {
		return nil, err
	}
	return &Auth{
		Issuer:   &authn.Issuer{Name: issuer, Keys: ks},
		Policies: authz.NewCache(),
		UserTTL:  DefaultUserTokenTTL, MachineTTL: DefaultMachineTokenTTL,
	}, nil
}

// authenticate resolves the caller from the Authorization header.
func (a *Auth) authenticate(ctx context.Context, h http.Header) (context.Context, error) {
	if a.Insecure {
		return authn.WithPrincipal(ctx, authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodInsecure}), nil
	}
	if a.Issuer == nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errors.New("this server has no authentication configured, so it serves nobody"))
	}
	v := h.Get("Authorization")
	if v == "" {
		return ctx, connect.NewError(connect.CodeUnauthenticated, authn.ErrNoToken)
	}
	token, ok := strings.CutPrefix(v, "Bearer ")
	if !ok {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errors.New(`the Authorization header must read "Bearer <token>"`))
	}
	p, err := a.Issuer.Verify(strings.TrimSpace(token))
	if err != nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, err)
	}
	if err := a.checkSession(ctx, p); err != nil {
		return ctx, err
	}
	return authn.WithPrincipal(ctx, p), nil
}

// requireFleetReader guards a plain HTTP handler (metrics) that shows every
// organization's state: it takes an access token of the bootstrap
// administrator or of a principal that may read every organization.
func (a *Auth) requireFleetReader(st store.Store, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, err := a.authenticate(r.Context(), r.Header)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="flotilla"`)
			http.Error(w, connect.CodeOf(err).String()+": "+err.(*connect.Error).Message(), http.StatusUnauthorized)
			return
		}
		if why := a.readsEveryOrganization(ctx, st); why != "" {
			http.Error(w, "permission_denied: "+why, http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// readsEveryOrganization says why the caller of ctx may not read every
// organization, or "" when it may.
func (a *Auth) readsEveryOrganization(ctx context.Context, st store.Store) string {
	// The bootstrap administrator reads them without the store, so that
	// the metrics of a store outage can be read during it.
	if p, ok := authn.FromContext(ctx); ok && p.Bootstrap() {
		return ""
	}
	chk, err := access.ReadChecker(ctx, a.Policies, st)
	if err != nil {
		return "the access policy cannot be read now: retry"
	}
	if chk.Principal().Bootstrap() {
		return ""
	}
	orgs, err := st.List(ctx, store.Query{Kind: resource.KindOrganization})
	if err != nil {
		return "the organizations cannot be read now: retry"
	}
	for _, o := range orgs {
		if ok, _ := chk.Can(authz.Read, resource.KindOrganization, o.FQN); !ok {
			return "the metrics carry every organization's state, so they need Read on every organization; " + chk.Principal().Subject + " lacks it on " + o.FQN
		}
	}
	if len(orgs) == 0 {
		return "the metrics carry every organization's state; before an organization exists only the bootstrap administrator reads them"
	}
	return ""
}
