// Package agentauth authenticates agents against the credentials in the
// store: a join token, issued by onboarding, is traded once for a
// credential bound to the agent's key; every stream opens with a fresh
// assertion signed with that key (agentcred), taken once; the stream
// extends the credential when a third of its life is left and re-reads it
// now and then, so that a revoke through any replica ends it.
//
//	onboard (fleetapi) ──join token──▶ Join ──credential{Hash(key), cluster, expiry}──▶ store
//	Connect ──Authenticate(assertion)──▶ stream ──Renewal: Extend──▶ store
//	                                            └─RecheckEvery: StillValid (ErrRevoked ends it)
//
// It holds no state of the control plane: what it needs of the streams
// (whether an agent is connected) is asked of its caller.
package agentauth

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/apierror"
	"flotilla.io/flotilla/internal/store"
)

// SameCluster reports whether name (a name or an FQN) names the cluster fqn.
func SameCluster(name, fqn string) bool {
	return name == fqn || strings.HasSuffix(fqn, "/clusters/"+name)
}

// Defaults of Config.
const (
	// DefaultAudience names the server in agents' assertions when no
	// SetAudience says otherwise (the token issuer's default name).
	DefaultAudience = "flotilla"
	// DefaultTTL is how long an agent credential lives. The agent's stream
	// extends it once a third of it is left (Renewal).
	DefaultTTL = 30 * 24 * time.Hour
	// DefaultRecheck is how often a stream re-reads its credential: a
	// credential revoked through another replica ends the stream within
	// this (plus one store read).
	DefaultRecheck = 30 * time.Second
	// DefaultMaxLife bounds how long a key-bound credential may be extended
	// after its join: then the cluster is onboarded again.
	DefaultMaxLife = 365 * 24 * time.Hour
)

const (
	// maxSeenAssertions bounds the assertion ids remembered (each for at
	// most agentcred.MaxLife plus agentcred.Leeway).
	maxSeenAssertions = 200_000
	// maxJoinToken bounds a join token's length (they have 48 characters).
	maxJoinToken = 256
)

// Config are the options of agent authentication. A zero field takes its
// default.
type Config struct {
	Audience string        // names this server in assertions; DefaultAudience
	TTL      time.Duration // a credential's life, extended on its stream; DefaultTTL
	Recheck  time.Duration // how often a stream re-reads its credential; DefaultRecheck
	MaxLife  time.Duration // how long after its join a credential may be extended; DefaultMaxLife
}

func (c Config) ttl() time.Duration     { return cmp.Or(c.TTL, DefaultTTL) }
func (c Config) longest() time.Duration { return cmp.Or(c.MaxLife, DefaultMaxLife) }

// Authority authenticates agents against the credentials in a store. It is
// safe for concurrent use; it holds no lock of its caller's, and its own
// (the assertions already used) only while it records one.
type Authority struct {
	st  store.Store
	log *slog.Logger
	now func() time.Time
	cfg Config

	mu    sync.Mutex
	seen  map[string]time.Time // key hash + jti -> when the assertion expires
	swept time.Time
}

// New returns the authority over the credentials in st, reading time from
// now.
func New(st store.Store, log *slog.Logger, now func() time.Time, cfg Config) *Authority {
	return &Authority{st: st, log: log, now: now, cfg: cfg, seen: map[string]time.Time{}}
}

// SetAudience names this server in agents' assertions: the token issuer's
// name, which replicas share; JoinResponse tells agents. Call it before
// serving.
func (a *Authority) SetAudience(name string) { a.cfg.Audience = name }

// Audience names this server in agents' assertions.
func (a *Authority) Audience() string { return cmp.Or(a.cfg.Audience, DefaultAudience) }

// RecheckEvery is how often a stream re-reads its credential (StillValid).
func (a *Authority) RecheckEvery() time.Duration { return cmp.Or(a.cfg.Recheck, DefaultRecheck) }

// firstUse records an assertion's id and reports whether it is new; ok is
// false too when the record is full of live ids (a flood of stream opens).
func (a *Authority) firstUse(id string, expires, now time.Time) (fresh, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) >= maxSeenAssertions || now.Sub(a.swept) > time.Minute {
		for k, exp := range a.seen {
			if now.After(exp.Add(agentcred.Leeway)) {
				delete(a.seen, k)
			}
		}
		a.swept = now
	}
	if _, used := a.seen[id]; used {
		return false, true
	}
	if len(a.seen) >= maxSeenAssertions {
		return false, false
	}
	a.seen[id] = expires
	return true, true
}

