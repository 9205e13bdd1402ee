package main

import (
	"context"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla.io/flotilla/tools/localfleet/internal/fleet"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// The commands as a user runs them: `up --clusters 2 --istio` returns with
// every cluster's istiod ready and described in fleet.json; `down` leaves no
// process behind.
func TestUpWithIstioThenDownLeavesNoProcess(t *testing.T) {
	bin := binDir(t, "make fleet-istio", "localfleet", "etcd", "kube-apiserver", "istio-crds.yaml", "istiod")
	lf := filepath.Join(bin, "localfleet")
	dir, out, down := upFleet(t, lf, "--clusters", "2", "--istio")
	m, err := fleet.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[int]string{m.SupervisorPID: "localfleet"}
	if len(m.Clusters) != 2 {
		t.Fatalf("fleet.json describes %d clusters, want 2", len(m.Clusters))
	}
	for _, c := range m.Clusters {
		for name, pid := range c.PIDs {
			pids[pid] = name
		}
		if c.Istiod == nil || c.PIDs["istiod"] == 0 {
			t.Fatalf("%s: no istiod in fleet.json: %+v", c.Name, c)
		}
		if !strings.Contains(string(out), c.Istiod.GRPC) {
			t.Errorf("up's output does not say where %s's istiod serves xDS (%s):\n%s", c.Name, c.Istiod.GRPC, out)
		}
		for _, addr := range []string{c.Istiod.HTTP, c.Istiod.GRPC, c.Istiod.Monitoring} {
			if !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("%s: istiod listens on %s, not loopback", c.Name, addr)
			}
		}
		for _, path := range []string{"/ready", "/debug/registryz"} {
			resp, err := http.Get("http://" + c.Istiod.HTTP + path)
			if err != nil {
				t.Fatalf("%s: istiod %s: %v", c.Name, path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: istiod %s: %s", c.Name, path, resp.Status)
			}
		}
		if c.Network == "" {
			t.Errorf("%s: no network", c.Name)
		}
	}
	if m.Clusters[0].Network == m.Clusters[1].Network {
		t.Errorf("both clusters are on network %s", m.Clusters[0].Network)
	}
	down()
	if alive := proc.WaitGone(pids, 5*time.Second); len(alive) > 0 {
		t.Fatalf("processes %v outlived down", alive)
	}
}

// `stop --cluster c1` crashes c1 alone; `start --cluster c1` brings it back on
// the same address, certificates and data. With --workloads and --istio every
// kind of component goes down and comes back.
func TestStopCrashesOneClusterAndStartBringsItBackWithItsData(t *testing.T) {
	bin := binDir(t, "make fleet-workloads fleet-istio", "localfleet", "etcd", "kube-apiserver", "istio-crds.yaml",
		"kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml", "istiod")
	lf := filepath.Join(bin, "localfleet")
	dir, _, down := upFleet(t, lf, "--clusters", "2", "--workloads", "--istio")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	before := readManifest(t, dir)
	c1, c2 := before.Clusters[0], before.Clusters[1]
	// Built before the stop: after the start, the same address, CA and token
	// must serve it.
	client1, client2 := clientFor(t, c1.Kubeconfig), clientFor(t, c2.Kubeconfig)
	kept := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kept"}, Data: map[string]string{"written": "before the stop"}}
	if _, err := client1.CoreV1().ConfigMaps("default").Create(ctx, kept, metav1.CreateOptions{}); err != nil {
		t.Fatalf("c1: create configmap: %v", err)
	}
	node := c1.Name + "-node-1"
	lease, err := client1.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("c1: lease of %s: %v", node, err)
	}

	localfleet(t, lf, "stop", "--dir", dir, "--cluster", "c1")
	stopped := readManifest(t, dir)
	if s1 := stopped.Clusters[0]; !s1.Stopped || len(s1.PIDs) != 0 {
		t.Errorf("fleet.json after stop: c1 stopped %v with pids %v, want stopped with none", s1.Stopped, s1.PIDs)
	}
	if s2 := stopped.Clusters[1]; s2.Stopped || !reflect.DeepEqual(s2.PIDs, c2.PIDs) {
		t.Errorf("fleet.json after stopping c1: c2 stopped %v with pids %v, want running with %v", s2.Stopped, s2.PIDs, c2.PIDs)
	}
	if alive := proc.WaitGone(names(c1.PIDs), 5*time.Second); len(alive) > 0 {
		t.Errorf("c1's processes %v outlived stop", alive)
	}
	if !proc.Alive(before.SupervisorPID, "localfleet") {
		t.Fatal("the supervisor exited when c1 was stopped")
	}
	if _, err := client1.CoreV1().ConfigMaps("default").Get(ctx, "kept", metav1.GetOptions{}); err == nil {
		t.Error("c1 still answers after stop")
	}
	if _, err := client2.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Errorf("c2 does not answer while c1 is stopped: %v", err)
	}
	if out, err := exec.Command(lf, "stop", "--dir", dir, "--cluster", "c1").CombinedOutput(); err == nil || !strings.Contains(string(out), "already stopped") {
		t.Errorf("second stop of c1: %v\n%s\nwant a failure saying it is already stopped", err, out)
	}

	localfleet(t, lf, "start", "--dir", dir, "--cluster", "c1")
	after := readManifest(t, dir)
	a1 := after.Clusters[0]
	if a1.Stopped || a1.Server != c1.Server || !reflect.DeepEqual(a1.Istiod, c1.Istiod) {
		t.Errorf("fleet.json after start: c1 stopped %v at %s with istiod %+v, want running at %s with istiod %+v",
			a1.Stopped, a1.Server, a1.Istiod, c1.Server, c1.Istiod)
	}
	for name, pid := range c1.PIDs {
		if a1.PIDs[name] == 0 || a1.PIDs[name] == pid {
			t.Errorf("c1's %s has pid %d after start, %d before: want a new process", name, a1.PIDs[name], pid)
		}
	}
	got, err := client1.CoreV1().ConfigMaps("default").Get(ctx, "kept", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("c1 after start: configmap created before the stop: %v", err)
	}
	if !reflect.DeepEqual(got.Data, kept.Data) {
		t.Errorf("c1 after start: configmap data %v, want %v", got.Data, kept.Data)
	}
	relet, err := client1.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("c1 after start: lease of %s: %v", node, err)
	}
	if holder := relet.Spec.HolderIdentity; holder == nil || *holder == *lease.Spec.HolderIdentity {
		t.Errorf("c1 after start: lease of %s held by %v, want the new kwok rather than %s", node, holder, *lease.Spec.HolderIdentity)
	}
	resp, err := http.Get("http://" + a1.Istiod.HTTP + "/ready")
	if err != nil {
		t.Fatalf("c1 after start: istiod /ready: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("c1 after start: istiod /ready: %s", resp.Status)
	}

	pids := names(c1.PIDs)
	for _, c := range after.Clusters {
		maps.Copy(pids, names(c.PIDs))
	}
	down()
	if alive := proc.WaitGone(pids, 5*time.Second); len(alive) > 0 {
		t.Fatalf("processes %v outlived down", alive)
	}
}

