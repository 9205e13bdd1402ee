package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/testfleet"
)

// keyServer checks, at each Join, that the key joining is already stored
// in the cluster; it loses its first answer (as a server that committed
// the join and then failed to answer), and takes streams that prove the
// joined key.
type keyServer struct {
	agentv1connect.UnimplementedAgentServiceHandler
	kube   kubernetes.Interface
	joins  chan []byte // the public key of every join
	joined []byte
	proven chan string // the cluster named by each stream's valid assertion
}

func (s *keyServer) Join(ctx context.Context, req *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	sec, err := s.kube.CoreV1().Secrets(Namespace).Get(ctx, credentialSecret, metav1.GetOptions{})
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the agent joined before it stored its key"))
	}
	stored, err := agentcred.ParsePEM(sec.Data["key"])
	if err != nil || !bytes.Equal(stored.Public(), req.Msg.GetPublicKey()) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the key joining is not the key stored"))
	}
	s.joins <- req.Msg.GetPublicKey()
	if s.joined == nil {
		s.joined = req.Msg.GetPublicKey()
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the answer was lost"))
	}
	if !bytes.Equal(s.joined, req.Msg.GetPublicKey()) {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("this join token was already used"))
	}
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: "organizations/acme/clusters/c1", Audience: "test-audience"}), nil
}

func (s *keyServer) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	tok, _ := bytes.CutPrefix([]byte(stream.RequestHeader().Get("Authorization")), []byte("Bearer "))
	a, err := agentcred.Verify(string(tok), "test-audience", time.Now())
	if err != nil || !bytes.Equal(a.Public, s.joined) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("not the joined key"))
	}
	s.proven <- a.Cluster
	<-ctx.Done()
	return nil
}

func TestTheAgentStoresItsKeyBeforeItJoinsAndJoinsAgainWithItAfterALostAnswer(t *testing.T) {
	cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if err := kube.CoreV1().Secrets(Namespace).Delete(ctx, credentialSecret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	srv := &keyServer{kube: kube, joins: make(chan []byte, 8), proven: make(chan string, 8)}
	run := func(a *Agent) func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent: %v", err)
			}
		}
	}
	a := agentOf(t, cfg, srv, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	a.sleep = func(ctx context.Context, _ time.Duration) bool { return ctx.Err() == nil } // retry at once
	stop := run(a)
	first, second := <-srv.joins, <-srv.joins
	if !bytes.Equal(first, second) {
		t.Fatal("after a lost answer the agent joined again with another key")
	}
	select {
	case cluster := <-srv.proven:
		if cluster != "organizations/acme/clusters/c1" {
			t.Errorf("the assertion names %q; want the FQN the join answered", cluster)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no stream proved the joined key")
	}
	stop()
	sec, err := kube.CoreV1().Secrets(Namespace).Get(ctx, credentialSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["cluster"]) != "organizations/acme/clusters/c1" || string(sec.Data["audience"]) != "test-audience" || len(sec.Data["credential"]) != 0 {
		t.Fatalf("the secret after the join holds %v; want the key, the cluster and the audience, and no bearer secret", keys(sec.Data))
	}
	// A restarted agent connects with the stored key and joins no more.
	again := agentOf(t, cfg, srv, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	stop = run(again)
	select {
	case <-srv.proven:
	case <-time.After(30 * time.Second):
		t.Fatal("the restarted agent did not connect with its stored key")
	}
	stop()
	select {
	case k := <-srv.joins:
		t.Fatalf("the restarted agent joined again (key %x)", k[:4])
	default:
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