var errUnknownToken = connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token: run `flotilla cluster onboard <cluster>` and use the token it prints"))

// Join is AgentService.Join: it trades a join token for a credential bound
// to the agent's public key. connected says whether a cluster's agent is
// connected (a join without force never replaces a connected agent's
// credential). replaced says the join wrote a new credential, which
// replaced the cluster's earlier ones: an agent still streaming with one
// should be cut off. The token is read and checked outside any
// transaction, so a bad one never waits for (or holds) the store's write
// lock; only a token that checks out takes it, and is checked again inside.
// Its errors are Connect errors, for the agent.
func (a *Authority) Join(ctx context.Context, req *agentv1.JoinRequest, connected func(fqn string) bool) (res *agentv1.JoinResponse, replaced bool, err error) {
	token, pub := req.GetToken(), req.GetPublicKey()
	if token == "" || len(token) > maxJoinToken {
		return nil, false, errUnknownToken
	}
	if err := agentcred.CheckPublic(pub); err != nil {
		return nil, false, connect.NewError(connect.CodeInvalidArgument, err)
	}
	keyHash := agentcred.Hash(pub)
	tokenHash := agentcred.HashToken(token)
	cred, err := a.st.Credential(ctx, tokenHash)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, apierror.Unavailable(a.log, "join: read the token", err)
	}
	again, refusal, err := a.checkJoin(ctx, a.st.Credential, cred, err, req.GetCluster(), keyHash)
	if err != nil {
		return nil, false, apierror.Unavailable(a.log, "join: read the agent credential", err)
	}
	if refusal != nil {
		return nil, false, refusal
	}
	if again {
		return a.joined(cred.Cluster, a.expiryOf(ctx, keyHash)), false, nil
	}
	if cred.Kind != agentcred.KindJoinForce && connected(cred.Cluster) {
		// A join replaces the cluster's credential: never silently take
		// over from a working agent.
		return nil, false, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has a connected agent, and joining would replace its credential: to move the cluster to a new agent, run `flotilla cluster onboard --force`", cred.Cluster))
	}
	expires := a.now().Add(a.cfg.ttl()).UTC()
	err = a.st.Update(ctx, "agent:"+cred.Cluster, func(tx store.Tx) error {
		// Again inside: another join may have used the token meanwhile.
		cred, err := tx.GetCredential(ctx, tokenHash)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if again, refusal, err = a.checkJoin(ctx, tx.GetCredential, cred, err, req.GetCluster(), keyHash); err != nil || refusal != nil || again {
			return err
		}
		cred.Used = true
		if err := tx.PutCredential(ctx, cred); err != nil {
			return err
		}
		// The new credential replaces the cluster's previous ones.
		for _, k := range []string{agentcred.KindAgentKey, agentcred.KindAgent} {
			if err := tx.DeleteCredentials(ctx, cred.Cluster, k); err != nil {
				return err
			}
		}
		return tx.PutCredential(ctx, store.Credential{Hash: keyHash, Cluster: cred.Cluster, Kind: agentcred.KindAgentKey, Expires: expires})
	})
	if err != nil {
		return nil, false, apierror.Unavailable(a.log, "join", err)
	}
	if refusal != nil {
		return nil, false, refusal
	}
	if again {
		return a.joined(cred.Cluster, a.expiryOf(ctx, keyHash)), false, nil
	}
	return a.joined(cred.Cluster, expires), true, nil
}

// checkJoin judges a join token (cred, as read with err) for the cluster
// named in the request. again says the token was used already by this
// very key, whose credential stands: the agent stopped after its join and
// before it noted it, and joins again.
func (a *Authority) checkJoin(ctx context.Context, get func(context.Context, string) (store.Credential, error), cred store.Credential, readErr error, cluster, keyHash string) (again bool, refusal, err error) {
	switch {
	case errors.Is(readErr, store.ErrNotFound) || cred.Kind != agentcred.KindJoin && cred.Kind != agentcred.KindJoinForce:
		return false, errUnknownToken, nil
	case !SameCluster(cluster, cred.Cluster):
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token is for %s, not %q", cred.Cluster, cluster)), nil
	case cred.Used:
		mine, err := get(ctx, keyHash)
		if err == nil && mine.Kind == agentcred.KindAgentKey && mine.Cluster == cred.Cluster && !a.now().After(mine.Expires) {
			return true, nil, nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, nil, err
		}
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s was already used: a token joins once; run `flotilla cluster onboard` for a new one", cred.Cluster)), nil
	case a.now().After(cred.Expires):
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s expired at %s: run `flotilla cluster onboard` for a new one", cred.Cluster, cred.Expires.Format(time.RFC3339))), nil
	}
	return false, nil, nil
}

