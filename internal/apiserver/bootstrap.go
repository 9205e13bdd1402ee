package apiserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// DefaultBootstrapTTL is how long a bootstrap credential is good for after
// it is made: long enough to log in, bind administrators of one's own and
// disable it.
const DefaultBootstrapTTL = 24 * time.Hour

// bootstrapDisabledKind marks, in the credentials table, a store whose
// bootstrap credential was disabled, so that no start makes a new one
// unless asked to (--reset-bootstrap-credential).
const bootstrapDisabledKind = "bootstrap-disabled"

// Bootstrap describes the bootstrap credential after a server start.
type Bootstrap struct {
	// Written is set when this start made a credential and wrote it to
	// the file (never anywhere else: logs are read by more people).
	Written bool
	// Expires is when a credential made by this start stops working.
	Expires time.Time
	// Disabled is set when an administrator disabled the credential.
	Disabled bool
}

// BootstrapCopy is a place besides the data directory that holds the
// bootstrap credential: a Kubernetes Secret that its administrator reads
// with kubectl. Put is called inside the store transaction that makes the
// credential, so a failed Put leaves no credential that nobody holds.
type BootstrapCopy interface {
	// Put stores credential (the file's bytes), replacing what it held.
	Put(ctx context.Context, credential []byte) error
	// Clear removes the credential (it was disabled).
	Clear(ctx context.Context) error
	// String names the place, for messages.
	String() string
}

// EnsureBootstrap creates the bootstrap administrator credential once per
// store: when the store has none, it makes one good for ttl, writes it to
// path (mode 0600, atomically) and to a.BootstrapCopy, and says so. A
// store whose credential was disabled gets none.
func (a *Auth) EnsureBootstrap(ctx context.Context, st store.Store, path string, ttl time.Duration) (Bootstrap, error) {
	var out Bootstrap
	err := st.Update(ctx, "server:bootstrap", func(tx store.Tx) error {
		out = Bootstrap{}
		if n, err := tx.CountCredentials(ctx, bootstrapCluster, bootstrapDisabledKind); err != nil || n > 0 {
			out.Disabled = n > 0
			return err
		}
		if n, err := tx.CountCredentials(ctx, bootstrapCluster, bootstrapKind); err != nil || n > 0 {
			return err
		}
		s, hash := authn.NewSecret("fla_")
		now := time.Now()
		if err := tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: bootstrapCluster, Kind: bootstrapKind, Expires: now.Add(ttl), CreateTime: now}); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		// Written before the commit: a failed commit leaves a file of no
		// use, which the next start replaces; never a credential that
		// nobody holds.
		if err := authn.WriteFileAtomic(path, []byte(s+"\n")); err != nil {
			return fmt.Errorf("write the bootstrap credential: %w", err)
		}
		if c := a.BootstrapCopy; c != nil {
			if err := c.Put(ctx, []byte(s+"\n")); err != nil {
				return fmt.Errorf("write the bootstrap credential to %s: %w", c, err)
			}
		}
		out = Bootstrap{Written: true, Expires: now.Add(ttl)}
		return nil
	})
	return out, err
}

// ResetBootstrap replaces the bootstrap credential, enabling it again when
// it was disabled: the old one and its sessions stop working, and the new
// one, good for ttl, is written to path.
func (a *Auth) ResetBootstrap(ctx context.Context, st store.Store, path string, ttl time.Duration) (Bootstrap, error) {
	if err := st.Update(ctx, "server:bootstrap", func(tx store.Tx) error {
		if err := tx.DeleteCredentials(ctx, bootstrapCluster, bootstrapDisabledKind); err != nil {
			return err
		}
		return tx.DeleteCredentials(ctx, bootstrapCluster, bootstrapKind)
	}); err != nil {
		return Bootstrap{}, err
	}
	return a.EnsureBootstrap(ctx, st, path, ttl)
}

// bootstrapTTL is a.BootstrapTTL or its default.
func (a *Auth) bootstrapTTL() time.Duration {
	if a.BootstrapTTL > 0 {
		return a.BootstrapTTL
	}
	return DefaultBootstrapTTL
}

// bootstrapEnd is when a bootstrap credential stops working: its expiry,
// and at the latest the server's bootstrap TTL after it was made (which
// ends the century-long credentials of servers before 24 h was the rule).
func (a *Auth) bootstrapEnd(c store.Credential) time.Time {
	end := c.Expires
	if !c.CreateTime.IsZero() {
		if limit := c.CreateTime.Add(a.bootstrapTTL()); limit.Before(end) {
			end = limit
		}
	}
	return end
}

// bootstrapCredential finds the bootstrap credential whose hash is given,
// and says in words why it does not serve when it does not.
func (a *Auth) bootstrapCredential(ctx context.Context, st store.Store, hash string) (bool, string, error) {
	cred, err := st.Credential(ctx, hash)
	if errors.Is(err, store.ErrNotFound) || err == nil && cred.Kind != bootstrapKind {
		return false, "the bootstrap credential is wrong, was replaced (--reset-bootstrap-credential) or was disabled", nil
	} else if err != nil {
		return false, "", err
	}
	if end := a.bootstrapEnd(cred); !time.Now().Before(end) {
		return false, fmt.Sprintf("the bootstrap credential expired at %s: log in another way, or restart the server with --reset-bootstrap-credential for a new one", end.UTC().Format(time.RFC3339)), nil
	}
	return true, "", nil
}

