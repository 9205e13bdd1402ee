// Package testfleet gives tests real Kubernetes API servers: a local fleet of
// clusters (etcd and kube-apiserver on loopback, Istio's CRDs installed),
// started once per test package by bin/localfleet and stopped after it.
//
// Use it from TestMain and fetch clusters in tests:
//
//	func TestMain(m *testing.M) { testfleet.Main(m, testfleet.Options{Clusters: 2}) }
//
//	func TestSomething(t *testing.T) {
//		cfg := testfleet.Get(t).Cluster(t, "c1").RESTConfig(t)
//		...
//	}
//
// The binaries come from `make fleet`, found in the bin/ directory at the
// root of the flotilla.io/flotilla module, or in $FLOTILLA_BIN_DIR.
//
// The fleet cannot outlive the test binary: bin/localfleet runs in the
// foreground with its stdin connected to a pipe that only the test binary
// holds open, and with SIGTERM as its parent-death signal, so it stops its
// clusters as soon as the test binary exits, however it exits; its own
// children have SIGKILL as parent-death signal.
package testfleet

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// BinDirEnv names the environment variable that overrides the directory
// holding localfleet, etcd, kube-apiserver and istio-crds.yaml.
const BinDirEnv = "FLOTILLA_BIN_DIR"

// makeTarget and makeWorkloadsTarget build the binaries, without and with
// Options.Workloads.
const (
	makeTarget          = "make fleet"
	makeWorkloadsTarget = "make fleet-workloads"
	makeIstioTarget     = "make fleet-istio"
)

// startTimeout bounds how long Start waits for the fleet to be ready.
const startTimeout = 2 * time.Minute

// Options configure Start.
type Options struct {
	// Clusters is the number of clusters, named c1 … cN. Zero means one.
	Clusters int
	// Workloads adds kube-controller-manager, kube-scheduler and kwok with
	// one simulated node per cluster, so that Deployments get Running pods
	// with IPs and Services get EndpointSlices. It needs `make
	// fleet-workloads` and about 250 MB more per cluster.
	Workloads bool
	// Istio adds an istiod per cluster, against the cluster's API server;
	// Cluster.Istiod says where. It needs `make fleet-istio` and about 150
	// MB more per cluster.
	Istio bool
	// Bare is how many clusters, the last ones, start bare: without Istio's
	// CRDs, the istio-system namespace and istiod, as a cluster that
	// Flotilla installs Istio into (IstioInstallation) starts.
	Bare int
	// RunIstiods runs a real istiod for each istiod Deployment that appears
	// in a cluster (localfleet --run-istiods); Fleet.Istiods says where
	// they listen. It needs `make fleet-istio`.
	RunIstiods bool
}

// Fleet is a running local fleet. Stop must be called to end it.
type Fleet struct {
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	stdin    *os.File      // its other end is localfleet's stdin; closing it stops the fleet
	manifest manifest
}

// Cluster describes one cluster of the fleet.
type Cluster struct {
	Name string
	// Server is the API server URL, https://127.0.0.1:port.
	Server string
	// Kubeconfig is the path of an administrator kubeconfig that verifies
	// the server's certificate.
	Kubeconfig string
	// Region and Zone are the cluster's topology, also set as the
	// topology.kubernetes.io/region and /zone labels of namespace istio-system.
	Region, Zone string
	// Network is the cluster's Istio network, also the
	// topology.istio.io/network label of namespace istio-system.
	Network string
	// PIDs maps component name ("etcd", "kube-apiserver", with Workloads
	// "kube-controller-manager", "kube-scheduler", "kwok", and with Istio
	// "istiod") to process id.
	PIDs map[string]int
	// Istiod is where the cluster's istiod listens; nil without Istio.
	Istiod *Istiod
	// Bare is true for a cluster started without Istio (Options.Bare).
	Bare bool
}

// Istiod is where a cluster's istiod listens, all on loopback.
type Istiod struct {
	// HTTP serves /ready and the debug endpoints (/debug/configz, …).
	HTTP string `json:"http"`
	// GRPC serves plain-text xDS: what package xdsprobe connects to.
	GRPC string `json:"grpc"`
	// Monitoring serves Prometheus metrics at /metrics.
	Monitoring string `json:"monitoring"`
}