func (a *Authority) joined(cluster string, expires time.Time) *agentv1.JoinResponse {
	return &agentv1.JoinResponse{Cluster: cluster, ExpireTime: timestamppb.New(expires), Audience: a.Audience()}
}

// expiryOf is when the credential of keyHash expires, as far as the store
// says (zero when it cannot say).
func (a *Authority) expiryOf(ctx context.Context, keyHash string) time.Time {
	cred, err := a.st.Credential(ctx, keyHash)
	if err != nil {
		return time.Time{}
	}
	return cred.Expires
}

// Renewal says when an agent credential expiring at expires is extended:
// once a third of its life is left.
func (a *Authority) Renewal(expires time.Time) time.Time { return expires.Add(-a.cfg.ttl() / 3) }

// ErrRevoked ends a stream whose credential is gone.
var ErrRevoked = connect.NewError(connect.CodeUnauthenticated, errors.New("this cluster's credential was revoked or replaced (cluster revoke, a forced onboarding, or the cluster's deletion): onboard the cluster again"))

// Extend moves the expiry of the credential keyHash of fqn to a full life
// from now, but never past its longest life since the join: a stolen key
// cannot keep it forever, and the cluster is onboarded again by then.
// final says it reached that bound.
func (a *Authority) Extend(ctx context.Context, fqn, keyHash string) (expires time.Time, final bool, err error) {
	err = a.st.Update(ctx, "agent:"+fqn, func(tx store.Tx) error {
		cred, err := tx.GetCredential(ctx, keyHash)
		if errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || cred.Cluster != fqn) {
			return ErrRevoked
		} else if err != nil {
			return err
		}
		limit := cred.CreateTime.Add(a.cfg.longest())
		expires = a.now().Add(a.cfg.ttl()).UTC()
		if !expires.Before(limit) {
			expires, final = limit.UTC(), true
		}
		if !expires.After(cred.Expires) {
			expires = cred.Expires
			return nil
		}
		cred.Expires = expires
		return tx.PutCredential(ctx, cred)
	})
	if err == nil {
		a.log.Info("agent credential extended", "cluster", fqn, "expires", expires, "final", final)
	}
	return expires, final, err
}

// Authenticate checks a stream's assertion and maps it to the cluster's
// FQN and its credential.
func (a *Authority) Authenticate(ctx context.Context, header string) (string, store.Credential, error) {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || tok == "" {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("no credential: send Authorization: Bearer <assertion signed with the agent's key>"))
	}
	now := a.now()
	as, err := agentcred.Verify(tok, a.Audience(), now)
	if err != nil {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, err)
	}
	hash := agentcred.Hash(as.Public)
	cred, err := a.st.Credential(ctx, hash)
	if errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || now.After(cred.Expires)) {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown, expired or revoked cluster credential: onboard the cluster again"))
	} else if err != nil {
		return "", store.Credential{}, apierror.Unavailable(a.log, "authenticate the agent", err)
	}
	if !SameCluster(as.Cluster, cred.Cluster) {
		return "", store.Credential{}, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this credential serves %s, not %q", cred.Cluster, as.Cluster))
	}
	switch fresh, ok := a.firstUse(hash+"/"+as.ID, as.Expires, now); {
	case !ok:
		return "", store.Credential{}, connect.NewError(connect.CodeResourceExhausted, errors.New("too many stream opens: retry in a minute"))
	case !fresh:
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("this assertion was used already: sign a fresh one for every stream"))
	}
	return cred.Cluster, cred, nil
}

// StillValid re-reads a stream's credential: ErrRevoked when it is gone or
// expired. A store that does not answer keeps the stream (it was valid).
func (a *Authority) StillValid(ctx context.Context, keyHash, fqn string) error {
	cred, err := a.st.Credential(ctx, keyHash)
	switch {
	case errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || cred.Cluster != fqn || a.now().After(cred.Expires)):
		return ErrRevoked
	case err != nil && ctx.Err() == nil:
		a.log.Warn("recheck an agent credential; keeping the stream", "cluster", fqn, "err", err)
	}
	return nil
}
