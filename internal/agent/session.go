package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/ack"
	"flotilla.io/flotilla/internal/agentcred"
)

// credentialSecret holds the agent's credential in its cluster: its
// private key ("key"), and once a join with it succeeded, the cluster's FQN
// ("cluster"), the server's audience ("audience") and the SHA-256 of the
// join token it used ("token-sha256").
const credentialSecret = "flotilla-agent-credential"

// identity is the agent's key-bound credential.
type identity struct {
	key               agentcred.Key
	cluster, audience string
}

// ensureNamespaces creates the agent's own namespace and the one that holds
// the ServiceEntries of services running only in other clusters, unless
// they exist: the chart creates them, and its agent may not create
// namespaces.
func ensureNamespaces(ctx context.Context, kube kubernetes.Interface) error {
	for _, name := range OwnNamespaces() {
		_, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("read namespace %s: %w", name, err)
		}
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "flotilla"}}}
		if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w (the agent chart creates it; out of a cluster, the agent's identity needs to)", name, err)
		}
	}
	return nil
}

// identity returns the agent's credential. Without one it makes a key
// pair, stores the private key in the cluster, and only then joins with the
// token file's token and the public key: an agent that stops between the
// join and noting it joins again with the same key, which the server takes.
// A token file with a token other than the one last joined with (the
// cluster was onboarded again) makes a new key and joins with it. A refused
// token is terminal: retrying cannot help.
func (a *Agent) identity(ctx context.Context, client agentv1connect.AgentServiceClient) (identity, error) {
	secrets := a.kube.CoreV1().Secrets(Namespace)
	s, err := secrets.Get(ctx, credentialSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: credentialSecret, Namespace: Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "flotilla"}}}
	} else if err != nil {
		return identity{}, fmt.Errorf("read secret %s/%s: %w", Namespace, credentialSecret, err)
	}
	key, keyErr := agentcred.ParsePEM(s.Data["key"])
	joined := keyErr == nil && len(s.Data["cluster"]) > 0
	token, tokenErr := readToken(a.cfg.TokenFile)
	if joined && (tokenErr != nil || hashToken(token) == string(s.Data["token-sha256"])) {
		return identity{key: key, cluster: string(s.Data["cluster"]), audience: string(s.Data["audience"])}, nil
	}
	if tokenErr != nil {
		if len(s.Data["credential"]) > 0 {
			tokenErr = fmt.Errorf("secret %s/%s holds a bearer credential of an earlier agent, which the server no longer takes: run `flotilla cluster onboard --force %s` and start the agent with --token-file", Namespace, credentialSecret, a.cfg.Cluster)
		}
		return identity{}, &terminalError{tokenErr}
	}
	if keyErr != nil || joined {
		// No key yet (or one joined with an earlier token): a new one,
		// stored before the join so that no crash can lose it.
		if key, err = agentcred.Generate(); err != nil {
			return identity{}, err
		}
		s.Data = map[string][]byte{"key": key.PEM()}
		if s, err = a.saveSecret(ctx, s); err != nil {
			return identity{}, fmt.Errorf("store the agent's key in secret %s/%s: %w", Namespace, credentialSecret, err)
		}
	}
	res, err := client.Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: a.cfg.Cluster, Token: token, PublicKey: key.Public()}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeInvalidArgument:
			return identity{}, &terminalError{fmt.Errorf("join refused: %s", connect.NewError(connect.CodeOf(err), err).Message())}
		}
		return identity{}, fmt.Errorf("join: %w", err)
	}
	id := identity{key: key, cluster: res.Msg.GetCluster(), audience: res.Msg.GetAudience()}
	s.Data["cluster"], s.Data["audience"], s.Data["token-sha256"] = []byte(id.cluster), []byte(id.audience), []byte(hashToken(token))
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations["flotilla.io/cluster"] = id.cluster
	if _, err := a.saveSecret(ctx, s); err != nil {
		// Joined: the next attempt joins again with the same key and token.
		return identity{}, fmt.Errorf("note the join in secret %s/%s: %w", Namespace, credentialSecret, err)
	}
	a.log.Info("joined", "cluster", id.cluster, "credentialExpires", res.Msg.GetExpireTime().AsTime())
	return id, nil
}

