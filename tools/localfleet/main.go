// Command localfleet runs a fleet of local Kubernetes control planes (etcd and
// kube-apiserver on loopback) with Istio's CRDs installed, for Flotilla's
// end-to-end tests and demo.
//
// Usage:
//
//	localfleet up    --clusters N --dir DIR [--name-prefix c] [--workloads] [--istio] [--bare M] [--run-istiods]   start in the background
//	localfleet down  --dir DIR                                                                                    stop what up started
//	localfleet run   --clusters N --dir DIR [--name-prefix c] [--workloads] [--istio] [--bare M] [--run-istiods]   run in the foreground
//	localfleet stop  --dir DIR --cluster C                                                                        crash one cluster, keeping its data
//	localfleet start --dir DIR --cluster C                                                                        bring it back
//
// up starts a detached `localfleet run` (the supervisor) and returns once
// every cluster is ready. The supervisor owns every etcd, kube-apiserver and
// istiod (with --run-istiods, also one per istiod Deployment in a cluster),
// each of which dies with it (parent-death signal); down signals the
// supervisor, which stops its clusters and exits. stop and start ask the
// supervisor, over its control socket DIR/localfleet.sock, to kill one
// cluster's processes and to start them again. See docs/localfleet.md.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"flotilla.io/flotilla/tools/localfleet/internal/cluster"
	"flotilla.io/flotilla/tools/localfleet/internal/control"
	"flotilla.io/flotilla/tools/localfleet/internal/fleet"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// Files in the fleet directory besides those that package fleet writes.
const (
	pidFile = "localfleet.pid"
	logFile = "localfleet.log"
)

// readyLine is what the supervisor writes to its ready descriptor.
const readyLine = "ready"

