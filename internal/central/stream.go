package central

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/store"
)

var _ agentv1connect.AgentServiceHandler = (*Central)(nil)

// sameCluster reports whether name (a name or an FQN) names the cluster fqn.
func sameCluster(name, fqn string) bool {
	return name == fqn || strings.HasSuffix(fqn, "/clusters/"+name)
}

// Agent authentication defaults.
const (
	// DefaultAudience names the server in agents' assertions when no
	// SetAudience says otherwise (the token issuer's default name).
	DefaultAudience = "flotilla"
	// DefaultCredentialRecheck is how often a stream re-reads its
	// credential: a credential revoked through another replica ends the
	// stream within this (plus one store read).
	DefaultCredentialRecheck = 30 * time.Second
	// DefaultAgentCredentialMaxLife bounds how long a key-bound credential
	// may be extended after its join: then the cluster is onboarded again.
	DefaultAgentCredentialMaxLife = 365 * 24 * time.Hour
	// maxSeenAssertions bounds the assertion ids remembered (each for at
	// most agentcred.MaxLife plus agentcred.Leeway).
	maxSeenAssertions = 200_000
	// maxJoinToken bounds a join token's length (they have 48 characters).
	maxJoinToken = 256
)

// agentAuth is the state of agent authentication: its options, and the
// assertions already used. The zero value uses the defaults.
type agentAuth struct {
	audience string        // "": DefaultAudience
	recheck  time.Duration // 0: DefaultCredentialRecheck
	maxLife  time.Duration // 0: DefaultAgentCredentialMaxLife

	mu    sync.Mutex
	seen  map[string]time.Time // key hash + jti -> when the assertion expires
	swept time.Time
}

func (a *agentAuth) aud() string { return cmp.Or(a.audience, DefaultAudience) }
func (a *agentAuth) recheckEvery() time.Duration {
	return cmp.Or(a.recheck, DefaultCredentialRecheck)
}
func (a *agentAuth) longest() time.Duration { return cmp.Or(a.maxLife, DefaultAgentCredentialMaxLife) }

// firstUse records an assertion's id and reports whether it is new; ok is
// false too when the record is full of live ids (a flood of stream opens).
func (a *agentAuth) firstUse(id string, expires, now time.Time) (fresh, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = map[string]time.Time{}
	}
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

// SetAudience names this server in agents' assertions: the token issuer's
// name, which replicas share; JoinResponse tells agents. Call it before Run
// and before serving.
func (c *Central) SetAudience(name string) { c.agents.audience = name }

// WithCredentialRecheck sets how often a stream re-reads its credential.
func WithCredentialRecheck(d time.Duration) Option { return func(c *Central) { c.agents.recheck = d } }

// WithAgentCredentialMaxLife bounds how long after its join a credential
// may be extended.
func WithAgentCredentialMaxLife(d time.Duration) Option {
	return func(c *Central) { c.agents.maxLife = d }
}

// WithClock makes the central control plane read time from now (tests).
func WithClock(now func() time.Time) Option { return func(c *Central) { c.now = now } }

var errUnknownToken = connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token: run `flotilla cluster onboard <cluster>` and use the token it prints"))

