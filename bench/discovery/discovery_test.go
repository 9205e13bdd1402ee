// Package discovery measures fleet service discovery on real clusters: from
// an EndpointSlice change in one local-fleet cluster until the WorkloadEntry
// for that service in the other cluster carries the new weight. The path is
// c2's agent (runtime watch, delta) → central (registry, multicluster slice,
// bundle) → c1's agent (compile, server-side apply). Results are in
// docs/benchmarks.md.
//
// The second benchmark runs the same path across two server replicas on
// PostgreSQL: c2's agent reports to one, c1's agent gets its bundle from the
// other.
//
//	make fleet && go test -run '^$' -bench . -benchtime 50x ./bench/discovery/
package discovery

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
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"flotilla.io/flotilla/bench/internal/harness"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/agent"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testfleet"
)

// TestMain starts two real clusters, only when benchmarks are asked for.
func TestMain(m *testing.M) { harness.FleetMain(m, testfleet.Options{Clusters: 2}) }

var weGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}

// One server on SQLite serves both clusters' agents.
func BenchmarkEndpointSliceToRemoteWorkloadEntry(b *testing.B) {
	st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "flotilla.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	measure(b, harness.Start(b, st))
}

// Two server replicas on one PostgreSQL: c1's agent on one, c2's on the
// other, so each change crosses from replica to replica through the
// stored runtime snapshot.
func BenchmarkEndpointSliceToRemoteWorkloadEntryAcrossReplicas(b *testing.B) {
	url := pgtest.NewDatabase(b)
	var planes []*harness.Plane
	for range 2 {
		st, err := postgres.Open(context.Background(), url)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		planes = append(planes, harness.StartReplica(b, st))
	}
	measure(b, planes...)
}

// measure runs the benchmark with cluster i's agent on servers[i], the
// last server taking the rest.
func measure(b *testing.B, servers ...*harness.Plane) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet := testfleet.Get(b)
	p := servers[0]
	intent := harness.Tenancy("shop")
	intent = append(intent, harness.Resource("WorkspaceSetting", &pb.Metadata{Name: "mc", Organization: "acme", Tenant: "t", Workspace: "w"},
		map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}}))
	for _, c := range fleet.Clusters() {
		intent = append(intent, harness.Resource("Cluster", &pb.Metadata{Name: c.Name, Organization: "acme"}, nil))
	}
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent})); err != nil {
		b.Fatal(err)
	}
	kubes := map[string]kubernetes.Interface{}
	var c1dyn dynamic.Interface
	for i, c := range fleet.Clusters() {
		cfg := c.RESTConfig(b)
		kube := kubernetes.NewForConfigOrDie(cfg)
		kubes[c.Name] = kube
		if i == 0 {
			c1dyn = dynamic.NewForConfigOrDie(cfg)
		}
		kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
		kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-node",
			Labels: map[string]string{"topology.kubernetes.io/region": c.Region}}}, metav1.CreateOptions{})
		kube.CoreV1().Services("istio-system").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "eastwest",
			Labels: map[string]string{"istio": "eastwestgateway"}, Annotations: map[string]string{agent.AnnotationExternalAddress: fmt.Sprintf("127.0.12.%d", i+1)}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}}}}, metav1.CreateOptions{})
		kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}, metav1.CreateOptions{})
		kube.CoreV1().Secrets(agent.Namespace).Delete(ctx, "flotilla-agent-credential", metav1.DeleteOptions{})
		tok, err := p.Fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: c.Name, Organization: "acme"}}))
		if err != nil {
			b.Fatal(err)
		}
		tokenFile := filepath.Join(b.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(tok.Msg.GetToken()), 0o600); err != nil {
			b.Fatal(err)
		}
		a, err := agent.New(agent.Config{Server: servers[min(i, len(servers)-1)].URL, Cluster: c.Name, TokenFile: tokenFile, Kube: cfg, Version: "bench", Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		go a.Run(ctx)
	}
	c2 := fleet.Clusters()[1]
	slices := kubes[c2.Name].DiscoveryV1().EndpointSlices("shop")
	setReady := func(n int) {
		s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "reviews-bench", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
			AddressType: discoveryv1.AddressTypeIPv4}
		for i := range n {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.8.%d", i+1)}, NodeName: ptr.To("bench-node"),
				Zone: ptr.To(c2.Zone), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		cur, err := slices.Get(ctx, s.Name, metav1.GetOptions{})
		if err == nil {
			cur.Endpoints = s.Endpoints
			_, err = slices.Update(ctx, cur, metav1.UpdateOptions{})
		} else {
			_, err = slices.Create(ctx, s, metav1.CreateOptions{})
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	name := "reviews-" + c2.Name
	change := func(i int) time.Duration {
		want := int64(i%50 + 2) // 2…51 ready endpoints, a new weight each time
		if i < 0 {
			want = 1
		}
		w, err := c1dyn.Resource(weGVR).Namespace("shop").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Stop()
		start := time.Now()
		setReady(int(want))
		timeout := time.After(60 * time.Second)
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					b.Fatal("watch ended")
				}
				if ev.Type != watch.Added && ev.Type != watch.Modified {
					continue
				}
				obj, _ := ev.Object.(interface{ UnstructuredContent() map[string]any })
				if obj == nil {
					continue
				}
				spec, _ := obj.UnstructuredContent()["spec"].(map[string]any)
				if weight, _ := spec["weight"].(int64); weight == want {
					return time.Since(start)
				}
			case <-timeout:
				b.Fatalf("the WorkloadEntry in c1 did not reach weight %d within 60s", want)
			}
		}
	}
	harness.Measure(b, change) // the first change waits for the agents to connect and the entry to appear
}