// The supervisor's control socket drives its fleet.
var _ control.Clusters = (*fleet.Fleet)(nil)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "stop":
		err = stopCluster(os.Args[2:])
	case "start":
		err = startCluster(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localfleet:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  localfleet up    --clusters N --dir DIR [--name-prefix c] [--workloads] [--istio] [--bare M] [--run-istiods] [--bin-dir D] [--crds FILE]
  localfleet run   --clusters N --dir DIR [--name-prefix c] [--workloads] [--istio] [--bare M] [--run-istiods] [--bin-dir D] [--crds FILE] [--stop-on-stdin-close] [--remove-dir] [--ready-fd N]
  localfleet down  --dir DIR
  localfleet stop  --dir DIR --cluster C     kill C's processes as a crash would; its data, address and certificates are kept
  localfleet start --dir DIR --cluster C     start a stopped C again

--bare M starts the last M of the N clusters bare: without Istio's CRDs, the
istio-system namespace and istiod, as clusters never prepared for Istio.

--run-istiods makes every cluster run a real istiod for each istiod Deployment
(istio-system, label app=istiod, one per revision, as Istio's chart installs
them) with the Deployment's arguments and environment, on loopback ports of its
own, listed by revision under "istiods" in fleet.json once ready; it is stopped
when the Deployment goes and restarted when its arguments or environment change.
Without --workloads it also writes each such Deployment's status, as the
Deployment controller would: Available, every replica ready, while its istiod is
ready, and not otherwise.
`)
	os.Exit(2)
}

// startFlags are the flags shared by up and run.
type startFlags struct {
	clusters   int
	dir        string
	namePrefix string
	binDir     string
	crds       string
	workloads  bool
	istio      bool
	bare       int
	runIstiods bool
}

func (s *startFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&s.clusters, "clusters", 1, "number of clusters")
	fs.StringVar(&s.dir, "dir", "", "fleet directory for kubeconfigs, fleet.json, data and logs (required)")
	fs.StringVar(&s.namePrefix, "name-prefix", "c", "cluster names are the prefix followed by 1…N")
	fs.StringVar(&s.binDir, "bin-dir", "", "directory holding etcd and kube-apiserver (default: this executable's directory)")
	fs.StringVar(&s.crds, "crds", "", "Istio CRD YAML (default: istio-crds.yaml in the bin directory)")
	fs.BoolVar(&s.workloads, "workloads", false, "also run kube-controller-manager, kube-scheduler and kwok, so that pods run (build with `make fleet-workloads`)")
	fs.BoolVar(&s.istio, "istio", false, "also run an istiod per cluster, its xDS and debug ports on loopback (build with `make fleet-istio`)")
	fs.IntVar(&s.bare, "bare", 0, "start the last `M` clusters bare: without Istio's CRDs, the istio-system namespace and istiod")
	fs.BoolVar(&s.runIstiods, "run-istiods", false, "run an istiod for each istiod Deployment that appears in a cluster, as its pod would (build with `make fleet-istio`)")
}

// resolve checks the flags and fills in the defaults, all as absolute paths.
func (s *startFlags) resolve() error {
	if s.dir == "" {
		return errors.New("--dir is required")
	}
	if s.clusters < 1 {
		return fmt.Errorf("--clusters must be at least 1, got %d", s.clusters)
	}
	if s.bare < 0 || s.bare > s.clusters {
		return fmt.Errorf("--bare must be 0 to --clusters (%d), got %d", s.clusters, s.bare)
	}
	if s.binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find bin directory: %w", err)
		}
		s.binDir = filepath.Dir(exe)
	}
	if s.crds == "" {
		s.crds = filepath.Join(s.binDir, "istio-crds.yaml")
	}
	for _, p := range []*string{&s.dir, &s.binDir, &s.crds} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("resolve %s: %w", *p, err)
		}
		*p = abs
	}
	for _, f := range []string{filepath.Join(s.binDir, "etcd"), filepath.Join(s.binDir, "kube-apiserver"), s.crds} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w (build the local fleet with `make fleet` at the repository root)", err)
		}
	}
	if s.workloads {
		for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml"} {
			if _, err := os.Stat(filepath.Join(s.binDir, name)); err != nil {
				return fmt.Errorf("%w (--workloads needs `make fleet-workloads` at the repository root)", err)
			}
		}
	}
	if s.istio || s.runIstiods {
		if _, err := os.Stat(filepath.Join(s.binDir, "istiod")); err != nil {
			return fmt.Errorf("%w (--istio and --run-istiods need `make fleet-istio` at the repository root)", err)
		}
	}
	return nil
}

func (s *startFlags) args() []string {
	return []string{
		"--clusters=" + strconv.Itoa(s.clusters), "--dir=" + s.dir, "--name-prefix=" + s.namePrefix,
		"--bin-dir=" + s.binDir, "--crds=" + s.crds, "--workloads=" + strconv.FormatBool(s.workloads),
		"--istio=" + strconv.FormatBool(s.istio), "--bare=" + strconv.Itoa(s.bare),
		"--run-istiods=" + strconv.FormatBool(s.runIstiods),
	}
}

// up starts a detached supervisor and waits until it reports ready.
func up(args []string) error {
	var s startFlags
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	s.register(fs)
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the fleet to be ready")
	_ = fs.Parse(args)
	if err := s.resolve(); err != nil {
		return err
	}
	if pid, ok := runningSupervisor(s.dir); ok {
		return fmt.Errorf("a fleet is already running in %s (supervisor pid %d); run `localfleet down --dir %s` first", s.dir, pid, s.dir)
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create fleet dir: %w", err)
	}
	logPath := filepath.Join(s.dir, logFile)
	log, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create supervisor log: %w", err)
	}
	defer log.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create ready pipe: %w", err)
	}
	defer readyR.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(exe, append([]string{"run", "--ready-fd=3"}, s.args()...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{readyW} // descriptor 3 in the child
	// A new session: no controlling terminal, so the supervisor survives the
	// shell that ran up and ignores its Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	readyW.Close()

	got := make(chan string, 1)
	go func() {
		// A line, or EOF when the supervisor exits without one.
		line, _ := bufio.NewReader(readyR).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(interrupted)
	select {
	case line := <-got:
		if line != readyLine {
			_ = cmd.Wait()
			return fmt.Errorf("fleet failed to start; last lines of %s:\n%s", logPath, proc.Tail(logPath, 20))
		}
	case <-time.After(*timeout):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		return fmt.Errorf("fleet not ready within %s; last lines of %s:\n%s", *timeout, logPath, proc.Tail(logPath, 20))
	case sig := <-interrupted:
		// The supervisor is in its own session; take it down with us.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		return fmt.Errorf("interrupted by %s before the fleet was ready; stopped it", sig)
	}
	_ = cmd.Process.Release()

	m, err := fleet.ReadManifest(s.dir)
	if err != nil {
		return err
	}
	fmt.Printf("fleet of %d clusters ready in %.1fs (supervisor pid %d, stop with `localfleet down --dir %s`)\n",
		len(m.Clusters), time.Since(start).Seconds(), m.SupervisorPID, s.dir)
	for _, c := range m.Clusters {
		bare := ""
		if c.Bare {
			bare = "  (bare)"
		}
		fmt.Printf("  %-6s %-24s %s/%s  KUBECONFIG=%s%s\n", c.Name, c.Server, c.Region, c.Zone, c.Kubeconfig, bare)
		if c.Istiod != nil {
			fmt.Printf("         istiod xDS %s, debug http://%s/debug\n", c.Istiod.GRPC, c.Istiod.HTTP)
		}
	}
	return nil
}

// run starts the fleet and serves it until a signal, a closed stdin (with
// --stop-on-stdin-close) or the death of any component.
func run(args []string) error {
	var s startFlags
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	s.register(fs)
	readyFD := fs.Int("ready-fd", 0, "descriptor to write \"ready\" to and close once the fleet is ready (0: none)")
	stdinClose := fs.Bool("stop-on-stdin-close", false, "stop the fleet when stdin reaches end of file, e.g. because the process holding its other end died")
	removeDir := fs.Bool("remove-dir", false, "remove --dir after a clean stop (it is kept when a component died, for its logs)")
	_ = fs.Parse(args)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *readyFD > 0 {
		// Inherited descriptors are not close-on-exec; without this, every
		// etcd and kube-apiserver would hold the pipe open too.
		syscall.CloseOnExec(*readyFD)
	}
	if err := s.resolve(); err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create fleet dir: %w", err)
	}
	pidPath := filepath.Join(s.dir, pidFile)
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(pidPath)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	if *stdinClose {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		go func() {
			_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
			cancel(errors.New("stdin closed"))
		}()
	}

	start := time.Now()
	startCtx, cancelStart := context.WithTimeout(ctx, 2*time.Minute)
	f, err := fleet.Start(startCtx, fleet.Options{
		Clusters: s.clusters, NamePrefix: s.namePrefix, Dir: s.dir,
		BinDir: s.binDir, CRDs: s.crds, Workloads: s.workloads, Istio: s.istio, Bare: s.bare,
		RunIstiods: s.runIstiods, Log: log,
	})
	cancelStart()
	if err != nil {
		if ctx.Err() != nil && *removeDir {
			// Told to stop while starting: that is a clean stop too.
			_ = os.RemoveAll(s.dir)
		}
		return err
	}
	defer os.Remove(filepath.Join(s.dir, fleet.ManifestFile))
	log.Info("fleet ready", "clusters", s.clusters, "dir", s.dir, "elapsed", time.Since(start).Round(time.Millisecond))
	if *readyFD > 0 {
		ready := os.NewFile(uintptr(*readyFD), "ready")
		_, _ = fmt.Fprintln(ready, readyLine)
		ready.Close()
	}

	// The control socket serves `localfleet stop` and `start` until the
	// fleet stops; a fleet without one still serves everything else.
	controlCtx, stopControl := context.WithCancel(ctx)
	controlDone := make(chan struct{})
	if l, err := control.Listen(s.dir); err != nil {
		log.Warn("no control socket: `localfleet stop` and `start` cannot reach this fleet", "err", err)
		close(controlDone)
	} else {
		go func() {
			defer close(controlDone)
			if err := control.Serve(controlCtx, l, f, log); err != nil {
				log.Warn("control socket", "err", err)
			}
		}()
	}
	shutdown := func() {
		stopControl()
		<-controlDone
		f.Stop()
	}

	// States: serving → stopping, on a signal, closed stdin or a dead component.
	select {
	case <-ctx.Done():
		log.Info("stopping fleet", "reason", context.Cause(ctx))
		shutdown()
		if *removeDir {
			if err := os.RemoveAll(s.dir); err != nil {
				return fmt.Errorf("remove fleet dir: %w", err)
			}
		}
		return nil
	case err := <-f.Failed():
		log.Error("component died; stopping fleet", "err", err)
		shutdown()
		return err
	}
}

// down stops the supervisor in DIR and makes sure its processes are gone.
func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	dir := fs.String("dir", "", "fleet directory given to up (required)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the fleet to stop")
	_ = fs.Parse(args)
	if *dir == "" {
		return errors.New("--dir is required")
	}
	// Read the manifest first: the supervisor removes it when it stops.
	m, manifestErr := fleet.ReadManifest(*dir)
	pid, running := runningSupervisor(*dir)
	if !running && manifestErr != nil {
		fmt.Printf("no fleet running in %s\n", *dir)
		return nil
	}
	if running {
		if err := proc.Signal(pid, syscall.SIGTERM); err != nil {
			return err
		}
		if alive := proc.WaitGone(map[int]string{pid: "localfleet"}, *timeout); len(alive) > 0 {
			_ = proc.Signal(pid, syscall.SIGKILL)
		}
	}
	// The components die with the supervisor; kill any that somehow did not.
	pids := map[int]string{}
	for _, c := range m.Clusters {
		for name, p := range c.PIDs {
			pids[p] = name
		}
		for _, d := range c.Istiods {
			pids[d.PID] = cluster.Istiod
		}
	}
	for p, name := range pids {
		if proc.Alive(p, name) {
			_ = proc.Signal(p, syscall.SIGKILL)
		}
	}
	if alive := proc.WaitGone(pids, 5*time.Second); len(alive) > 0 {
		return fmt.Errorf("processes %v are still alive after SIGKILL", alive)
	}
	_ = os.Remove(filepath.Join(*dir, fleet.ManifestFile))
	_ = os.Remove(filepath.Join(*dir, pidFile))
	_ = os.Remove(filepath.Join(*dir, control.SocketFile))
	fmt.Printf("fleet in %s stopped\n", *dir)
	return nil
}

// stopCluster asks the supervisor in DIR to stop one cluster.
func stopCluster(args []string) error {
	f, err := parseClusterFlags("stop", args, 30*time.Second)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := control.StopCluster(ctx, f.dir, f.name); err != nil {
		return err
	}
	fmt.Printf("cluster %s stopped, its data kept (start it again with `localfleet start --dir %s --cluster %s`)\n", f.name, f.dir, f.name)
	return nil
}

// startCluster asks the supervisor in DIR to start a stopped cluster again.
func startCluster(args []string) error {
	f, err := parseClusterFlags("start", args, 2*time.Minute)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	start := time.Now()
	if err := control.StartCluster(ctx, f.dir, f.name); err != nil {
		return err
	}
	elapsed := time.Since(start)
	m, err := fleet.ReadManifest(f.dir)
	if err != nil {
		return err
	}
	for _, c := range m.Clusters {
		if c.Name == f.name {
			fmt.Printf("cluster %s ready again in %.1fs at %s  KUBECONFIG=%s\n", c.Name, elapsed.Seconds(), c.Server, c.Kubeconfig)
		}
	}
	return nil
}

// clusterFlags are the flags of stop and start.
type clusterFlags struct {
	dir, name string
	timeout   time.Duration
}

// parseClusterFlags parses the flags of command stop or start and checks
// that a fleet runs in --dir.
func parseClusterFlags(command string, args []string, timeout time.Duration) (clusterFlags, error) {
	var f clusterFlags
	fs := flag.NewFlagSet(command, flag.ExitOnError)
	fs.StringVar(&f.dir, "dir", "", "fleet directory given to up (required)")
	fs.StringVar(&f.name, "cluster", "", "name of the cluster, such as c1 (required)")
	fs.DurationVar(&f.timeout, "timeout", timeout, "how long to wait for the cluster to "+command)
	_ = fs.Parse(args)
	if f.dir == "" {
		return f, errors.New("--dir is required")
	}
	if f.name == "" {
		return f, errors.New("--cluster is required")
	}
	if _, ok := runningSupervisor(f.dir); !ok {
		return f, fmt.Errorf("no fleet running in %s", f.dir)
	}
	return f, nil
}

// runningSupervisor returns the pid in DIR's pid file if that process is a
// live localfleet.
func runningSupervisor(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return pid, proc.Alive(pid, "localfleet")
}
