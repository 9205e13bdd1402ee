package e2e

// The failure matrix of seed 003 as a suite: each test fails one part of the
// system for real (a process killed, a database stopped), asserts the
// seed's promise for running workloads, local cluster operations, other
// clusters and management operations, and measures the recovery. The rows
// are written as a Markdown table (see writeMatrix); docs/failure-matrix.md
// publishes one run.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// matrixRow is one scenario of the failure matrix, as measured.
type matrixRow struct {
	scenario string
	checked  []string // the promises the test asserted
	recovery time.Duration
	how      string // what the recovery time measures
}

var matrix struct {
	sync.Mutex
	rows []matrixRow
}

func record(r matrixRow) {
	matrix.Lock()
	defer matrix.Unlock()
	matrix.rows = append(matrix.rows, r)
}

// writeMatrix writes the rows recorded by this run as a Markdown table to
// $FLOTILLA_FAILURE_MATRIX, or bin/failure-matrix.md at the repository root.
func writeMatrix() error {
	matrix.Lock()
	defer matrix.Unlock()
	if len(matrix.rows) == 0 {
		return nil
	}
	path := os.Getenv("FLOTILLA_FAILURE_MATRIX")
	if path == "" {
		path = filepath.Join(repoRoot, "bin", "failure-matrix.md")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| scenario | asserted | recovery | measured as |\n| --- | --- | --- | --- |\n")
	for _, r := range matrix.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.scenario, strings.Join(r.checked, "; "), r.recovery.Round(10*time.Millisecond), r.how)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "failure matrix written to %s:\n%s", path, b.String())
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// kill ends a process with SIGKILL and waits for it.
func (p *process) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

var revisionLine = regexp.MustCompile(`store revision (\d+)`)

// applyHost applies the quickstart with host and returns the write's revision.
func applyHost(t *testing.T, s *server, host string) int64 {
	t.Helper()
	r := s.flotilla(quickstart(t, host, 8080), "apply", "-f", "-")
	m := revisionLine.FindStringSubmatch(r.stderr)
	if r.code != 0 || m == nil {
		t.Fatalf("apply %s: %+v", host, r)
	}
	rev, _ := strconv.ParseInt(m[1], 10, 64)
	return rev
}

type clusterRow struct {
	Cluster, State, Message string
	Connected               bool
	Revision                string // int64 in protojson is a string
}

// clusterRows reads the quickstart gateway's per-cluster status at revision rev.
func clusterRows(t *testing.T, s *server, rev int64) map[string]clusterRow {
	t.Helper()
	out := s.must("status", "ingressgateway", "shop", "--revision", strconv.FormatInt(rev, 10), "-o", "json")
	var st struct{ Clusters []clusterRow }
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	rows := map[string]clusterRow{}
	for _, r := range st.Clusters {
		rows[r.Cluster] = r
	}
	return rows
}

