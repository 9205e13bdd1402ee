package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla.io/flotilla/tools/localfleet/internal/cluster"
	"flotilla.io/flotilla/tools/localfleet/internal/istio"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// canaryDiscovery is the discovery address that the mesh config of revision
// canary gives proxies, as Istio's chart renders it; Istio's default is
// istiod.istio-system.svc:15012. An istiod that shows it read ConfigMap
// istio-canary, so it runs as revision canary.
const canaryDiscovery = "istiod-canary.istio-system.svc:15012"

// A bare cluster, once Flotilla's agent has installed Istio's CRDs and an
// istiod of revision canary (its Deployment and its mesh ConfigMap), runs a
// real istiod for it, described in fleet.json; a change of the Deployment's
// environment restarts it on the same ports, so do a stop and a start of the
// cluster, and deleting the Deployment stops it.
func TestAnIstiodDeploymentInABareClusterRunsARealIstiodUntilItIsDeleted(t *testing.T) {
	opts := testOptions(t, 1)
	if _, err := os.Stat(filepath.Join(opts.BinDir, cluster.Istiod)); err != nil {
		t.Fatalf("%v: run `make fleet-istio` at the repository root first", err)
	}
	opts.Bare, opts.RunIstiods = 1, true
	opts.Log = slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, cfg, client := startFleet(ctx, t, opts)
	c1 := f.Manifest().Clusters[0]

	// What the agent does in a bare cluster: Istio's CRDs and istio-system
	// first, then the istiod chart's mesh ConfigMap and Deployment.
	crds, err := istio.LoadCRDs(opts.CRDs)
	if err != nil {
		t.Fatal(err)
	}
	if err := istio.Install(ctx, cfg, crds, map[string]string{LabelNetwork: c1.Network}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps(istio.Namespace).Create(ctx, canaryMesh(), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create mesh configmap: %v", err)
	}
	deploy, err := client.AppsV1().Deployments(istio.Namespace).Create(ctx, canaryIstiod(c1.Name), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment: %v", err)
	}

	first := waitIstiod(ctx, t, opts.Dir, "canary", func(cluster.DeployedIstiod) bool { return true })
	if first.Deployment != "istiod-canary" || !proc.Alive(first.PID, cluster.Istiod) {
		t.Errorf("fleet.json has istiod %+v for revision canary, want one of deployment istiod-canary with a live pid", first)
	}
	for _, addr := range []string{first.HTTP, first.GRPC, first.Monitoring} {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("istiod of revision canary listens on %s, not loopback", addr)
		}
	}
	get(t, first.HTTP, "/ready")
	if mesh := get(t, first.HTTP, "/debug/mesh"); !strings.Contains(mesh, canaryDiscovery) {
		t.Errorf("istiod's mesh config does not hold ConfigMap istio-canary's discovery address %s:\n%s", canaryDiscovery, mesh)
	}
	conn, err := net.DialTimeout("tcp", first.GRPC, 5*time.Second)
	if err != nil {
		t.Fatalf("istiod's xDS port: %v", err)
	}
	conn.Close()

	// A new environment is a new istiod, on the same ports. (The update
	// reads the Deployment again on a conflict: the supervisor writes its
	// status.)
	updateDeployment(ctx, t, client.AppsV1().Deployments(istio.Namespace), func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.Containers[0].Env = append(d.Spec.Template.Spec.Containers[0].Env,
			corev1.EnvVar{Name: "PILOT_PUSH_THROTTLE", Value: "50"})
	})
	changed := waitIstiod(ctx, t, opts.Dir, "canary", func(d cluster.DeployedIstiod) bool { return d.PID != first.PID })
	if changed.IstiodAddrs != first.IstiodAddrs || proc.Alive(first.PID, cluster.Istiod) {
		t.Errorf("after the change, istiod %+v (first pid alive: %v), want a new process on %+v with the first gone",
			changed, proc.Alive(first.PID, cluster.Istiod), first.IstiodAddrs)
	}

	// A stop of the cluster kills it; a start brings it back, on its ports.
	if err := f.StopCluster(c1.Name); err != nil {
		t.Fatal(err)
	}
	if m, _ := ReadManifest(opts.Dir); m.Clusters[0].Istiods != nil || proc.Alive(changed.PID, cluster.Istiod) {
		t.Errorf("after stop, fleet.json lists istiods %+v and pid %d alive %v, want none", m.Clusters[0].Istiods, changed.PID, proc.Alive(changed.PID, cluster.Istiod))
	}
	if err := f.StartCluster(ctx, c1.Name); err != nil {
		t.Fatal(err)
	}
	back := waitIstiod(ctx, t, opts.Dir, "canary", func(cluster.DeployedIstiod) bool { return true })
	if back.IstiodAddrs != first.IstiodAddrs || back.PID == changed.PID {
		t.Errorf("after start, istiod %+v, want a new process on %+v", back, first.IstiodAddrs)
	}
	get(t, back.HTTP, "/ready")

	// Deleting the Deployment stops its istiod.
	if err := client.AppsV1().Deployments(istio.Namespace).Delete(ctx, deploy.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete deployment: %v", err)
	}
	waitGone(ctx, t, opts.Dir, back)
}