// checkSession refuses a token of the bootstrap administrator whose
// credential no longer serves (disabled, replaced or expired), so that
// ending the credential ends its sessions at once, not when their tokens
// expire. Every bootstrap token the server mints names its credential.
func (a *Auth) checkSession(ctx context.Context, p authn.Principal) error {
	if p.Method != authn.MethodBootstrap || p.Session == "" || a.st == nil {
		return nil
	}
	ok, why, err := a.bootstrapCredential(ctx, a.st, p.Session)
	switch {
	case err != nil:
		// While the store is down, a session this server found good a
		// moment ago goes on (the administrator reads /metrics and
		// status through an outage); one not checked lately does not.
		if a.goodLately(p.Session) {
			return nil
		}
		return connect.NewError(connect.CodeUnavailable, errors.New("the store is unavailable, so nothing was written (nor this bootstrap session checked): retry when it is back"))
	case ok:
		a.sessionsMu.Lock()
		if a.sessions == nil {
			a.sessions = map[string]time.Time{}
		}
		a.sessions[p.Session] = time.Now()
		a.sessionsMu.Unlock()
		return nil
	default:
		a.sessionsMu.Lock()
		delete(a.sessions, p.Session)
		a.sessionsMu.Unlock()
		return connect.NewError(connect.CodeUnauthenticated, errors.New(strings.Replace(why, "the bootstrap credential", "this token's bootstrap credential", 1)))
	}
}

// sessionGrace is how long after its last good check a bootstrap session
// goes on while the store cannot be read. A disable made on another
// replica in that time is seen when the store answers again.
const sessionGrace = 5 * time.Minute

func (a *Auth) goodLately(session string) bool {
	a.sessionsMu.Lock()
	defer a.sessionsMu.Unlock()
	t, ok := a.sessions[session]
	return ok && time.Since(t) < sessionGrace
}

// serverAdministrators lists the people and service accounts, other than
// the bootstrap administrator, that hold SetPolicy on every organization
// (there being one at least).
func serverAdministrators(ctx context.Context, pol *authz.Policy, st store.Store) ([]string, error) {
	orgs, err := st.List(ctx, store.Query{Kind: resource.KindOrganization})
	if err != nil || len(orgs) == 0 {
		return nil, err
	}
	var out []string
	for _, who := range pol.People() {
		method := authn.MethodOIDC
		if strings.HasPrefix(who, authn.ServiceAccountPrefix) {
			method = authn.MethodServiceAccount
		}
		chk := pol.For(authn.Principal{Subject: who, Method: method})
		all := true
		for _, o := range orgs {
			if ok, _ := chk.Can(authz.SetPolicy, authz.KindAccessBinding, o.FQN); !ok {
				all = false
				break
			}
		}
		if all {
			out = append(out, who)
		}
	}
	return out, nil
}

// DisableBootstrapCredential implements IdentityService.DisableBootstrapCredential.
func (s *Identity) DisableBootstrapCredential(ctx context.Context, _ *connect.Request[pb.DisableBootstrapCredentialRequest]) (*connect.Response[pb.DisableBootstrapCredentialResponse], error) {
	chk, err := access.ReadChecker(ctx, s.auth.Policies, s.st)
	if err != nil {
		return nil, internal(s.log, "disable the bootstrap credential", err)
	}
	why, err := serverAdmin(ctx, chk, s.st)
	if err != nil {
		return nil, internal(s.log, "disable the bootstrap credential", err)
	}
	if why != "" {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: the bootstrap credential administers every organization, so disabling it needs SetPolicy on all of them; %s", why))
	}
	admins, err := serverAdministrators(ctx, chk.Policy(), s.st)
	if err != nil {
		return nil, internal(s.log, "disable the bootstrap credential", err)
	}
	if len(admins) == 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("nobody but the bootstrap administrator administers every organization: bind the admin role on each organization to a person, team member or service account first (so that someone can still change access), then disable it"))
	}
	err = s.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		if err := tx.DeleteCredentials(ctx, bootstrapCluster, bootstrapKind); err != nil {
			return err
		}
		if n, err := tx.CountCredentials(ctx, bootstrapCluster, bootstrapDisabledKind); err != nil || n > 0 {
			return err
		}
		now := time.Now()
		return tx.PutCredential(ctx, store.Credential{Hash: "bootstrap-disabled", Cluster: bootstrapCluster, Kind: bootstrapDisabledKind, Expires: now.AddDate(1000, 0, 0), CreateTime: now})
	})
	if err != nil {
		return nil, internal(s.log, "disable the bootstrap credential", err)
	}
	if f := s.auth.BootstrapFile; f != "" {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove the disabled bootstrap credential's file", "file", f, "err", err)
		}
	}
	if c := s.auth.BootstrapCopy; c != nil {
		if err := c.Clear(ctx); err != nil {
			s.log.Warn("clear the disabled bootstrap credential's copy", "where", c.String(), "err", err)
		}
	}
	if err := s.recordOperation(ctx, "DisableBootstrapCredential", auditKindBootstrap, "the bootstrap credential and its sessions ended; administrators of every organization: "+strings.Join(admins, ", ")); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.DisableBootstrapCredentialResponse{Administrators: admins}), nil
}