// upFleet runs `localfleet up` with args and --dir in a new directory, and
// returns that directory, up's output, and a down that runs `localfleet down`
// once; it also runs when the test ends.
func upFleet(t *testing.T, lf string, args ...string) (dir, out string, down func()) {
	t.Helper()
	dir = t.TempDir()
	b, err := exec.Command(lf, append([]string{"up", "--dir", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("up: %v\n%s", err, b)
	}
	var once sync.Once
	down = func() {
		once.Do(func() {
			if b, err := exec.Command(lf, "down", "--dir", dir).CombinedOutput(); err != nil {
				t.Errorf("down: %v\n%s", err, b)
			}
		})
	}
	t.Cleanup(down)
	return dir, string(b), down
}

// binDir returns the repository's bin/, failing t with the make target to
// run when one of the files is missing.
func binDir(t *testing.T, target string, files ...string) string {
	t.Helper()
	bin, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			t.Fatalf("%v: run `%s` at the repository root first", err, target)
		}
	}
	return bin
}

// localfleet runs the localfleet executable lf with args, failing t if it fails.
func localfleet(t *testing.T, lf string, args ...string) {
	t.Helper()
	if out, err := exec.Command(lf, args...).CombinedOutput(); err != nil {
		t.Fatalf("localfleet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func readManifest(t *testing.T, dir string) fleet.Manifest {
	t.Helper()
	m, err := fleet.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Clusters) != 2 {
		t.Fatalf("fleet.json describes %d clusters, want 2", len(m.Clusters))
	}
	return m
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// names turns component pids into what proc.WaitGone takes.
func names(pids map[string]int) map[int]string {
	m := make(map[int]string, len(pids))
	for name, pid := range pids {
		m[pid] = name
	}
	return m
}