// Join implements AgentService.Join. The token is read and checked outside
// any transaction, so a bad one never waits for (or holds) the store's
// write lock; only a token that checks out takes it, and is checked again
// inside.
func (c *Central) Join(ctx context.Context, req *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	token, pub := req.Msg.GetToken(), req.Msg.GetPublicKey()
	if token == "" || len(token) > maxJoinToken {
		return nil, errUnknownToken
	}
	if err := agentcred.CheckPublic(pub); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	keyHash := agentcred.Hash(pub)
	tokenHash := agentcred.HashToken(token)
	cred, err := c.st.Credential(ctx, tokenHash)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, c.storeFailed("join: read the token", err)
	}
	again, refusal, err := c.checkJoin(ctx, c.st.Credential, cred, err, req.Msg.GetCluster(), keyHash)
	if err != nil {
		return nil, c.storeFailed("join: read the agent credential", err)
	}
	if refusal != nil {
		return nil, refusal
	}
	if again {
		return c.joined(cred.Cluster, c.expiryOf(ctx, keyHash)), nil
	}
	if cred.Kind != agentcred.KindJoinForce && c.agentConnected(cred.Cluster) {
		// A join replaces the cluster's credential: never silently take
		// over from a working agent.
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has a connected agent, and joining would replace its credential: to move the cluster to a new agent, run `flotilla cluster onboard --force`", cred.Cluster))
	}
	expires := c.now().Add(c.agentTTL).UTC()
	err = c.st.Update(ctx, "agent:"+cred.Cluster, func(tx store.Tx) error {
		// Again inside: another join may have used the token meanwhile.
		cred, err := tx.GetCredential(ctx, tokenHash)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if again, refusal, err = c.checkJoin(ctx, tx.GetCredential, cred, err, req.Msg.GetCluster(), keyHash); err != nil || refusal != nil || again {
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
		return nil, c.storeFailed("join", err)
	}
	if refusal != nil {
		return nil, refusal
	}
	if again {
		return c.joined(cred.Cluster, c.expiryOf(ctx, keyHash)), nil
	}
	// An agent still streaming with the replaced credential goes now (on
	// other replicas, at its next recheck).
	if c.endStream(cred.Cluster, "the cluster joined again with another agent's key") {
		c.log.Info("the stream of a replaced agent credential ended", "cluster", cred.Cluster)
	}
	c.log.Info("cluster joined", "cluster", cred.Cluster)
	return c.joined(cred.Cluster, expires), nil
}

// checkJoin judges a join token (cred, as read with err) for the cluster
// named in the request. again says the token was used already by this
// very key, whose credential stands: the agent stopped after its join and
// before it noted it, and joins again.
func (c *Central) checkJoin(ctx context.Context, get func(context.Context, string) (store.Credential, error), cred store.Credential, readErr error, cluster, keyHash string) (again bool, refusal, err error) {
	switch {
	case errors.Is(readErr, store.ErrNotFound) || cred.Kind != agentcred.KindJoin && cred.Kind != agentcred.KindJoinForce:
		return false, errUnknownToken, nil
	case !sameCluster(cluster, cred.Cluster):
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token is for %s, not %q", cred.Cluster, cluster)), nil
	case cred.Used:
		mine, err := get(ctx, keyHash)
		if err == nil && mine.Kind == agentcred.KindAgentKey && mine.Cluster == cred.Cluster && !c.now().After(mine.Expires) {
			return true, nil, nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, nil, err
		}
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s was already used: a token joins once; run `flotilla cluster onboard` for a new one", cred.Cluster)), nil
	case c.now().After(cred.Expires):
		return false, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s expired at %s: run `flotilla cluster onboard` for a new one", cred.Cluster, cred.Expires.Format(time.RFC3339))), nil
	}
	return false, nil, nil
}

func (c *Central) joined(cluster string, expires time.Time) *connect.Response[agentv1.JoinResponse] {
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: cluster, ExpireTime: timestamppb.New(expires), Audience: c.agents.aud()})
}

// expiryOf is when the credential of keyHash expires, as far as the store
// says (zero when it cannot say).
func (c *Central) expiryOf(ctx context.Context, keyHash string) time.Time {
	cred, err := c.st.Credential(ctx, keyHash)
	if err != nil {
		return time.Time{}
	}
	return cred.Expires
}

// storeFailed logs a store failure and answers without its text: callers
// learn only that the store did not answer.
func (c *Central) storeFailed(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New(op+": the request ended first"))
	}
	c.log.Warn(op+" failed", "err", err)
	return connect.NewError(connect.CodeUnavailable, errors.New(op+": the store did not answer; retry"))
}

// endStream ends the cluster's stream to this replica, if it has one, at
// once: the caller returns after the stream is no longer the cluster's.
func (c *Central) endStream(fqn, why string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.clusters[fqn]
	if cl == nil || cl.conn == nil {
		return false
	}
	cl.conn.end(why)
	cl.conn = nil
	cl.dirty = true
	c.services.Disconnected(fqn, c.now())
	return true
}

// renewal says when an agent credential expiring at expires is extended:
// once a third of its life is left.
func (c *Central) renewal(expires time.Time) time.Time { return expires.Add(-c.agentTTL / 3) }