func TestFailureMatrix(t *testing.T) {
	top := t // processes outlive each row: their cleanup belongs to the whole test
	cs := clusters(t)
	for _, c := range cs {
		c.reset(t, "payments")
		c.runWorkloads(t, quickstartWorkloads(8080)...)
	}
	dir := t.TempDir()
	s := startServer(t, dir)
	applyHost(t, s, "shop0.example.com")
	agents := map[string]*process{}
	agentArgs := map[string][]string{}
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		agentArgs[c.name] = []string{"agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig}
		agents[c.name] = startProcess(t, dir, nil, agentArgs[c.name]...)
	}
	s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "50s")
	c1, c2 := cs[0], cs[1]
	ctx := context.Background()
	hostIn := func(c *kcluster) (string, string) {
		vs, err := c.get(vsGVR, "payments", "shop-shop")
		if err != nil {
			t.Fatalf("%s: the running config is gone: %v", c.name, err)
		}
		return vsHost(vs), vs.GetResourceVersion()
	}
	kubectlWorks := func(c *kcluster, name string) {
		t.Helper()
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "payments"}, Data: map[string]string{"k": "v"}}
		if _, err := c.kube.CoreV1().ConfigMaps("payments").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: local cluster operations fail: %v", c.name, err)
		}
	}

	t.Run("an agent (edge control plane) fails", func(t *testing.T) {
		_, rv := hostIn(c2)
		agents["c2"].kill()
		kubectlWorks(c2, "while-agent-down")
		rev := applyHost(t, s, "shop1.example.com")
		// Other clusters are unaffected: c1 gets the change, c2 has it queued.
		eventually(t, 30*time.Second, "c1 applies the change while c2's agent is down", func() error {
			rows := clusterRows(t, s, rev)
			if rows["c1"].State != "Applied" || rows["c2"].State != "Pending" || rows["c2"].Connected {
				return fmt.Errorf("rows %+v", rows)
			}
			if h, _ := hostIn(c1); h != "shop1.example.com" {
				return fmt.Errorf("c1 has %s", h)
			}
			return nil
		})
		if h, rv2 := hostIn(c2); h != "shop0.example.com" || rv2 != rv {
			t.Fatalf("c2's running config changed while its agent was down: %s (resourceVersion %s, was %s)", h, rv2, rv)
		}
		restarted := time.Now()
		agents["c2"] = startProcess(top, dir, nil, agentArgs["c2"]...)
		s.must("status", "ingressgateway", "shop", "--wait", "--revision", strconv.FormatInt(rev, 10), "--timeout", "50s")
		recovery := time.Since(restarted)
		if h, _ := hostIn(c2); h != "shop1.example.com" {
			t.Fatalf("the queued change did not reach c2: %s", h)
		}
		record(matrixRow{scenario: "edge control plane (agent) of c2 killed",
			checked:  []string{"c2's running config untouched (same resourceVersion)", "kubectl in c2 works", "c1 applies a change meanwhile", "the change is queued for c2 and applied when its agent returns"},
			recovery: recovery, how: "agent restart → the queued change applied in c2 (status READY at its revision)"})
	})

	t.Run("the management plane and central control plane are killed", func(t *testing.T) {
		s.kill9()
		for _, c := range cs {
			if h, _ := hostIn(c); h != "shop1.example.com" {
				t.Fatalf("%s: running config changed when the management plane died: %s", c.name, h)
			}
		}
		kubectlWorks(c1, "while-server-down")
		// Each cluster is an island: a hand deletion of a managed object is
		// repaired from the bundle the agent keeps in its own cluster.
		if err := c1.dyn.Resource(vsGVR).Namespace("payments").Delete(ctx, "shop-shop", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "c1's agent restores the deleted VirtualService with no server", func() error {
			vs, err := c1.get(vsGVR, "payments", "shop-shop")
			if err != nil {
				return err
			}
			if vsHost(vs) != "shop1.example.com" {
				return fmt.Errorf("host %s", vsHost(vs))
			}
			return nil
		})
		// Management operations are refused, clearly.
		if r := s.flotilla(quickstart(t, "refused.example.com", 8080), "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "connection refused") {
			t.Fatalf("apply with the management plane down: %+v", r)
		}
		restarted := time.Now()
		s = s.restart(top)
		rev := applyHost(t, s, "shop2.example.com")
		s.must("status", "ingressgateway", "shop", "--wait", "--revision", strconv.FormatInt(rev, 10), "--timeout", "50s")
		recovery := time.Since(restarted)
		for _, c := range cs {
			if h, _ := hostIn(c); h != "shop2.example.com" {
				t.Fatalf("%s: after recovery: %s", c.name, h)
			}
		}
		record(matrixRow{scenario: "management plane + central control plane killed (kill -9)",
			checked:  []string{"running config untouched in every cluster", "kubectl works", "an agent repairs a hand-deleted object from its stored bundle, with no server", "apply is refused with a clear error", "nothing acknowledged lost"},
			recovery: recovery, how: "server restart → agents reconnected (with their backoff) and a new change applied in every cluster"})
	})

	t.Run("the central control plane restarts gracefully", func(t *testing.T) {
		s.stop()
		restarted := time.Now()
		s = s.restart(top)
		eventually(t, 60*time.Second, "both agents back", func() error {
			if n := connectedAgents(t, s); n != len(cs) {
				return fmt.Errorf("%d agents connected", n)
			}
			return nil
		})
		recovery := time.Since(restarted)
		rev := applyHost(t, s, "shop3.example.com")
		s.must("status", "ingressgateway", "shop", "--wait", "--revision", strconv.FormatInt(rev, 10), "--timeout", "50s")
		record(matrixRow{scenario: "central control plane restarted (SIGTERM)",
			checked:  []string{"agents reconnect on their own", "status restored from the store and the agents' Hello", "a new change applies everywhere"},
			recovery: recovery, how: "server restart → every agent's stream back (the seeds accept 1–2 minutes)"})
	})
	analyzeClusters(t, cs...)
}

