// Package propagation measures end-to-end propagation on real clusters: from
// an API apply until both local-fleet clusters' agents have compiled the
// change, server-side applied it to their kube-apiserver and acknowledged
// it (status READY). Results are in docs/benchmarks.md.
//
//	make fleet && go test -run '^$' -bench . -benchtime 50x ./bench/propagation/
package propagation

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.io/flotilla/bench/internal/harness"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/agent"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testfleet"
)

// TestMain starts two real clusters, only when benchmarks are asked for.
func TestMain(m *testing.M) { harness.FleetMain(m, testfleet.Options{Clusters: 2}) }

func BenchmarkPropagationTwoRealClusters(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet := testfleet.Get(b)
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "flotilla.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	p := harness.Start(b, st)
	log := slog.New(slog.DiscardHandler)
	intent := harness.Tenancy("bench")
	for _, c := range fleet.Clusters() {
		intent = append(intent, harness.Resource("Cluster", &pb.Metadata{Name: c.Name, Organization: "acme"}, nil))
	}
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent})); err != nil {
		b.Fatal(err)
	}
	for _, c := range fleet.Clusters() {
		cfg := c.RESTConfig(b)
		kube := kubernetes.NewForConfigOrDie(cfg)
		kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{})
		kube.CoreV1().Secrets(agent.Namespace).Delete(ctx, "flotilla-agent-credential", metav1.DeleteOptions{})
		tok, err := p.Fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: c.Name, Organization: "acme"}}))
		if err != nil {
			b.Fatal(err)
		}
		tokenFile := filepath.Join(b.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(tok.Msg.GetToken()), 0o600); err != nil {
			b.Fatal(err)
		}
		a, err := agent.New(agent.Config{Server: p.URL, Cluster: c.Name, TokenFile: tokenFile, Kube: cfg, Version: "bench", Log: log})
		if err != nil {
			b.Fatal(err)
		}
		go a.Run(ctx)
	}
	change := func(i int) time.Duration {
		start := time.Now()
		res, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{harness.Gateway(fmt.Sprintf("h%d.example.com", i), "bench")}}))
		if err != nil {
			b.Fatal(err)
		}
		// READY at the write's revision: both clusters applied this change
		// (status is tied to revisions, so it cannot be the previous one's).
		for deadline := start.Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			st, err := p.Fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: harness.GatewayFQN, MinRevision: res.Msg.GetRevision()}))
			if err == nil && st.Msg.GetAggregate() == fleetapi.Ready && len(st.Msg.GetClusters()) == 2 {
				return time.Since(start)
			}
		}
		b.Fatal("change did not reach READY within 60s")
		return 0
	}
	harness.Measure(b, change) // the first change warms up: agents connect, informers settle
}