// manifest mirrors DIR/fleet.json as written by bin/localfleet
// (tools/localfleet/internal/fleet.Manifest).
type manifest struct {
	SupervisorPID int `json:"supervisorPid"`
	Clusters      []struct {
		Name       string         `json:"name"`
		Server     string         `json:"server"`
		Kubeconfig string         `json:"kubeconfig"`
		Region     string         `json:"region"`
		Zone       string         `json:"zone"`
		Network    string         `json:"network"`
		PIDs       map[string]int `json:"pids"`
		Istiod     *Istiod        `json:"istiod"`
		Bare       bool           `json:"bare"`
	} `json:"clusters"`
}

// Start starts a fleet in a new temporary directory and returns once every
// cluster is ready. It fails with a message naming the make target when the
// binaries have not been built.
func Start(opts Options) (*Fleet, error) {
	if opts.Clusters == 0 {
		opts.Clusters = 1
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	need, target := []string{"localfleet", "etcd", "kube-apiserver", "istio-crds.yaml"}, makeTarget
	if opts.Workloads {
		need = append(need, "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml")
		target = makeWorkloadsTarget
	}
	if opts.Istio || opts.RunIstiods {
		need = append(need, "istiod")
		if opts.Workloads {
			target += " fleet-istio"
		} else {
			target = makeIstioTarget
		}
	}
	for _, name := range need {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("local fleet binary %s is missing: run `%s` at the repository root (or set %s): %w",
				filepath.Join(bin, name), target, BinDirEnv, err)
		}
	}
	dir, err := os.MkdirTemp("", "testfleet-")
	if err != nil {
		return nil, fmt.Errorf("create fleet dir: %w", err)
	}
	f, err := start(bin, dir, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return f, nil
}

func start(bin, dir string, opts Options) (*Fleet, error) {
	logPath := filepath.Join(dir, "localfleet.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create fleet log: %w", err)
	}
	defer log.Close()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create stdin pipe: %w", err)
	}
	defer stdinR.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		stdinW.Close()
		return nil, fmt.Errorf("create ready pipe: %w", err)
	}
	defer readyR.Close()

	args := []string{"run",
		"--clusters=" + strconv.Itoa(opts.Clusters), "--dir=" + dir, "--bin-dir=" + bin,
		"--workloads=" + strconv.FormatBool(opts.Workloads), "--istio=" + strconv.FormatBool(opts.Istio), "--stop-on-stdin-close", "--remove-dir", "--ready-fd=3"}
	if opts.Bare > 0 {
		args = append(args, "--bare="+strconv.Itoa(opts.Bare))
	}
	if opts.RunIstiods {
		args = append(args, "--run-istiods")
	}
	cmd := exec.Command(filepath.Join(bin, "localfleet"), args...)
	cmd.Stdin = stdinR
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{readyW}
	// Own process group: a Ctrl-C aimed at `go test` reaches localfleet only
	// through the stdin pipe and the parent-death signal, so it stops in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		stdinW.Close()
		readyW.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	readyW.Close()
	f := &Fleet{dir: dir, cmd: cmd, exited: make(chan struct{}), stdin: stdinW}
	go func() {
		_ = cmd.Wait()
		close(f.exited)
	}()

	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(readyR).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	// Read the log before stopping: a clean stop removes it.
	select {
	case ok := <-ready:
		if !ok {
			err := fmt.Errorf("local fleet failed to start; end of %s:\n%s", logPath, logEnd(logPath))
			f.stop()
			return nil, err
		}
	case <-time.After(startTimeout):
		err := fmt.Errorf("local fleet not ready within %s; end of %s:\n%s", startTimeout, logPath, logEnd(logPath))
		f.stop()
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
	if err == nil {
		err = json.Unmarshal(data, &f.manifest)
	}
	if err != nil {
		f.stop()
		return nil, fmt.Errorf("read fleet manifest: %w", err)
	}
	return f, nil
}