// saveSecret creates or updates the credential's Secret.
func (a *Agent) saveSecret(ctx context.Context, s *corev1.Secret) (*corev1.Secret, error) {
	secrets := a.kube.CoreV1().Secrets(Namespace)
	if s.ResourceVersion == "" {
		return secrets.Create(ctx, s, metav1.CreateOptions{})
	}
	return secrets.Update(ctx, s, metav1.UpdateOptions{})
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

// terminalError is an error that retrying does not fix.
type terminalError struct{ err error }

func (e *terminalError) Error() string { return e.err.Error() }
func (e *terminalError) Unwrap() error { return e.err }

// Backoff bounds between reconnection attempts.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// backoff returns the wait before attempt n (0-based): exponential, capped,
// with ±20% jitter so a fleet does not reconnect in lockstep.
func backoff(n int) time.Duration {
	d := minBackoff << min(n, 10)
	if d > maxBackoff {
		d = maxBackoff
	}
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}

// sessions keeps one session with the central control plane open,
// reconnecting with backoff, until ctx ends or the credential is refused.
func (a *Agent) sessions(ctx context.Context) error {
	for attempt, server := 0, 0; ; attempt++ {
		client := a.clients[server]
		id, err := a.identity(ctx, client)
		var terminal *terminalError
		if errors.As(err, &terminal) {
			return err
		}
		if err == nil {
			var established bool
			established, err = a.session(ctx, client, a.servers[server], id)
			if established {
				attempt = 0
			}
			if connect.CodeOf(err) == connect.CodeUnauthenticated {
				return fmt.Errorf("the central control plane refused this cluster's credential (%s): run `flotilla cluster onboard --force %s` and restart the agent with the new token in --token-file", connect.NewError(connect.CodeOf(err), err).Message(), a.cfg.Cluster)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if len(a.clients) > 1 {
			// Another replica may be up: try it at once, and back off only
			// once every replica was tried.
			server = (server + 1) % len(a.clients)
			if server != 0 {
				attempt--
				a.log.Warn("session with a server replica failed; trying the next", "err", err, "next", a.servers[server])
				continue
			}
		}
		wait := backoff(attempt)
		a.log.Warn("no session with the central control plane; the cluster keeps running on its stored bundle", "err", err, "retryIn", wait.Round(time.Millisecond))
		if !a.sleep(ctx, wait) {
			return nil
		}
	}
}

// sleepCtx waits d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// stableSession is how long a stream must stay open, without a message
// from the server, to count as a session that resets the backoff.
const stableSession = 10 * time.Second

// session runs one stream. established reports whether the server took it:
// it sent a message, or the stream stayed open for stableSession. A report
// the agent sent proves nothing: a client's Send succeeds before the server
// has answered, even on a stream the server then refuses.
func (a *Agent) session(ctx context.Context, client agentv1connect.AgentServiceClient, server string, id identity) (bool, error) {
	var established atomic.Bool
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stable := time.AfterFunc(stableSession, func() { established.Store(true) })
	defer stable.Stop()
	// A fresh assertion per stream proves that this agent holds the key.
	assertion, err := id.key.Assert(id.cluster, id.audience, time.Now())
	if err != nil {
		return false, err
	}
	stream := client.Connect(ctx)
	stream.RequestHeader().Set("Authorization", "Bearer "+assertion)
	defer stream.CloseRequest()

	// What was queued for an earlier session is superseded by Hello and a
	// full inventory.
	for drained := false; !drained; {
		select {
		case <-a.outbox:
		default:
			drained = true
		}
	}
	a.mu.Lock()
	hello := &agentv1.Hello{Cluster: a.cfg.Cluster, AgentVersion: a.cfg.Version, Last: a.lastAck, AcceptsDeltas: true}
	a.mu.Unlock()
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return false, sendError(stream, err)
	}
	if full, err := a.inv.full(ctx); err == nil {
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: full}}); err != nil {
			return false, sendError(stream, err)
		}
	} else {
		// The informers are still listing: the full report goes out as soon
		// as they have synced (deltas are held back until then, so the
		// central control plane never has a partial inventory).
		a.log.Info("inventory not synced yet; its full report follows", "err", err)
		go func() {
			if !cache.WaitForCacheSync(ctx.Done(), a.inv.synced) {
				return // the session ended first
			}
			if full, err := a.inv.full(ctx); err == nil {
				a.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: full}})
			}
		}()
	}

	// Runtime state: a full report once the informers have synced, then
	// deltas of whatever changed, a digest now and then, and a full report
	// again when the central control plane asks for one.
	rt := &runtimeReporter{w: a.rt}
	rtReady := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), a.rt.synced) {
			close(rtReady)
		}
	}()
	resync := make(chan string, 1)
	digest := time.NewTicker(a.cfg.RuntimeDigestInterval)
	defer digest.Stop()
	var rtChanged <-chan struct{} // nil until the first full report is out

	recvErr := make(chan error, 1)
	go func() {
		var parts assembler
		for {
			msg, err := stream.Receive()
			if err != nil {
				recvErr <- err
				return
			}
			established.Store(true)
			if r := msg.GetResync(); r != nil {
				a.log.Warn("the central control plane asks for the full runtime state", "reason", r.GetReason())
				select {
				case resync <- r.GetReason():
				default: // one is pending
				}
				continue
			}
			if c := msg.GetCredential(); c != nil {
				if c.GetFinal() {
					a.log.Warn("the credential reached its longest life and will not be extended: onboard the cluster again before it expires", "expires", c.GetExpireTime().AsTime())
				} else {
					a.log.Info("credential extended", "expires", c.GetExpireTime().AsTime())
				}
				continue
			}
			if m := msg.GetBundle(); m != nil {
				b, err := parts.add(m)
				if err != nil {
					a.log.Error("bundle part out of order", "err", err)
					continue
				} else if b == nil {
					continue // more parts to come
				}
				if err := a.receiveBundle(ctx, b); err != nil {
					// The server sends a version once per stream: end this
					// one, so the next session's Hello (with the last
					// version applied) makes it send the bundle again.
					a.log.Error("bundle not stored; keeping the previous one and reconnecting to get it again", "version", b.GetVersion(), "err", err)
					recvErr <- fmt.Errorf("store bundle %s: %w", b.GetVersion(), err)
					return
				}
			}
		}
	}()
	a.log.Info("session open", "server", server)
	// States: forward queued reports, until the stream fails or ctx ends.
	send := func(m *agentv1.ConnectRequest) error {
		if err := stream.Send(m); err != nil {
			// The receiving goroutine owns Receive: take the server's
			// reason from it.
			select {
			case rerr := <-recvErr:
				return rerr
			case <-time.After(time.Second):
				return err
			}
		}
		return nil
	}
	sendRuntime := func(m *agentv1.Runtime) error {
		return send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: m}})
	}
	// The last acknowledgement sent on this stream: the next ones are sent
	// as partial ones against it.
	var acked *agentv1.Ack
	for {
		select {
		case m := <-a.outbox:
			if full := m.GetAck(); full != nil {
				if acked != nil {
					m = &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: ack.Diff(acked, full)}}
				}
				acked = full
			}
			if err := send(m); err != nil {
				return established.Load(), err
			}
		case <-rtReady:
			rtReady = nil
			if err := sendRuntime(rt.fullReport()); err != nil {
				return established.Load(), err
			}
			rtChanged = a.rt.changed
		case <-rtChanged:
			if !sleepCtx(ctx, runtimeBatch) {
				return established.Load(), nil
			}
			if m := rt.delta(); m != nil {
				if err := sendRuntime(m); err != nil {
					return established.Load(), err
				}
			}
		case <-resync:
			if rtChanged == nil {
				continue // the first full report is still to come
			}
			if err := sendRuntime(rt.fullReport()); err != nil {
				return established.Load(), err
			}
		case <-digest.C:
			if rtChanged == nil {
				continue
			}
			if err := send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Digest{Digest: rt.digest()}}); err != nil {
				return established.Load(), err
			}
		case err := <-recvErr:
			return established.Load(), err
		case <-ctx.Done():
			return established.Load(), nil
		}
	}
}

// sendError returns why a Send failed: when the server ended the stream,
// Send only sees EOF, and the server's reason (say, a refused credential)
// comes from Receive. Only for use before anyone else receives.
func sendError(stream *connect.BidiStreamForClient[agentv1.ConnectRequest, agentv1.ConnectResponse], err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, rerr := stream.Receive(); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
}
