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
	"k8s.io/client-go/tools/clientcmd"
)

func TestWorkloadsTurnADeploymentIntoRunningPodsWithIPsAndEndpointSlices(t *testing.T) {
	opts := testOptions(t, 1)
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, name)); err != nil {
			t.Fatalf("%v: run `make fleet-workloads` at the repository root first", err)
		}
	}
	opts.Workloads = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	c1 := f.Manifest().Clusters[0]
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok"} {
		if c1.PIDs[name] == 0 {
			t.Errorf("manifest has no pid for %s: %v", name, c1.PIDs)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c1.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

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

	var last error
	for ctx.Err() == nil {
		if last = runningWithEndpoints(ctx, client, 2, c1.Zone); last == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("deployment web never had 2 running pods behind ready endpoints: %v", last)
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
