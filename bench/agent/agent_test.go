// Package agent measures the agent's footprint as a platform team runs it:
// the flotilla-agent chart installed with the Helm SDK into a local-fleet
// cluster, and the agent run as a child process with exactly the chart's
// Deployment arguments (its token file and health port moved to the
// benchmark's directory) under a TokenRequest token of the chart's
// ServiceAccount, so that everything it does passes its RBAC. The management
// plane is a `flotilla server` child process on SQLite.
//
// One iteration is one cycle on the agent's process, read from /proc/<pid>
// (CPU: utime+stime of stat; memory: VmRSS and VmHWM of status):
//
//	idle       10 s converged on a small intent: CPU as % of one core, RSS
//	apply      one Apply of 1,000 DIRECT VirtualServices → all 1,000 in the
//	           cluster (listed through the admin client): seconds, CPU seconds
//	after      the next 10 s: CPU %, RSS at its end, and the peak RSS since
//	           the apply (VmHWM, reset before it)
//	prune      the group deleted (cascade) → none of the 1,000 left
//
// Results are in docs/benchmarks.md.
//
//	make fleet && go test -run '^$' -bench . -benchtime 3x -timeout 30m ./bench/agent/
//
// With FLOTILLA_BENCH_AGENT_KUBE_QPS=200 the chart is installed with
// kubeQPS 200 (burst 400) instead of its default 50 (burst 100).
package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"flotilla.io/flotilla/bench/internal/harness"
	"flotilla.io/flotilla/deploy/charts"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/testauth"
	"flotilla.io/flotilla/internal/testfleet"
	"flotilla.io/flotilla/internal/testfleet/agentchart"
)

// TestMain starts one real cluster, only when benchmarks are asked for.
func TestMain(m *testing.M) { harness.FleetMain(m, testfleet.Options{Clusters: 1}) }

const (
	objects  = 1000             // VirtualServices of one apply
	window   = 10 * time.Second // an idle sample
	smallNS  = "small"          // the small intent's namespace
	bulkNS   = "bulk"           // the 1,000 objects' namespace
	bulkFQN  = "organizations/acme/tenants/t/workspaces/w/groups/bulk"
	converge = 3 * time.Minute // bound on an apply or a prune reaching the cluster
)

var vsGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