// Istiods returns where the istiods that run for cluster's istiod
// Deployments listen, by revision (Options.RunIstiods): those ready now, as
// fleet.json says at the call.
func (f *Fleet) Istiods(cluster string) (map[string]Istiod, error) {
	data, err := os.ReadFile(filepath.Join(f.dir, "fleet.json"))
	if err != nil {
		return nil, err
	}
	var m struct {
		Clusters []struct {
			Name    string            `json:"name"`
			Istiods map[string]Istiod `json:"istiods"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("read fleet manifest: %w", err)
	}
	for _, c := range m.Clusters {
		if c.Name == cluster {
			return c.Istiods, nil
		}
	}
	return nil, fmt.Errorf("no cluster %s in the fleet", cluster)
}

// Dir returns the fleet directory, which holds fleet.json, the kubeconfigs
// and every component's log.
func (f *Fleet) Dir() string { return f.dir }

// Clusters returns every cluster, in name order.
func (f *Fleet) Clusters() []Cluster {
	out := make([]Cluster, 0, len(f.manifest.Clusters))
	for _, c := range f.manifest.Clusters {
		out = append(out, Cluster{
			Name: c.Name, Server: c.Server, Kubeconfig: c.Kubeconfig,
			Region: c.Region, Zone: c.Zone, Network: c.Network, PIDs: c.PIDs, Istiod: c.Istiod, Bare: c.Bare,
		})
	}
	return out
}

// Cluster returns the cluster called name, failing t if there is none.
func (f *Fleet) Cluster(t testing.TB, name string) Cluster {
	t.Helper()
	for _, c := range f.Clusters() {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("testfleet: no cluster %q in the fleet", name)
	return Cluster{}
}

// PIDs returns every process of the fleet, mapped to its component name:
// "localfleet" for the supervisor, then "etcd", "kube-apiserver" and so on.
func (f *Fleet) PIDs() map[int]string {
	pids := map[int]string{f.manifest.SupervisorPID: "localfleet"}
	for _, c := range f.manifest.Clusters {
		for name, pid := range c.PIDs {
			pids[pid] = name
		}
	}
	return pids
}

// Stop stops every cluster and waits for the processes to exit. The fleet
// directory is removed, unless a component died, in which case its logs stay
// there and the error names the directory.
func (f *Fleet) Stop() error {
	return f.stop()
}

// stop closes localfleet's stdin, which makes it stop its clusters and exit,
// and waits for that; after 30 s it kills localfleet, whose children then die
// of their parent-death signal.
func (f *Fleet) stop() error {
	f.stdin.Close()
	select {
	case <-f.exited:
	case <-time.After(30 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.exited
		return fmt.Errorf("local fleet (pid %d) did not stop within 30s; killed it", f.cmd.Process.Pid)
	}
	if !f.cmd.ProcessState.Success() {
		return fmt.Errorf("local fleet exited with %s; see the logs in %s", f.cmd.ProcessState, f.dir)
	}
	// localfleet removed the directory (--remove-dir); this covers a kill.
	if err := os.RemoveAll(f.dir); err != nil {
		return fmt.Errorf("remove fleet dir: %w", err)
	}
	return nil
}

// RESTConfig returns a new client configuration for the cluster's
// administrator, failing t if the kubeconfig cannot be loaded. Client rate
// limits are set explicitly to 50 QPS, burst 100.
func (c Cluster) RESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatalf("testfleet: load kubeconfig of cluster %s: %v", c.Name, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg
}

// BinDir returns the directory holding the local fleet's binaries:
// $FLOTILLA_BIN_DIR if set, else bin/ at the root of the flotilla.io/flotilla
// module, found by walking up from the working directory.
func BinDir() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		return filepath.Abs(dir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isRepoRoot(dir) {
			return filepath.Join(dir, "bin"), nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod of module flotilla.io/flotilla in %s or its parents; set %s to the directory holding the `%s` binaries", wd, BinDirEnv, makeTarget)
		}
	}
}

// isRepoRoot reports whether dir holds the go.mod of flotilla.io/flotilla.
func isRepoRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if mod, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(mod), `"`) == "flotilla.io/flotilla"
		}
	}
	return false
}

// logEnd returns the end of the log at path: the last 3000 bytes, enough for
// the error that ended localfleet.
func logEnd(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
