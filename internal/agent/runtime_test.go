package agent

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/testfleet"
)

// The runtime watch reads a real API server: ready endpoints per locality
// (the zone from the EndpointSlice, the region from the node), external
// addresses, the east-west gateway with its overridden address, and deltas
// that carry the current state of what changed.
func TestRuntimeReportsReadyEndpointsPerLocalityAndTheEastWestGateway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := kubernetes.NewForConfigOrDie(testfleet.Get(t).Cluster(t, "c1").RESTConfig(t))
	const ns = "rt"
	mustCreate := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	mustCreate(err)
	t.Cleanup(func() { _ = kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	for _, n := range []struct{ name, region string }{{"rt-node-a", "region-1"}, {"rt-node-b", "region-2"}} {
		_, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{labelRegion: n.region}}}, metav1.CreateOptions{})
		mustCreate(err)
		t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(context.Background(), n.name, metav1.DeleteOptions{}) })
	}
	_, err = kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}, metav1.CreateOptions{})
	mustCreate(err)
	ep := func(ip, node, zone string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node), Zone: ptr.To(zone), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "reviews-1", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			ep("10.0.0.1", "rt-node-a", "zone-1a", true), ep("10.0.0.2", "rt-node-a", "zone-1a", true),
			ep("10.0.0.3", "rt-node-b", "zone-2a", true), ep("10.0.0.4", "rt-node-b", "zone-2a", false),
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(9080))}},
	}
	slice, err = kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
	mustCreate(err)
	_, err = kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "eastwest", Labels: map[string]string{"istio": "eastwestgateway"},
			Annotations: map[string]string{AnnotationExternalAddress: "127.0.0.42"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}}}}, metav1.CreateOptions{})
	mustCreate(err)

	f := informers.NewSharedInformerFactory(kube, 0)
	w := newRuntimeWatch(f)
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.synced) {
		t.Fatal("informers did not sync")
	}
	r := &runtimeReporter{w: w}
	full := r.fullReport()
	if full.GetSeq() != 1 || !full.GetFull() {
		t.Fatalf("first report: seq %d full %v", full.GetSeq(), full.GetFull())
	}
	var reviews *agentv1.ServiceState
	for _, s := range full.GetServices() {
		if s.GetNamespace() == ns && s.GetName() == "reviews" {
			reviews = s
		}
	}
	want := []*agentv1.LocalityEndpoints{{Region: "region-1", Zone: "zone-1a", Ready: 2}, {Region: "region-2", Zone: "zone-2a", Ready: 1}}
	if diff := cmp.Diff(want, reviews.GetEndpoints(), protocmp.Transform()); diff != "" {
		t.Fatalf("reviews endpoints (-want +got):\n%s", diff)
	}
	for _, s := range full.GetServices() {
		if s.GetNamespace() == ns && s.GetName() == "eastwest" && s.GetExternalAddress() != "127.0.0.42" {
			t.Fatalf("the annotated Service reports external address %q, want 127.0.0.42", s.GetExternalAddress())
		}
	}
	if reviews.GetExternalAddress() != "" {
		t.Fatalf("reviews (a ClusterIP Service) reports external address %q", reviews.GetExternalAddress())
	}
	gw := &agentv1.EastWestGateway{Namespace: ns, Name: "eastwest", Address: "127.0.0.42", Port: 15443}
	if diff := cmp.Diff(gw, full.GetEastWestGateway(), protocmp.Transform()); diff != "" {
		t.Fatalf("east-west gateway (-want +got):\n%s", diff)
	}

	// Scale to zero: the delta carries reviews without endpoints.
	slice.Endpoints = nil
	_, err = kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{})
	mustCreate(err)
	// Deltas until one carries reviews (others may carry other changes).
	var deltas []*agentv1.Runtime
	var scaled *agentv1.ServiceState
	deadline := time.Now().Add(10 * time.Second)
	for scaled == nil && time.Now().Before(deadline) {
		select {
		case <-w.changed:
			d := r.delta()
			if d == nil {
				continue
			}
			if d.GetFull() || d.GetSeq() != uint64(len(deltas))+2 {
				t.Fatalf("delta %d: seq %d full %v", len(deltas)+1, d.GetSeq(), d.GetFull())
			}
			deltas = append(deltas, d)
			for _, s := range d.GetServices() {
				if s.GetNamespace() == ns && s.GetName() == "reviews" {
					scaled = s
				}
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	if scaled == nil {
		t.Fatal("no delta carried reviews after its scale to zero")
	}
	if len(scaled.GetEndpoints()) != 0 {
		t.Fatalf("reviews scaled to zero still has endpoints %v", scaled.GetEndpoints())
	}
	// What the reporter sent hashes as the registry's copy does.
	reg := registry.New()
	if err := reg.Apply("c1", full, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, d := range deltas {
		if err := reg.Apply("c1", d, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.Check("c1", r.digest()); err != nil {
		t.Fatalf("the agent's digest does not match the registry after full + delta: %v", err)
	}
}
