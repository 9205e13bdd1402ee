package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func TestWorkloadsTurnADeploymentIntoRunningPodsWithIPsAndEndpointSlices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, client := startWorkloads(ctx, t)
	c1 := f.Manifest().Clusters[0]
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok"} {
		if c1.PIDs[name] == 0 {
			t.Errorf("manifest has no pid for %s: %v", name, c1.PIDs)
		}
	}
	createWeb(ctx, t, client)
	waitRunningWithEndpoints(ctx, t, client, c1.Zone)
}

// readyFor is how long TestNodeAndPodsStayReadyPastTheNodeMonitorGracePeriod
// watches. kube-controller-manager marks a node NotReady, and every pod on it
// Ready=False, once neither the node's status nor its Lease has been renewed
// for its node-monitor grace period (50 s, checked every 5 s). kwok posts the
// node's status when it creates the node and then only every 10 minutes; the
// Lease must carry the node in between. The first grace period catches a node
// with no Lease, the second one whose Lease was created but is not renewed;
// the rest is margin for a loaded machine. Nothing shorter shows the
// difference: this is a real wait on kube-controller-manager's clock.
const readyFor = 2*50*time.Second + 5*time.Second + 25*time.Second

func TestNodeAndPodsStayReadyPastTheNodeMonitorGracePeriod(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+readyFor)
	defer cancel()
	f, client := startWorkloads(ctx, t)
	c1 := f.Manifest().Clusters[0]
	node := c1.Name + "-node-1"
	createWeb(ctx, t, client)
	waitRunningWithEndpoints(ctx, t, client, c1.Zone)

	// Fail as soon as anything goes unready, rather than only at the end.
	start := time.Now()
	for time.Since(start) < readyFor {
		if err := nodeAndPodsReady(ctx, client, node, c1.Zone); err != nil {
			t.Fatalf("%s after the pods were ready: %v", time.Since(start).Round(time.Second), err)
		}
		time.Sleep(5 * time.Second)
	}
	if err := nodeAndPodsReady(ctx, client, node, c1.Zone); err != nil {
		t.Fatalf("%s after the pods were ready: %v", time.Since(start).Round(time.Second), err)
	}

	lease, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("lease of node %s: %v", node, err)
	}
	if lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil {
		t.Fatalf("lease of node %s has no renew time or duration: %+v", node, lease.Spec)
	}
	renewed := lease.Spec.RenewTime.Time
	if d := time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second; renewed.Before(start) || time.Since(renewed) > d {
		t.Errorf("lease of node %s last renewed at %s: before the watch began (%s), or more than its duration %s ago",
			node, renewed.Format(time.RFC3339), start.Format(time.RFC3339), d)
	}
}

// nodeAndPodsReady checks that node is Ready and that the web pods are Ready
// behind ready endpoints in zone.
func nodeAndPodsReady(ctx context.Context, client kubernetes.Interface, node, zone string) error {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	var ready *corev1.NodeCondition
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = &n.Status.Conditions[i]
		}
	}
	if ready == nil || ready.Status != corev1.ConditionTrue {
		return fmt.Errorf("node %s is not Ready: %+v", node, ready)
	}
	pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("pod %s is not Ready: %s: %s", p.Name, c.Reason, c.Message)
			}
		}
	}
	// Running pods with IPs, all behind ready endpoints, which only Ready
	// pods get: so a pod without a Ready condition fails here.
	return runningWithEndpoints(ctx, client, 2, zone)
}

// waitRunningWithEndpoints waits until runningWithEndpoints holds for the 2
// replicas of web.
func waitRunningWithEndpoints(ctx context.Context, t *testing.T, client kubernetes.Interface, zone string) {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		if last = runningWithEndpoints(ctx, client, 2, zone); last == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("deployment web never had 2 running pods behind ready endpoints: %v", last)
}

// startWorkloads starts a fleet of one cluster with workloads, stopped when
// the test ends, and returns it with a client of its cluster.
func startWorkloads(ctx context.Context, t *testing.T) (*Fleet, kubernetes.Interface) {
	t.Helper()
	opts := testOptions(t, 1)
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, name)); err != nil {
			t.Fatalf("%v: run `make fleet-workloads` at the repository root first", err)
		}
	}
	opts.Workloads = true
	f, _, client := startFleet(ctx, t, opts)
	return f, client
}

// startFleet starts a fleet with opts, stopped when the test ends, and
// returns it with the administrator's config and a client of its first
// cluster.
func startFleet(ctx context.Context, t *testing.T, opts Options) (*Fleet, *rest.Config, kubernetes.Interface) {
	t.Helper()
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	f, err := Start(startCtx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	cfg, err := clientcmd.BuildConfigFromFlags("", f.Manifest().Clusters[0].Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f, cfg, client
}

// createWeb creates Deployment web with 2 replicas and Service web in
// namespace default.
func createWeb(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	replicas := int32(2)
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "example.invalid/web", Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments("default").Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80}}},
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
}

// runningWithEndpoints checks that service web in default has want Running
// pods with IPs, and that its EndpointSlices list exactly those IPs as ready,
// in zone.
func runningWithEndpoints(ctx context.Context, client kubernetes.Interface, want int, zone string) error {
	pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return err
	}
	ips := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			ips[p.Status.PodIP] = true
		}
	}
	if len(ips) != want {
		return fmt.Errorf("%d running pods with IPs, want %d", len(ips), want)
	}
	slices, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil {
		return err
	}
	ready := 0
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || !*e.Conditions.Ready || len(e.Addresses) == 0 || !ips[e.Addresses[0]] {
				continue
			}
			if e.Zone == nil || *e.Zone != zone {
				return fmt.Errorf("endpoint %s has zone %v, want %s", e.Addresses[0], e.Zone, zone)
			}
			ready++
		}
	}
	if ready != want {
		return fmt.Errorf("%d ready endpoints for the running pods, want %d", ready, want)
	}
	return nil
}