func BenchmarkAgentUnderItsChartsIdentity(b *testing.B) {
	ctx := context.Background()
	c1 := testfleet.Get(b).Cluster(b, "c1")
	admin := c1.RESTConfig(b)
	kc := kubernetes.NewForConfigOrDie(admin)
	meta := metadata.NewForConfigOrDie(admin)
	// The namespaces intent selects exist: the agent may not create them.
	for _, ns := range []string{smallNS, bulkNS} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}

	dir := b.TempDir()
	srv := harness.StartServer(b, dir)
	api := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, srv.URL, testauth.Bearer(srv.Token))
	fleet := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, srv.URL, testauth.Bearer(srv.Token))
	if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: smallIntent()})); err != nil {
		b.Fatalf("apply the small intent: %v", err)
	}

	// What `flotilla cluster onboard c1 -o helm-values | helm install` does.
	tok, err := fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: c1.Name, Organization: "acme"}}))
	if err != nil {
		b.Fatalf("onboard %s: %v", c1.Name, err)
	}
	values := charts.AgentValues(c1.Name, srv.URL, "", tok.Msg.GetToken())
	// FLOTILLA_BENCH_AGENT_KUBE_QPS installs the chart with another kubeQPS
	// (and a burst of twice that); the agent's arguments still come from
	// the chart. Unset, the chart's defaults hold.
	if v := os.Getenv("FLOTILLA_BENCH_AGENT_KUBE_QPS"); v != "" {
		qps, err := strconv.Atoi(v)
		if err != nil || qps < 1 {
			b.Fatalf("FLOTILLA_BENCH_AGENT_KUBE_QPS=%q: want a whole number of requests per second, e.g. 200", v)
		}
		values["kubeQPS"], values["kubeBurst"] = qps, 2*qps
	}
	// The agent runs as the chart's pod would (agentchart.PodOf): its
	// arguments, its join token, its ServiceAccount's token.
	agentchart.Install(b, c1.Kubeconfig, values)
	agent := harness.StartProcess(b, filepath.Join(dir, "agent.log"), agentchart.PodOf(b, admin, dir).Args...)

	count := func() int {
		l, err := meta.Resource(vsGVR).Namespace(bulkNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatalf("list VirtualServices in %s: %v", bulkNS, err)
		}
		return len(l.Items)
	}
	// waitFor polls the cluster every 200 ms until it holds want of the
	// 1,000 objects; it returns when it saw them.
	waitFor := func(want int, what string) time.Time {
		for deadline := time.Now().Add(converge); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if count() == want {
				return time.Now()
			}
			agent.Alive()
		}
		b.Fatalf("%s: not within %s (%d VirtualServices in %s)\nagent log:\n%s", what, converge, count(), bulkNS, agent.LogTail())
		return time.Time{}
	}
	for deadline := time.Now().Add(converge); ; time.Sleep(200 * time.Millisecond) {
		if _, err := meta.Resource(vsGVR).Namespace(smallNS).Get(ctx, "small", metav1.GetOptions{}); err == nil {
			break
		}
		agent.Alive()
		if time.Now().After(deadline) {
			b.Fatalf("the small intent did not reach %s within %s\nagent log:\n%s", c1.Name, converge, agent.LogTail())
		}
	}

	var sum struct{ idleCPU, idleRSS, apply, applyCPU, peak, afterCPU, afterRSS, prune float64 }
	n := 0
	for b.Loop() {
		idleCPU, idleRSS := agent.Idle(window)

		agent.ResetPeak()
		cpu0, start := agent.CPU(), time.Now()
		if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: bulkIntent(n)})); err != nil {
			b.Fatalf("apply %d VirtualServices: %v", objects, err)
		}
		done := waitFor(objects, fmt.Sprintf("%d VirtualServices applied", objects))
		apply, applyCPU := done.Sub(start).Seconds(), agent.CPU()-cpu0

		afterCPU, afterRSS := agent.Idle(window)
		_, peak := agent.Mem()

		start = time.Now()
		if _, err := api.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "Group", Fqn: bulkFQN, Cascade: true})); err != nil {
			b.Fatalf("delete group bulk: %v", err)
		}
		prune := waitFor(0, fmt.Sprintf("%d VirtualServices pruned", objects)).Sub(start).Seconds()

		b.Logf("sample %d: idle %.2f %% CPU, %.1f MiB; apply %.2f s, %.2f CPU-s, peak %.1f MiB; after %.2f %% CPU, %.1f MiB; prune %.2f s",
			n, idleCPU, idleRSS, apply, applyCPU, peak, afterCPU, afterRSS, prune)
		n++
		sum.idleCPU += idleCPU
		sum.idleRSS += idleRSS
		sum.apply += apply
		sum.applyCPU += applyCPU
		sum.peak += peak
		sum.afterCPU += afterCPU
		sum.afterRSS += afterRSS
		sum.prune += prune
	}
	mean := func(v float64) float64 { return v / float64(n) }
	b.ReportMetric(mean(sum.idleCPU), "idle-cpu-%")
	b.ReportMetric(mean(sum.idleRSS), "idle-rss-MiB")
	b.ReportMetric(mean(sum.apply), "apply1000-s")
	b.ReportMetric(mean(sum.applyCPU), "apply1000-cpu-s")
	b.ReportMetric(mean(sum.peak), "peak-rss-MiB")
	b.ReportMetric(mean(sum.afterCPU), "after-cpu-%")
	b.ReportMetric(mean(sum.afterRSS), "after-rss-MiB")
	b.ReportMetric(mean(sum.prune), "prune1000-s")
	b.ReportMetric(0, "ns/op") // an iteration is a cycle of about a minute: its ns/op means nothing
}

// res is harness.Resource with an API version of its own: DIRECT objects
// are Istio's.
func res(apiVersion, kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	r := harness.Resource(kind, md, spec)
	r.ApiVersion = apiVersion
	return r
}

// smallIntent is organization acme with tenant t and workspace w (namespaces
// small and bulk everywhere), cluster c1, and one VirtualService in the
// DIRECT group small.
func smallIntent() []*pb.Resource {
	const fv = "flotilla.io/v1alpha1"
	return []*pb.Resource{
		res(fv, "Organization", &pb.Metadata{Name: "acme"}, nil),
		res(fv, "Cluster", &pb.Metadata{Name: "c1", Organization: "acme"}, nil),
		res(fv, "Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		res(fv, "Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + smallNS, "*/" + bulkNS}}}),
		directGroup("small", smallNS),
		virtualService(&pb.Metadata{Name: "small", Namespace: smallNS, Organization: "acme", Tenant: "t", Workspace: "w", Group: "small"}, "small.example.com"),
	}
}

// bulkIntent is the DIRECT group bulk with 1,000 VirtualServices, whose
// hosts name iteration i.
func bulkIntent(i int) []*pb.Resource {
	out := []*pb.Resource{directGroup("bulk", bulkNS)}
	for j := range objects {
		md := &pb.Metadata{Name: fmt.Sprintf("vs%04d", j), Namespace: bulkNS, Organization: "acme", Tenant: "t", Workspace: "w", Group: "bulk"}
		out = append(out, virtualService(md, fmt.Sprintf("h%04d.i%d.example.com", j, i)))
	}
	return out
}

func directGroup(name, ns string) *pb.Resource {
	return res("flotilla.io/v1alpha1", "Group", &pb.Metadata{Name: name, Organization: "acme", Tenant: "t", Workspace: "w"},
		map[string]any{"type": "traffic", "configMode": "DIRECT", "namespaceSelector": map[string]any{"names": []any{"*/" + ns}}})
}

func virtualService(md *pb.Metadata, host string) *pb.Resource {
	return res("networking.istio.io/v1", "VirtualService", md, map[string]any{
		"hosts": []any{host},
		"http":  []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web." + md.Namespace + ".svc.cluster.local"}}}}},
	})
}