// waitIstiod waits until fleet.json lists an istiod for revision rev that
// satisfies ok, and returns it.
func waitIstiod(ctx context.Context, t *testing.T, dir, rev string, ok func(cluster.DeployedIstiod) bool) cluster.DeployedIstiod {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last Manifest
	for ctx.Err() == nil {
		m, err := ReadManifest(dir)
		if err == nil {
			last = m
			if d, found := m.Clusters[0].Istiods[rev]; found && ok(d) {
				return d
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("fleet.json never listed the istiod wanted for revision %s; last: %+v", rev, last.Clusters)
	return cluster.DeployedIstiod{}
}

// waitGone waits until fleet.json lists no istiod of any revision, d's
// process has exited and its ports are closed.
func waitGone(ctx context.Context, t *testing.T, dir string, d cluster.DeployedIstiod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		if last = gone(dir, d); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("istiod of deployment %s not gone: %v", d.Deployment, last)
}

func gone(dir string, d cluster.DeployedIstiod) error {
	m, err := ReadManifest(dir)
	if err != nil {
		return err
	}
	if len(m.Clusters[0].Istiods) > 0 {
		return fmt.Errorf("fleet.json lists %+v", m.Clusters[0].Istiods)
	}
	if proc.Alive(d.PID, cluster.Istiod) {
		return fmt.Errorf("pid %d is alive", d.PID)
	}
	for _, addr := range []string{d.HTTP, d.GRPC, d.Monitoring} {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			return fmt.Errorf("%s still accepts connections", addr)
		}
	}
	return nil
}

// get returns the body of GET http://addr/path, failing t unless it is 200.
func get(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("istiod %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("istiod %s: %s %v\n%s", path, resp.Status, err, body)
	}
	return string(body)
}

// canaryMesh is the mesh ConfigMap of revision canary as Istio's istiod chart
// renders it, reduced to its defaults.
func canaryMesh() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-canary", Namespace: istio.Namespace, Labels: map[string]string{"istio.io/rev": "canary"}},
		Data: map[string]string{
			"mesh": "defaultConfig:\n  discoveryAddress: " + canaryDiscovery + "\n" +
				"defaultProviders:\n  metrics:\n  - prometheus\n" +
				"enablePrometheusMerge: true\nrootNamespace: istio-system\ntrustDomain: cluster.local\n",
			"meshNetworks": "networks: {}\n",
		},
	}
}

// canaryIstiod is the Deployment of revision canary as Istio's istiod chart
// renders it for cluster name, reduced to what matters here: its labels, its
// container's arguments and environment.
func canaryIstiod(name string) *appsv1.Deployment {
	labels := map[string]string{"app": "istiod", "istio.io/rev": "canary", "istio": "istiod"}
	field := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod-canary", Namespace: istio.Namespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "istiod", "istio.io/rev": "canary"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "istiod-canary",
					Containers: []corev1.Container{{
						Name:  "discovery",
						Image: "docker.io/istio/pilot:1.31.1",
						Args: []string{"discovery", "--monitoringAddr=:15014", "--log_output_level=default:info",
							"--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m"},
						Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 15010}, {ContainerPort: 15012}, {ContainerPort: 15014}, {ContainerPort: 15017}},
						Env: []corev1.EnvVar{
							{Name: "REVISION", Value: "canary"},
							{Name: "PILOT_CERT_PROVIDER", Value: "istiod"},
							{Name: "POD_NAME", ValueFrom: field("metadata.name")},
							{Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
							{Name: "SERVICE_ACCOUNT", ValueFrom: field("spec.serviceAccountName")},
							{Name: "KUBECONFIG", Value: "/var/run/secrets/remote/config"},
							{Name: "CA_TRUSTED_NODE_ACCOUNTS", Value: "istio-system/ztunnel"},
							{Name: "PILOT_ENABLE_ANALYSIS", Value: "false"},
							{Name: "CLUSTER_ID", Value: name},
							{Name: "GOMAXPROCS", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
							{Name: "PLATFORM", Value: ""},
						},
					}},
				},
			},
		},
	}
}