func TestFailureMatrixStoreDown(t *testing.T) {
	pg := startPostgres(t)
	cs := clusters(t)
	for _, c := range cs {
		c.reset(t, "payments")
		c.runWorkloads(t, quickstartWorkloads(8080)...)
	}
	dir := t.TempDir()
	s := startServer(t, dir, "--store", pg.URL)
	applyHost(t, s, "store0.example.com")
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "50s")
	ctx := context.Background()

	pg.stop(t)
	for _, c := range cs {
		vs, err := c.get(vsGVR, "payments", "shop-shop")
		if err != nil || vsHost(vs) != "store0.example.com" {
			t.Fatalf("%s: running config changed when the store went down: %v %v", c.name, vsHost(vs), err)
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "while-store-down", Namespace: "payments"}}
		if _, err := c.kube.CoreV1().ConfigMaps("payments").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: kubectl fails with the store down: %v", c.name, err)
		}
	}
	if r := s.flotilla(quickstart(t, "refused.example.com", 8080), "apply", "-f", "-"); r.code == 0 {
		t.Fatalf("apply succeeded with the store down: %+v", r)
	} else if !strings.Contains(r.stderr, "the store is unavailable, so nothing was written") {
		t.Fatalf("apply with the store down does not say why: %+v", r)
	}
	resp, err := s.client.Get(s.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("readyz with the store down: %d", resp.StatusCode)
	}
	if n := connectedAgents(t, s); n != len(cs) {
		t.Fatalf("agents lost their streams when the store went down: %d connected", n)
	}

	restarted := time.Now()
	pg.start(t)
	var rev int64
	eventually(t, 60*time.Second, "apply works again", func() error {
		r := s.flotilla(quickstart(t, "store1.example.com", 8080), "apply", "-f", "-")
		if r.code != 0 {
			return fmt.Errorf("%s", r.stderr)
		}
		m := revisionLine.FindStringSubmatch(r.stderr)
		rev, _ = strconv.ParseInt(m[1], 10, 64)
		return nil
	})
	s.must("status", "ingressgateway", "shop", "--wait", "--revision", strconv.FormatInt(rev, 10), "--timeout", "50s")
	recovery := time.Since(restarted)
	if out := s.must("get", "ingressgateway", "shop", "-o", "yaml"); strings.Contains(out, "refused.example.com") {
		t.Fatalf("the apply refused during the outage was written:\n%s", out)
	}
	for _, c := range cs {
		if vs, err := c.get(vsGVR, "payments", "shop-shop"); err != nil || vsHost(vs) != "store1.example.com" {
			t.Fatalf("%s: after recovery: %v %v", c.name, vsHost(vs), err)
		}
	}
	record(matrixRow{scenario: "store down (PostgreSQL stopped)",
		checked:  []string{"running config untouched", "kubectl works", "agents keep their streams", "apply refused with a clear error and nothing written", "/readyz 503", "a change applies everywhere once the store is back"},
		recovery: recovery, how: "PostgreSQL start → an apply succeeds and is applied in every cluster"})
	analyzeClusters(t, cs...)
}

// freeze stops (SIGSTOP) or continues (SIGCONT) a local-fleet cluster's
// etcd and kube-apiserver: the whole cluster's control plane is down, with
// its data kept, and comes back as it was.
func freeze(t *testing.T, name string, stop bool) {
	t.Helper()
	sig := syscall.SIGCONT
	if stop {
		sig = syscall.SIGSTOP
	}
	for _, c := range fleet.Clusters() {
		if c.Name != name {
			continue
		}
		for _, comp := range []string{"kube-apiserver", "etcd"} {
			if err := syscall.Kill(c.PIDs[comp], sig); err != nil {
				t.Fatalf("signal %s of %s: %v", comp, name, err)
			}
		}
		return
	}
	t.Fatalf("no cluster %s", name)
}

