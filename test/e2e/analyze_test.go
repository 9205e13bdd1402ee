package e2e

import (
	"context"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla.io/flotilla/internal/testfleet/analyze"
)

// analyzeClusters runs Istio's analyzers (what `istioctl analyze -A` runs)
// on each cluster, at the end of a test that published Istio objects: an
// Error or a Warning on an object Flotilla manages fails the test, unless
// it is a known analyzer limitation (internal/testfleet/analyze); every
// other message is logged.
func analyzeClusters(t *testing.T, cs ...*kcluster) {
	t.Helper()
	for _, c := range cs {
		analyze.CheckCluster(t, c.name, c.info.RESTConfig(t))
	}
}

// workload is what a real cluster runs for the intent a test publishes: a
// Service and a Pod it selects, with the istio-proxy container injection
// would give it. The fleet has no nodes for the Pod (it stays Pending); it
// is there for Istio's analyzers, which judge a route by the Service it
// names, and a Gateway, a subset or a namespace's policy by the Pods it
// selects.
type workload struct {
	namespace, name string
	// labels are the Pod's, which the Service selects; app=<name> when nil.
	labels map[string]string
	// ports are the Service's (named http-<port>); with none there is no
	// Service (the test keeps its own).
	ports []int32
}

// quickstartWorkloads are what examples/quickstart.yaml routes to, with
// webPorts for web (the tests change its port): services api (8080) and web
// in payments, and the ingress gateway its Gateway selects (port 80).
func quickstartWorkloads(webPorts ...int32) []workload {
	return []workload{
		{namespace: "payments", name: "api", ports: []int32{8080}},
		{namespace: "payments", name: "web", ports: webPorts},
		{namespace: "payments", name: "ingressgateway", labels: map[string]string{"istio": "ingressgateway"}, ports: []int32{80}},
	}
}

// runWorkloads creates the workloads (replacing a Service or Pod of the same
// name) and deletes them when the test ends.
func (c *kcluster) runWorkloads(t *testing.T, ws ...workload) {
	t.Helper()
	ctx := context.Background()
	for _, w := range ws {
		// The namespace and its default ServiceAccount, which the fleet's
		// API server (no controller manager) does not make itself.
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.namespace}}
		if _, err := c.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("workload %s/%s: %v", w.namespace, w.name, err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
		if _, err := c.kube.CoreV1().ServiceAccounts(w.namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("workload %s/%s: %v", w.namespace, w.name, err)
		}
		labels := w.labels
		if labels == nil {
			labels = map[string]string{"app": w.name}
		}
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: w.namespace}, Spec: corev1.ServiceSpec{Selector: labels}}
		for _, p := range w.ports {
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "http-" + strconv.Itoa(int(p)), Port: p})
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: w.namespace, Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}, {Name: "istio-proxy", Image: "proxyv2"}}}}
		services, pods := c.kube.CoreV1().Services(w.namespace), c.kube.CoreV1().Pods(w.namespace)
		if len(w.ports) > 0 {
			_ = services.Delete(ctx, w.name, metav1.DeleteOptions{})
			if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				t.Fatalf("workload %s/%s: %v", w.namespace, w.name, err)
			}
			t.Cleanup(func() { _ = services.Delete(context.Background(), w.name, metav1.DeleteOptions{}) })
		}
		_ = pods.Delete(ctx, w.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("workload %s/%s: %v", w.namespace, w.name, err)
		}
		t.Cleanup(func() {
			_ = pods.Delete(context.Background(), w.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		})
	}
}