// errRevoked ends a stream whose credential is gone.
var errRevoked = connect.NewError(connect.CodeUnauthenticated, errors.New("this cluster's credential was revoked or replaced (cluster revoke, a forced onboarding, or the cluster's deletion): onboard the cluster again"))

// extend moves the expiry of the credential keyHash of fqn to a full life
// from now, but never past its longest life since the join: a stolen key
// cannot keep it forever, and the cluster is onboarded again by then.
// final says it reached that bound.
func (c *Central) extend(ctx context.Context, fqn, keyHash string) (expires time.Time, final bool, err error) {
	err = c.st.Update(ctx, "agent:"+fqn, func(tx store.Tx) error {
		cred, err := tx.GetCredential(ctx, keyHash)
		if errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || cred.Cluster != fqn) {
			return errRevoked
		} else if err != nil {
			return err
		}
		limit := cred.CreateTime.Add(c.agents.longest())
		expires = c.now().Add(c.agentTTL).UTC()
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
		c.log.Info("agent credential extended", "cluster", fqn, "expires", expires, "final", final)
	}
	return expires, final, err
}

// authenticate checks a stream's assertion and maps it to the cluster's
// FQN and its credential.
func (c *Central) authenticate(ctx context.Context, header string) (string, store.Credential, error) {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || tok == "" {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("no credential: send Authorization: Bearer <assertion signed with the agent's key>"))
	}
	now := c.now()
	a, err := agentcred.Verify(tok, c.agents.aud(), now)
	if err != nil {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, err)
	}
	hash := agentcred.Hash(a.Public)
	cred, err := c.st.Credential(ctx, hash)
	if errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || now.After(cred.Expires)) {
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown, expired or revoked cluster credential: onboard the cluster again"))
	} else if err != nil {
		return "", store.Credential{}, c.storeFailed("authenticate the agent", err)
	}
	if !sameCluster(a.Cluster, cred.Cluster) {
		return "", store.Credential{}, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this credential serves %s, not %q", cred.Cluster, a.Cluster))
	}
	switch fresh, ok := c.agents.firstUse(hash+"/"+a.ID, a.Expires, now); {
	case !ok:
		return "", store.Credential{}, connect.NewError(connect.CodeResourceExhausted, errors.New("too many stream opens: retry in a minute"))
	case !fresh:
		return "", store.Credential{}, connect.NewError(connect.CodeUnauthenticated, errors.New("this assertion was used already: sign a fresh one for every stream"))
	}
	return cred.Cluster, cred, nil
}