func TestFailureMatrixClusterDownAndLostConnectivity(t *testing.T) {
	cs := clusters(t)
	for _, c := range cs {
		c.reset(t, "payments")
		c.runWorkloads(t, quickstartWorkloads(8080)...)
	}
	c1, c2 := cs[0], cs[1]
	dir := t.TempDir()
	s := startServer(t, dir)
	applyHost(t, s, "net0.example.com")
	// c2's agent reaches the server through a link the test can cut.
	link := newPartition(t, s.addr)
	for _, c := range cs {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		server := s.url
		if c == c2 {
			server = link.url()
		}
		startProcess(t, dir, nil, "agent", "--server", server, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	s.must("status", "ingressgateway", "shop", "--wait", "--timeout", "50s")
	host := func(c *kcluster) string {
		vs, err := c.get(vsGVR, "payments", "shop-shop")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		return vsHost(vs)
	}
	// queuedThenApplied applies a change during the failure, checks that c1
	// gets it and c2 is Pending, then recovers and measures until c2 has it.
	queuedThenApplied := func(t *testing.T, h string, recover func()) time.Duration {
		rev := applyHost(t, s, h)
		eventually(t, 30*time.Second, "c1 applies the change during c2's failure", func() error {
			rows := clusterRows(t, s, rev)
			if rows["c1"].State != "Applied" || rows["c2"].State != "Pending" {
				return fmt.Errorf("rows %+v", rows)
			}
			if got := host(c1); got != h {
				return fmt.Errorf("c1 has %s", got)
			}
			return nil
		})
		start := time.Now()
		recover()
		s.must("status", "ingressgateway", "shop", "--wait", "--revision", strconv.FormatInt(rev, 10), "--timeout", "50s")
		if got := host(c2); got != h {
			t.Fatalf("c2 did not get the queued change: %s", got)
		}
		return time.Since(start)
	}

	t.Run("connectivity between a cluster and the management plane is lost", func(t *testing.T) {
		before := host(c2)
		link.setCut(true)
		eventually(t, 30*time.Second, "the server sees c2 disconnected", func() error {
			if n := connectedAgents(t, s); n != 1 {
				return fmt.Errorf("%d agents connected", n)
			}
			return nil
		})
		recovery := queuedThenApplied(t, "net1.example.com", func() {
			if got := host(c2); got != before {
				t.Fatalf("c2's running config changed while cut off: %s", got)
			}
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "while-cut-off", Namespace: "payments"}}
			if _, err := c2.kube.CoreV1().ConfigMaps("payments").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
				t.Fatalf("kubectl in c2 fails while it is cut off: %v", err)
			}
			link.setCut(false)
		})
		record(matrixRow{scenario: "lost connectivity between c2 and the management plane (its connections cut, new ones refused)",
			checked:  []string{"c2's running config untouched", "kubectl in c2 works", "c1 applies a change meanwhile; c2 Pending", "the change is applied in c2 when the link is back"},
			recovery: recovery, how: "link restored → the queued change applied in c2 (includes the agent's reconnect backoff)"})
	})

	t.Run("a workload cluster fails", func(t *testing.T) {
		freeze(t, c2.name, true)
		frozen := true
		defer func() {
			if frozen {
				freeze(t, c2.name, false)
			}
		}()
		recovery := queuedThenApplied(t, "net2.example.com", func() {
			freeze(t, c2.name, false)
			frozen = false
		})
		record(matrixRow{scenario: "workload cluster c2 down (its etcd and kube-apiserver stopped, then continued)",
			checked:  []string{"c1 applies a change meanwhile; c2 Pending", "the change queued for c2 is applied when the cluster is back"},
			recovery: recovery, how: "cluster back → the queued change applied in c2"})
	})
	analyzeClusters(t, cs...)
}
