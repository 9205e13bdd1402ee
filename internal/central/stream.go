package central

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/agentauth"
	"flotilla.io/flotilla/internal/apierror"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/store"
)

var _ agentv1connect.AgentServiceHandler = (*Central)(nil)

// SetAudience names this server in agents' assertions: the token issuer's
// name, which replicas share; JoinResponse tells agents. Call it before Run
// and before serving.
func (c *Central) SetAudience(name string) { c.auth.SetAudience(name) }

// WithCredentialRecheck sets how often a stream re-reads its credential.
func WithCredentialRecheck(d time.Duration) Option { return func(c *Central) { c.authCfg.Recheck = d } }

// WithAgentCredentialMaxLife bounds how long after its join a credential
// may be extended.
func WithAgentCredentialMaxLife(d time.Duration) Option {
	return func(c *Central) { c.authCfg.MaxLife = d }
}

// WithClock makes the central control plane read time from now (tests).
func WithClock(now func() time.Time) Option { return func(c *Central) { c.now = now } }

// Join implements AgentService.Join (agentauth.Authority.Join). An agent
// still streaming with a credential the join replaced goes now (on other
// replicas, at its next recheck).
func (c *Central) Join(ctx context.Context, req *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	res, replaced, err := c.auth.Join(ctx, req.Msg, c.agentConnected)
	if err != nil {
		return nil, err
	}
	if replaced {
		if c.endStream(res.GetCluster(), "the cluster joined again with another agent's key") {
			c.log.Info("the stream of a replaced agent credential ended", "cluster", res.GetCluster())
		}
		c.log.Info("cluster joined", "cluster", res.GetCluster())
	}
	return connect.NewResponse(res), nil
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
	if c.status.Close(fqn, cl.conn.epoch) {
		c.services.Disconnected(fqn, c.now())
	}
	cl.conn = nil
	return true
}

// Connect implements AgentService.Connect: one stream per agent.
func (c *Central) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	fqn, cred, err := c.auth.Authenticate(ctx, stream.RequestHeader().Get("Authorization"))
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
	if !agentauth.SameCluster(hello.GetCluster(), fqn) {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this credential serves %s, not %q", fqn, hello.GetCluster()))
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		return ctx.Err()
	}

	// A new status session: from now on, status written for this cluster by
	// an older stream (here or on another replica) is refused.
	epoch, err := c.status.Claim(ctx, fqn)
	if errors.Is(err, store.ErrNotFound) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", fqn, errNoCluster))
	} else if err != nil {
		return apierror.Unavailable(c.log, "open a status session for "+fqn, err)
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
	cl.conn = conn
	sent := c.status.Open(fqn, epoch, hello)
	c.mu.Unlock()
	c.log.Info("agent connected", "cluster", fqn, "agentVersion", hello.GetAgentVersion(), "has", sent)

	defer func() {
		c.mu.Lock()
		if cl.conn == conn {
			cl.conn = nil
			if c.status.Close(fqn, epoch) {
				// Its services stay, marked stale: a lost control
				// connection is not an outage.
				c.services.Disconnected(fqn, c.now())
			}
		}
		c.mu.Unlock()
		c.log.Info("agent disconnected", "cluster", fqn)
	}()
	// A revoke or a join that committed after this stream authenticated
	// and before it was the cluster's found no stream to end: read the
	// credential once more. One that commits from now on finds it.
	if err := c.auth.StillValid(ctx, cred.Hash, fqn); err != nil {
		return err
	}

	recvErr := make(chan error, 1)
	go func() { recvErr <- c.receive(stream, fqn, conn) }()

	// The credential is extended on this stream when its time comes (at
	// once if it already has); renew fires then, until the extension that
	// reaches its longest life. recheck re-reads it, so that a revocation
	// through another replica ends the stream too.
	renew := time.NewTimer(max(0, c.auth.Renewal(cred.Expires).Sub(c.now())))
	defer renew.Stop()
	renewC := renew.C
	recheck := time.NewTicker(c.auth.RecheckEvery())
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
			rev := c.rev
			var (
				version, base string
				content       []byte
				next          *sentBundle
			)
			if v := c.version(fqn); v != sent && v != "" {
				from := delivered
				if !conn.deltas {
					from = nil
				}
				version, content, next, err = c.outgoing(fqn, from, conn.deltas)
				if from != nil {
					base = sent
				}
				if version == sent {
					content = nil // moved back between the two reads: nothing to send
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
			expires, final, err := c.auth.Extend(ctx, fqn, cred.Hash)
			if errors.Is(err, agentauth.ErrRevoked) {
				return agentauth.ErrRevoked
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
				renew.Reset(c.auth.Renewal(expires).Sub(c.now()))
			}
		case <-recheck.C:
			if err := c.auth.StillValid(ctx, cred.Hash, fqn); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		case <-conn.done:
			if err := c.auth.StillValid(ctx, cred.Hash, fqn); err != nil {
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

// receive reads the agent's reports until the stream ends: runtime state
// goes to the registry, the rest to the status store, both outside c.mu.
func (c *Central) receive(stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse], fqn string, conn *agentConn) error {
	// After a report over the registry's bounds, no full report is asked
	// for until quietUntil: the agent would send the same one again.
	var quietUntil time.Time
	for {
		msg, err := stream.Receive()
		if err != nil {
			return err
		}
		var rterr error
		switch m := msg.GetMsg().(type) {
		case *agentv1.ConnectRequest_Runtime:
			rterr = c.services.Apply(fqn, m.Runtime, c.now())
		case *agentv1.ConnectRequest_Digest:
			rterr = c.services.Check(fqn, m.Digest)
		}
		if rterr != nil {
			now := c.now()
			switch {
			case errors.Is(rterr, registry.ErrTooLarge):
				c.log.Warn("runtime report refused: over the registry's bounds; the cluster's runtime state stays as it was", "cluster", fqn, "err", rterr)
			default:
				c.log.Warn("runtime state out of sync; asking the agent for a full report", "cluster", fqn, "err", rterr)
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
		if err := c.status.Report(fqn, conn.epoch, msg); err != nil {
			return connect.NewError(connect.CodeInvalidArgument, err)
		}
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
	cl, ok := c.status.Get(fqn)
	return ok && cl.Connected
}
