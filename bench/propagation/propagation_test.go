// Package propagation measures end-to-end propagation on real clusters: from
// an API apply until both local-fleet clusters' agents have compiled the
// change, server-side applied it to their kube-apiserver and acknowledged
// it (status READY). Results are in docs/benchmarks.md.
//
//	make fleet && go test -run '^$' -bench . -benchtime 30x ./bench/propagation/
package propagation

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agent"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/central"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testfleet"
)

// TestMain starts two real clusters, only when benchmarks are asked for:
// `go test ./...` should not pay for a fleet that no test uses.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	testfleet.Main(m, testfleet.Options{Clusters: 2})
}

func res(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	s, _ := structpb.NewStruct(spec)
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
}

func gateway(host string) *pb.Resource {
	return res("IngressGateway", &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t", Workspace: "w", Group: "g"}, map[string]any{
		"workloadSelector": map[string]any{"namespace": "bench", "labels": map[string]any{"istio": "ingressgateway"}},
		"http": []any{map[string]any{"name": "shop", "hostname": host, "port": 80, "routing": map[string]any{"rules": []any{
			map[string]any{"route": map[string]any{"host": "bench/web.bench.svc.cluster.local", "port": 8080}},
		}}}},
	})
}

func BenchmarkPropagationTwoRealClusters(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet := testfleet.Get(b)
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "flotilla.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := resource.Builtin()
	srv := apiserver.New(reg, st, log)
	cp := central.New(reg, st, log)
	srv.Handle(agentv1connect.NewAgentServiceHandler(cp))
	srv.Handle(flotillav1alpha1connect.NewFleetServiceHandler(central.Fleet{Central: cp}))
	go cp.Run(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ctx, ln)
	url := "http://" + ln.Addr().String()
	api := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url)
	fleetAPI := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, url)

	intent := []*pb.Resource{
		res("Organization", &pb.Metadata{Name: "acme"}, nil),
		res("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		res("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/bench"}}}),
		res("Group", &pb.Metadata{Name: "g", Organization: "acme", Tenant: "t", Workspace: "w"}, map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"*/bench"}}}),
	}
	for _, c := range fleet.Clusters() {
		intent = append(intent, res("Cluster", &pb.Metadata{Name: c.Name, Organization: "acme"}, nil))
	}
	if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent})); err != nil {
		b.Fatal(err)
	}
	for _, c := range fleet.Clusters() {
		cfg := c.RESTConfig(b)
		kube := kubernetes.NewForConfigOrDie(cfg)
		kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{})
		kube.CoreV1().Secrets(agent.Namespace).Delete(ctx, "flotilla-agent-credential", metav1.DeleteOptions{})
		tok, err := fleetAPI.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: c.Name, Organization: "acme"}}))
		if err != nil {
			b.Fatal(err)
		}
		tokenFile := filepath.Join(b.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(tok.Msg.GetToken()), 0o600); err != nil {
			b.Fatal(err)
		}
		a, err := agent.New(agent.Config{Server: url, Cluster: c.Name, TokenFile: tokenFile, Kube: cfg, Version: "bench", Log: log})
		if err != nil {
			b.Fatal(err)
		}
		go a.Run(ctx)
	}
	change := func(i int) time.Duration {
		start := time.Now()
		if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{gateway(fmt.Sprintf("h%d.example.com", i))}})); err != nil {
			b.Fatal(err)
		}
		for deadline := start.Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			st, err := fleetAPI.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "IngressGateway", Fqn: "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"}))
			if err == nil && st.Msg.GetAggregate() == central.Ready && len(st.Msg.GetClusters()) == 2 {
				return time.Since(start)
			}
		}
		b.Fatal("change did not reach READY within 60s")
		return 0
	}
	change(-1) // warm up: agents connect, CRDs and informers settle
	lat := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		lat[i] = change(i)
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}
