package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/testfleet"
)

// bundleServer sends each bundle given on next to the agent's stream and
// passes on every acknowledgement.
type bundleServer struct {
	agentv1connect.UnimplementedAgentServiceHandler
	next chan *bundle.Bundle
	acks chan *agentv1.Ack
}

func (s *bundleServer) Join(context.Context, *connect.Request[agentv1.JoinRequest]) (*connect.Response[agentv1.JoinResponse], error) {
	return connect.NewResponse(&agentv1.JoinResponse{Cluster: "organizations/acme/clusters/c2", Audience: "flotilla"}), nil
}

func (s *bundleServer) Connect(ctx context.Context, stream *connect.BidiStream[agentv1.ConnectRequest, agentv1.ConnectResponse]) error {
	errs := make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Receive()
			if err != nil {
				errs <- err
				return
			}
			if a := msg.GetAck(); a != nil {
				select {
				case s.acks <- a:
				case <-ctx.Done():
				}
			}
		}
	}()
	for {
		select {
		case b := <-s.next:
			data, _ := json.Marshal(b)
			if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Bundle{Bundle: &agentv1.Bundle{Version: b.Version(), Content: data}}}); err != nil {
				return err
			}
		case err := <-errs:
			return err
		}
	}
}

// installBundle is a bundle of IstioInstallations, each given as its name
// and spec.
func installBundle(specs ...string) *bundle.Bundle {
	b := &bundle.Bundle{Cluster: "c2", Groups: []bundle.Group{{FQN: "organizations/acme", Type: compile.GroupTypeOrganization, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}}}, Objects: []bundle.Object{}}
	for i := 0; i+1 < len(specs); i += 2 {
		b.Objects = append(b.Objects, bundle.Object{APIVersion: compile.IngressGatewayAPIVersion, Kind: compile.KindIstioInstallation,
			FQN: "organizations/acme/istioinstallations/" + specs[i], Name: specs[i], Group: "organizations/acme", Spec: json.RawMessage(specs[i+1])})
	}
	return b
}

// Istio's order: a gateway moves only once its revision's istiod has rolled
// out. At install the gateway waits for istiod's Deployment to be available;
// moved to a new revision in place, it stays on the old one until the new
// istiod is; the installation is Pending meanwhile, saying what it waits for.
// (This cluster runs no Deployment controller: the test writes istiod's
// status as the controller would, once it "rolled out".)
func TestAGatewayWaitsForItsRevisionsIstiodToRollOut(t *testing.T) {
	cfg := testfleet.Get(t).Cluster(t, "c2").RESTConfig(t) // bare: nothing of Istio there yet
	kube := kubernetes.NewForConfigOrDie(cfg)
	srv := &bundleServer{next: make(chan *bundle.Bundle, 1), acks: make(chan *agentv1.Ack, 64)}
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("flj_test"), 0o600)
	a, err := New(Config{Server: serve(t, srv), Cluster: "c2", TokenFile: token, Kube: cfg, Version: "test", IstioLifecycle: true,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const gateway = `"gateways":[{"name":"istio-ingressgateway","type":"ingress","replicas":1}]`
	const r1 = "organizations/acme/istioinstallations/r1"
	// ackOf waits for an acknowledgement of b whose state for fqn is state.
	ackOf := func(b *bundle.Bundle, fqn, state string) *agentv1.ResourceStatus {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case ack := <-srv.acks:
				for _, r := range ack.GetResources() {
					if ack.GetBundleVersion() == b.Version() && r.GetFqn() == fqn && r.GetState() == state {
						return r
					}
				}
			case <-deadline:
				t.Fatalf("no acknowledgement of %s with %s %s within 60 s", b.Version(), fqn, state)
			}
		}
	}
	gatewayRevision := func() string {
		d, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "istio-ingressgateway", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return d.Spec.Template.Labels[revisionLabel]
	}
	// stays checks, again and again for 4 s (two of the agent's rechecks),
	// that the gateway is on revision rev ("" for absent).
	stays := func(rev string) {
		t.Helper()
		for end := time.Now().Add(2 * gateRecheck); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if got := gatewayRevision(); got != rev {
				t.Fatalf("the gateway is on revision %q before its istiod rolled out, want %q", got, rev)
			}
		}
	}
	rollOut := func(name string) {
		t.Helper()
		d, err := kube.AppsV1().Deployments("istio-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: "True", Reason: "MinimumReplicasAvailable"}}}
		if _, err := kube.AppsV1().Deployments("istio-system").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Install: istiod-r1 is created, the gateway waits for it.
	v1 := installBundle("r1", `{"clusters":{"names":["c2"]},"version":"1.31","revision":"r1",`+gateway+`}`)
	srv.next <- v1
	st := ackOf(v1, r1, "Pending")
	if !strings.Contains(st.GetMessage(), "Deployment istio-system/istio-ingressgateway waits for revision r1's istiod") || !strings.Contains(st.GetMessage(), "not created until then") {
		t.Fatalf("pending message: %s", st.GetMessage())
	}
	if _, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod-r1", metav1.GetOptions{}); err != nil {
		t.Fatalf("istiod-r1 was not installed first: %v", err)
	}
	stays("")
	rollOut("istiod-r1")
	ackOf(v1, r1, "Applied")
	if got := gatewayRevision(); got != "r1" {
		t.Fatalf("after istiod-r1 rolled out the gateway is on %q", got)
	}

	// Upgrade in place: the gateway moves to r2's installation.
	v2 := installBundle("r1", `{"clusters":{"names":["c2"]},"version":"1.31","revision":"r1"}`,
		"r2", `{"clusters":{"names":["c2"]},"version":"1.31","revision":"r2",`+gateway+`}`)
	srv.next <- v2
	st = ackOf(v2, "organizations/acme/istioinstallations/r2", "Pending")
	if !strings.Contains(st.GetMessage(), "waits for revision r2's istiod") || !strings.Contains(st.GetMessage(), "kept at the content applied before") {
		t.Fatalf("pending message: %s", st.GetMessage())
	}
	stays("r1")
	rollOut("istiod-r2")
	ackOf(v2, "organizations/acme/istioinstallations/r2", "Applied")
	if got := gatewayRevision(); got != "r2" {
		t.Fatalf("after istiod-r2 rolled out the gateway is on %q", got)
	}

	// Uninstall: everything goes, the webhooks with it.
	empty := installBundle()
	srv.next <- empty
	deadline := time.Now().Add(60 * time.Second)
	for {
		l, err := kube.AppsV1().Deployments("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=flotilla"})
		if err == nil && len(l.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the installations' Deployments were not pruned: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
