package central

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/store"
)

var _ agentv1connect.AgentServiceHandler = (*Central)(nil)

// Credential kinds.
const (
	credJoin      = "join"
	credJoinForce = "join-force" // may replace a connected agent
	credAgent     = "agent"
)

// newSecret returns a random secret and the hash stored for it.
func newSecret(prefix string) (secret, hash string) {
	b := make([]byte, 32)
	rand.Read(b)
	secret = prefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, hashSecret(secret)
}

func hashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// sameCluster reports whether name (a name or an FQN) names the cluster fqn.
func sameCluster(name, fqn string) bool {
	return name == fqn || strings.HasSuffix(fqn, "/clusters/"+name)
}

// Join implements AgentService.Join.
func (c *Central) Join(ctx context.Context, req *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	var (
		credential, cluster string
		expires             time.Time
		refusal             error
	)
	err := c.st.Update(ctx, "agent:"+req.Msg.GetCluster(), func(tx store.Tx) error {
		cred, err := tx.GetCredential(ctx, hashSecret(req.Msg.GetToken()))
		switch {
		case errors.Is(err, store.ErrNotFound) || err == nil && cred.Kind != credJoin && cred.Kind != credJoinForce:
			refusal = connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token: run `flotilla cluster onboard <cluster>` and use the token it prints"))
			return nil
		case err != nil:
			return err
		case cred.Used:
			refusal = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s was already used: a token joins once; run `flotilla cluster onboard` for a new one", cred.Cluster))
			return nil
		case c.now().After(cred.Expires):
			refusal = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token for %s expired at %s: run `flotilla cluster onboard` for a new one", cred.Cluster, cred.Expires.Format(time.RFC3339)))
			return nil
		case !sameCluster(req.Msg.GetCluster(), cred.Cluster):
			refusal = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("this join token is for %s, not %q", cred.Cluster, req.Msg.GetCluster()))
			return nil
		case cred.Kind != credJoinForce && c.agentConnected(cred.Cluster):
			// A join replaces the cluster's credential: never silently
			// take over from a working agent.
			refusal = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s has a connected agent, and joining would replace its credential: to move the cluster to a new agent, run `flotilla cluster onboard --force`", cred.Cluster))
			return nil
		}
		cred.Used = true
		if err := tx.PutCredential(ctx, cred); err != nil {
			return err
		}
		// A new credential replaces the cluster's previous one.
		if err := tx.DeleteCredentials(ctx, cred.Cluster, credAgent); err != nil {
			return err
		}
		secret, hash := newSecret("fla_")
		credential, cluster, expires = secret, cred.Cluster, c.now().Add(c.agentTTL).UTC()
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: cred.Cluster, Kind: credAgent, Expires: expires})
	})
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("join: %w", err))
	}
	if refusal != nil {
		return nil, refusal
	}
	c.log.Info("cluster joined", "cluster", cluster)
	return connect.NewResponse(&agentv1.JoinResponse{Credential: credential, Cluster: cluster, ExpireTime: timestamppb.New(expires)}), nil
}

// renewal says when an agent credential expiring at expires is renewed:
// once a third of its life is left.
func (c *Central) renewal(expires time.Time) time.Time { return expires.Add(-c.agentTTL / 3) }

// rotate issues the cluster a new agent credential. The one in use stays
// valid until it expires, so an agent that dies before storing the new one
// still reconnects; credentials that already expired are removed.
func (c *Central) rotate(ctx context.Context, fqn string) (*agentv1.AgentCredential, time.Time, error) {
	secret, hash := newSecret("fla_")
	expires := c.now().Add(c.agentTTL).UTC()
	err := c.st.Update(ctx, "agent:"+fqn, func(tx store.Tx) error {
		if err := tx.DeleteExpiredCredentials(ctx, fqn, credAgent, c.now()); err != nil {
			return err
		}
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: fqn, Kind: credAgent, Expires: expires})
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	c.log.Info("agent credential renewed", "cluster", fqn, "expires", expires)
	return &agentv1.AgentCredential{Credential: secret, ExpireTime: timestamppb.New(expires)}, expires, nil
}

// authenticate maps a stream's bearer credential to its cluster's FQN and
// the credential's expiry.
func (c *Central) authenticate(ctx context.Context, header string) (string, time.Time, error) {
	secret, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || secret == "" {
		return "", time.Time{}, connect.NewError(connect.CodeUnauthenticated, errors.New("no credential: send Authorization: Bearer <credential>"))
	}
	cred, err := c.st.Credential(ctx, hashSecret(secret))
	if errors.Is(err, store.ErrNotFound) || err == nil && (cred.Kind != credAgent || c.now().After(cred.Expires)) {
		return "", time.Time{}, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown, expired or revoked cluster credential: onboard the cluster again"))
	} else if err != nil {
		return "", time.Time{}, connect.NewError(connect.CodeUnavailable, err)
	}
	return cred.Cluster, cred.Expires, nil
}

// Connect implements AgentService.Connect: one stream per agent.
func (c *Central) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	fqn, expires, err := c.authenticate(ctx, stream.RequestHeader().Get("Authorization"))
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
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("open a status session for %s: %w", fqn, err))
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

	recvErr := make(chan error, 1)
	go func() { recvErr <- c.receive(stream, cl, conn) }()

	// The credential is renewed on this stream when its time comes (at
	// once if it already has); renew fires then.
	renew := time.NewTimer(max(0, c.renewal(expires).Sub(c.now())))
	defer renew.Stop()

	// What this stream delivered, for deltas: nil until it sent a whole
	// bundle (the agent's own version, from its Hello, says nothing of
	// its content).
	var delivered *sentBundle

	// States: wait for a wake-up (a new bundle, or the first send), a receive
	// error, replacement by a newer stream, or the end; on a wake-up, send
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
				return connect.NewError(connect.CodeUnavailable, err)
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
		case <-renew.C:
			cred, next, err := c.rotate(ctx, fqn)
			if err != nil {
				c.log.Warn("renew an agent credential; retrying in a minute", "cluster", fqn, "err", err)
				renew.Reset(time.Minute)
				continue
			}
			if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Credential{Credential: cred}}); err != nil {
				return err
			}
			renew.Reset(c.renewal(next).Sub(c.now()))
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		case <-conn.done:
			c.mu.Lock()
			why := conn.why
			c.mu.Unlock()
			return connect.NewError(connect.CodeUnavailable, errors.New(why))
		case <-ctx.Done():
			return nil
		}
	}
}

// receive reads the agent's reports until the stream ends.
func (c *Central) receive(stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse], cl *cluster, conn *agentConn) error {
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
			c.log.Warn("runtime state out of sync; asking the agent for a full report", "cluster", cl.fqn, "err", rterr)
			select {
			case conn.resync <- rterr.Error():
			default: // one is pending
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