// Connect implements AgentService.Connect: one stream per agent.
func (c *Central) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	fqn, cred, err := c.authenticate(ctx, stream.RequestHeader().Get("Authorization"))
	if err != nil {
		return err
	}
	first, err := stream.Receive()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("the first message must be Hello"))
	}
	if !sameCluster(hello.GetCluster(), fqn) {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this credential serves %s, not %q", fqn, hello.GetCluster()))
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		return ctx.Err()
	}

	// A new status session: from now on, status written for this cluster by
	// an older stream (here or on another replica) is refused.
	epoch, err := c.st.ClaimStatus(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", fqn, errNoCluster))
	} else if err != nil {
		return c.storeFailed("open a status session for "+fqn, err)
	}
	conn := &agentConn{epoch: epoch, wake: make(chan struct{}, 1), resync: make(chan string, 1), done: make(chan struct{}), deltas: hello.GetAcceptsDeltas()}
	conn.wake <- struct{}{} // send the current bundle if the agent lacks it
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return connect.NewError(connect.CodeUnavailable, errors.New("the server is shutting down: reconnect"))
	}
	cl := c.clusters[fqn]
	if cl == nil {
		c.mu.Unlock()
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", fqn, errNoCluster))
	}
	if cl.conn != nil {
		cl.conn.end("replaced by a newer stream from the same cluster") // the newer stream wins
	}
	cl.conn, cl.epoch, cl.mirror = conn, epoch, false
	cl.agentVersion = hello.GetAgentVersion()
	cl.lastSeen = c.now()
	if hello.GetLast() != nil {
		cl.setAck(hello.GetLast())
	}
	sent := cl.ack.GetBundleVersion()
	cl.dirty = true
	c.mu.Unlock()
	c.log.Info("agent connected", "cluster", fqn, "agentVersion", hello.GetAgentVersion(), "has", sent)

	defer func() {
		c.mu.Lock()
		if cl.conn == conn {
			cl.conn = nil
			cl.dirty = true
			// Its services stay, marked stale: a lost control connection
			// is not an outage.
			c.services.Disconnected(fqn, c.now())
		}
		c.mu.Unlock()
		c.log.Info("agent disconnected", "cluster", fqn)
	}()
	// A revoke or a join that committed after this stream authenticated
	// and before it was the cluster's found no stream to end: read the
	// credential once more. One that commits from now on finds it.
	if err := c.stillValid(ctx, cred.Hash, fqn); err != nil {
		return err
	}

	recvErr := make(chan error, 1)
	go func() { recvErr <- c.receive(stream, cl, conn) }()

	// The credential is extended on this stream when its time comes (at
	// once if it already has); renew fires then, until the extension that
	// reaches its longest life. recheck re-reads it, so that a revocation
	// through another replica ends the stream too.
	renew := time.NewTimer(max(0, c.renewal(cred.Expires).Sub(c.now())))
	defer renew.Stop()
	renewC := renew.C
	recheck := time.NewTicker(c.agents.recheckEvery())
	defer recheck.Stop()

	// What this stream delivered, for deltas: nil until it sent a whole
	// bundle (the agent's own version, from its Hello, says nothing of
	// its content).
	var delivered *sentBundle

	// States: wait for a wake-up (a new bundle, or the first send), a receive
	// error, the credential's extension or recheck, replacement by a newer
	// stream or revocation, or the end; on a wake-up, send
	// the latest bundle if its version differs from the last one sent: as
	// a delta against it when the agent takes deltas and this stream
	// delivered it, else whole.
	for {
		select {
		case <-conn.wake:
			c.mu.Lock()
			version, rev := cl.version, c.rev
			var (
				content []byte
				base    string
				next    *sentBundle
			)
			if version != sent && version != "" {
				if conn.deltas && delivered != nil {
					content, err = json.Marshal(c.delta(fqn, delivered))
					base = sent
				} else {
					content, err = c.content(fqn)
				}
				if conn.deltas {
					next = c.delivered(fqn)
				}
			}
			c.mu.Unlock()
			if err != nil {
				c.log.Warn("encode a bundle", "cluster", fqn, "err", err)
				return connect.NewError(connect.CodeUnavailable, errors.New("the bundle could not be encoded: the server log says why; reconnect"))
			}
			if content == nil {
				continue
			}
			if err := sendBundle(stream, version, rev, base, content); err != nil {
				return err
			}
			sent, delivered = version, next
			c.metrics.sends.Inc()
			if base != "" {
				c.metrics.deltas.Inc()
			}
		case why := <-conn.resync:
			if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Resync{Resync: &agentv1.Resync{Reason: why}}}); err != nil {
				return err
			}
			c.metrics.resyncs.Inc()
		case <-renewC:
			expires, final, err := c.extend(ctx, fqn, cred.Hash)
			if errors.Is(err, errRevoked) {
				return errRevoked
			} else if err != nil {
				c.log.Warn("extend an agent credential; retrying in a minute", "cluster", fqn, "err", err)
				renew.Reset(time.Minute)
				continue
			}
			if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Credential{Credential: &agentv1.AgentCredential{ExpireTime: timestamppb.New(expires), Final: final}}}); err != nil {
				return err
			}
			if final {
				c.log.Warn("the agent credential reached its longest life: onboard the cluster again before it expires", "cluster", fqn, "expires", expires)
				renewC = nil
			} else {
				renew.Reset(c.renewal(expires).Sub(c.now()))
			}
		case <-recheck.C:
			if err := c.stillValid(ctx, cred.Hash, fqn); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		case <-conn.done:
			if err := c.stillValid(ctx, cred.Hash, fqn); err != nil {
				return err // revoked, or replaced by a join
			}
			c.mu.Lock()
			why := conn.why
			c.mu.Unlock()
			return connect.NewError(connect.CodeUnavailable, errors.New(why))
		case <-ctx.Done():
			return nil
		}
	}
}

// stillValid re-reads a stream's credential: errRevoked when it is gone or
// expired. A store that does not answer keeps the stream (it was valid).
func (c *Central) stillValid(ctx context.Context, keyHash, fqn string) error {
	cred, err := c.st.Credential(ctx, keyHash)
	switch {
	case errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != agentcred.KindAgentKey || cred.Cluster != fqn || c.now().After(cred.Expires)):
		return errRevoked
	case err != nil && ctx.Err() == nil:
		c.log.Warn("recheck an agent credential; keeping the stream", "cluster", fqn, "err", err)
	}
	return nil
}

// receive reads the agent's reports until the stream ends.
func (c *Central) receive(stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse], cl *cluster, conn *agentConn) error {
	// After a report over the registry's bounds, no full report is asked
	// for until quietUntil: the agent would send the same one again.
	var quietUntil time.Time
	for {
		msg, err := stream.Receive()
		if err != nil {
			return err
		}
		// Runtime state goes to the registry, outside c.mu.
		var rterr error
		switch m := msg.GetMsg().(type) {
		case *agentv1.ConnectRequest_Runtime:
			rterr = c.services.Apply(cl.fqn, m.Runtime, c.now())
		case *agentv1.ConnectRequest_Digest:
			rterr = c.services.Check(cl.fqn, m.Digest)
		}
		if rterr != nil {
			now := c.now()
			switch {
			case errors.Is(rterr, registry.ErrTooLarge):
				c.log.Warn("runtime report refused: over the registry's bounds; the cluster's runtime state stays as it was", "cluster", cl.fqn, "err", rterr)
			default:
				c.log.Warn("runtime state out of sync; asking the agent for a full report", "cluster", cl.fqn, "err", rterr)
			}
			if !now.Before(quietUntil) {
				if errors.Is(rterr, registry.ErrTooLarge) {
					quietUntil = now.Add(resyncQuiet)
				}
				select {
				case conn.resync <- rterr.Error():
				default: // one is pending
				}
			}
		}
		c.mu.Lock()
		cl.lastSeen = c.now()
		cl.dirty = true
		switch m := msg.GetMsg().(type) {
		case *agentv1.ConnectRequest_Inventory:
			cl.inv.merge(m.Inventory)
		case *agentv1.ConnectRequest_Ack:
			a := m.Ack
			if a.GetPartial() {
				if conn.ack == nil {
					c.mu.Unlock()
					return connect.NewError(connect.CodeInvalidArgument, errors.New("a partial acknowledgement before any whole one on this stream"))
				}
				if len(a.GetResources())+len(a.GetRemoved()) == 0 && cl.ack == conn.ack {
					// The resources' statuses stand: only the version moved.
					keep := cl.resourcesJSON
					a = ack.Merge(conn.ack, a)
					conn.ack = a
					cl.setAck(a)
					cl.resourcesJSON = keep
					break
				}
				a = ack.Merge(conn.ack, a)
			}
			conn.ack = a
			cl.setAck(a)
		case *agentv1.ConnectRequest_Drift:
			cl.drifts = append(cl.drifts, m.Drift)
			if len(cl.drifts) > maxDrifts {
				cl.drifts = cl.drifts[len(cl.drifts)-maxDrifts:]
			}
		}
		c.mu.Unlock()
	}
}

// resyncQuiet is how long a stream asks for no full runtime report after
// one over the registry's bounds.
const resyncQuiet = time.Minute

// maxPart bounds one bundle message; larger bundles go in parts.
const maxPart = 1 << 20

// sendBundle sends a bundle, or a delta against base, in one message, or in
// parts of at most maxPart bytes, back to back.
func sendBundle(stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse], version string, rev int64, base string, content []byte) error {
	parts := (len(content) + maxPart - 1) / maxPart
	if parts <= 1 {
		return stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: &agentv1.Bundle{Version: version, Revision: rev, Base: base, Content: content}}})
	}
	for i := range parts {
		chunk := content[i*maxPart : min((i+1)*maxPart, len(content))]
		m := &agentv1.Bundle{Version: version, Revision: rev, Base: base, Content: chunk, Part: int32(i), Parts: int32(parts)}
		if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: m}}); err != nil {
			return err
		}
	}
	return nil
}

// agentConnected reports whether the cluster has a live agent stream, to
// this replica or, as far as the store says, to another.
func (c *Central) agentConnected(fqn string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.clusters[fqn]
	return cl != nil && cl.connected()
}
