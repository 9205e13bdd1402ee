package cluster

// Istiods of istiod Deployments (RunDeployedIstiods).
//
// Istio's istiod chart installs, in istio-system, one Deployment per
// revision: istiod or istiod-<revision>, labelled app=istiod and
// istio.io/rev=<revision>. kwok (Spec.Workloads) makes its pods Running, but
// nothing runs in them. In their stead the cluster runs, for each such
// Deployment, a real istiod with the Deployment's arguments and environment,
// against the cluster's API server, on loopback ports of its own:
//
//	Deployments in istio-system, app=istiod
//	        │ informer: added, updated, deleted
//	        ▼
//	istiodLoop.reconcile ── desiredIstiods: revision → istiodCommand ──▶ stop the gone and the changed, start the missing
//	        ▲                                                                   │
//	        └──────────── follow: ready (/ready answers 200), exited ◀──────────┘
//	        │
//	        ├── without Spec.Workloads: rolloutStatus of each Deployment ──▶ deployments/status (rollout.go)
//	        │
//	        └── changed(the ready istiods by revision) ──▶ package fleet: fleet.json

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"

	"flotilla.io/flotilla/tools/localfleet/internal/istio"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// DeployedIstiod is an istiod that the cluster runs for an istiod
// Deployment (RunDeployedIstiods).
type DeployedIstiod struct {
	IstiodAddrs
	// Deployment is the Deployment's name, in istio-system.
	Deployment string `json:"deployment"`
	// PID is istiod's process id.
	PID int `json:"pid"`
}

const (
	// istiodSelector selects the Deployments of Istio's istiod chart.
	istiodSelector = "app=istiod"
	// revisionLabel holds a Deployment's revision; the chart sets it to
	// "default" for the revision left empty.
	revisionLabel = "istio.io/rev"
	// deployedDir, in the cluster's directory, holds the istiods' logs,
	// <revision>.log.
	deployedDir = "istiods"
)

// An istiod that exits unasked is started again after a back-off that
// doubles from minBackoff up to maxBackoff, as the kubelet restarts a
// crashing container, until its Deployment changes or goes.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// RunDeployedIstiods makes the cluster run an istiod for every istiod
// Deployment in istio-system (label app=istiod), one per revision, from now
// until the cluster is stopped, and again after every Restart. A
// Deployment's istiod is stopped when the Deployment is deleted or scaled to
// zero, and restarted when its arguments or environment change. Each listens
// on loopback ports of its own, kept while its Deployment exists. Without
// Spec.Workloads, the cluster also writes each such Deployment's status, as
// the Deployment controller would (rollout.go): Available, with every
// replica ready, while its istiod is ready, and not otherwise.
//
// changed is called with the istiods that are ready, by revision, whenever
// that set changes (so with an empty one when the cluster stops, if any was
// ready). It is called from a goroutine of the cluster's, one call at a
// time, and must not call the cluster's methods; it owns the map it is given.
func (c *Cluster) RunDeployedIstiods(log *slog.Logger, changed func(map[string]DeployedIstiod)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deployed != nil {
		return fmt.Errorf("cluster %s already runs the istiods of its Deployments", c.Name)
	}
	c.deployed = &deployedIstiods{c: c, log: log, changed: changed, ports: map[string]istiodPorts{}}
	if len(c.procs) > 0 {
		c.deployed.start()
	}
	return nil
}

// deployedIstiods runs the istiods of a cluster's istiod Deployments while
// the cluster runs: RunDeployedIstiods and Restart start its loop, Stop and
// Kill stop it, each holding the cluster's mu.
type deployedIstiods struct {
	c       *Cluster // the loop reads only fields that never change: Spec, Config
	log     *slog.Logger
	changed func(map[string]DeployedIstiod)
	// ports are each revision's, kept while its Deployment exists, across
	// restarts of its istiod and of the cluster, so that the addresses in
	// fleet.json stay true. Only the loop uses them, and one loop runs at a
	// time.
	ports map[string]istiodPorts

	cancel context.CancelFunc // nil while the loop is stopped
	done   chan struct{}      // closed once the loop has returned
}

// start starts the loop. The caller holds the cluster's mu.
func (d *deployedIstiods) start() {
	if d == nil || d.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		d.run(ctx)
	}()
}

// stop stops the loop, which kills its istiods with SIGKILL, as a crash of
// the cluster would, and waits for it. The caller holds the cluster's mu.
func (d *deployedIstiods) stop() {
	if d == nil || d.cancel == nil {
		return
	}
	d.cancel()
	<-d.done
	d.cancel = nil
}

// run watches the istiod Deployments and runs their istiods until ctx ends.
func (d *deployedIstiods) run(ctx context.Context) {
	client, err := kubernetes.NewForConfig(d.c.Config)
	if err != nil {
		d.log.Error("cannot watch istiod Deployments", "cluster", d.c.Name, "err", err)
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(istio.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = istiodSelector }))
	deployments := factory.Apps().V1().Deployments()
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	reg, err := deployments.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	})
	if err != nil {
		d.log.Error("cannot watch istiod Deployments", "cluster", d.c.Name, "err", err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	l := &istiodLoop{
		d:       d,
		client:  client,
		lister:  deployments.Lister(),
		poke:    poke,
		events:  make(chan istiodEvent),
		running: map[string]*istiodProc{},
		crashed: map[string]*crashLoop{},
	}
	defer l.wg.Wait() // before Shutdown: the follow goroutines end with ctx
	synced := reg.HasSyncedChecker().Done()
	// States: syncing (the informer's first list is not delivered yet, so
	// nothing is started) → reconciling (on every change of a Deployment,
	// every istiod ready or exited, every back-off ended, every retry of a
	// failed status write: start and stop istiods, then write the
	// Deployments' statuses, then report the ready istiods) → stopping (ctx
	// ended: kill every istiod, report none, return).
	for {
		select {
		case <-ctx.Done():
			l.killAll()
			return
		case <-synced:
			synced, l.synced = nil, true
		case <-wake:
		case ev := <-l.events:
			l.handle(ev)
		}
		if l.synced {
			l.reconcile(ctx)
			l.writeStatuses(ctx)
		}
		l.publish()
	}
}

// istiodLoop is the state of one run of the loop; only its goroutine uses it.
type istiodLoop struct {
	d      *deployedIstiods
	client kubernetes.Interface
	lister appslisters.DeploymentLister
	poke   func()
	synced bool
	// events carry what follow sees; wg waits for the follow goroutines.
	events chan istiodEvent
	wg     sync.WaitGroup
	// running are the istiods started, by revision, ready or not yet.
	running map[string]*istiodProc
	// crashed are the revisions whose istiod exited unasked, by revision.
	crashed map[string]*crashLoop
	// published is what changed was last called with.
	published map[string]DeployedIstiod
	// statusRetry pokes the loop again after a status write failed; nil
	// until one fails.
	statusRetry *time.Timer
}

// istiodProc is an istiod that the loop started.
type istiodProc struct {
	revision string
	cmd      istiodCommand
	ports    istiodPorts
	p        *proc.Process
	ready    bool
}

// istiodEvent is what follow saw of p: that it became ready, or else that it
// exited.
type istiodEvent struct {
	p     *istiodProc
	ready bool
}

// crashLoop is a revision whose istiod exited unasked, to be started again
// at retryAt (a timer pokes the loop then), unless its command changes first.
type crashLoop struct {
	cmd     istiodCommand
	backoff time.Duration
	retryAt time.Time
	timer   *time.Timer
}

// reconcile makes the running istiods those that the Deployments ask for:
// it stops those whose Deployment is gone or changed, and starts those
// missing whose back-off, if any, has ended.
func (l *istiodLoop) reconcile(ctx context.Context) {
	deps, err := l.lister.Deployments(istio.Namespace).List(labels.Everything())
	if err != nil {
		l.d.log.Error("list istiod Deployments", "cluster", l.d.c.Name, "err", err)
		return
	}
	want, problems := desiredIstiods(deps)
	for _, err := range problems {
		l.d.log.Warn("istiod Deployment not run", "cluster", l.d.c.Name, "err", err)
	}
	for _, rev := range slices.Sorted(maps.Keys(l.running)) {
		ip := l.running[rev]
		cmd, ok := want[rev]
		if ok && cmd.equal(ip.cmd) {
			continue
		}
		reason := "its Deployment is gone"
		if ok {
			reason = "its Deployment changed"
		}
		l.d.log.Info("stopping istiod", "cluster", l.d.c.Name, "revision", rev, "pid", ip.p.PID(), "reason", reason)
		ip.p.Stop(stopGrace)
		delete(l.running, rev)
	}
	for rev, cl := range l.crashed {
		if cmd, ok := want[rev]; !ok || !cmd.equal(cl.cmd) {
			cl.timer.Stop()
			delete(l.crashed, rev)
		}
	}
	for rev := range l.d.ports {
		if _, ok := want[rev]; !ok {
			delete(l.d.ports, rev)
		}
	}
	now := time.Now()
	for _, rev := range slices.Sorted(maps.Keys(want)) {
		if _, ok := l.running[rev]; ok {
			continue
		}
		if cl, ok := l.crashed[rev]; ok && now.Before(cl.retryAt) {
			continue
		}
		l.start(ctx, rev, want[rev])
	}
}

// start starts the istiod of revision rev on the revision's ports, or new
// ones.
func (l *istiodLoop) start(ctx context.Context, rev string, cmd istiodCommand) {
	c := l.d.c
	ports, ok := l.d.ports[rev]
	if !ok {
		var err error
		if ports, err = newIstiodPorts(); err != nil {
			l.d.log.Error("start istiod", "cluster", c.Name, "revision", rev, "err", err)
			l.crash(rev, cmd, false)
			return
		}
		l.d.ports[rev] = ports
	}
	dir := filepath.Join(c.Dir, deployedDir)
	var p *proc.Process
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		p, err = proc.Start(Istiod+" "+rev, filepath.Join(c.BinDir, Istiod),
			overriding(cmd.args, c.istiodArgs(ports)),
			append(slices.Clone(cmd.env), "KUBECONFIG="+c.Kubeconfig),
			filepath.Join(dir, rev+".log"))
	}
	if err != nil {
		l.d.log.Error("start istiod", "cluster", c.Name, "revision", rev, "err", err)
		l.crash(rev, cmd, false)
		return
	}
	ip := &istiodProc{revision: rev, cmd: cmd, ports: ports, p: p}
	l.running[rev] = ip
	l.d.log.Info("started istiod for its Deployment", "cluster", c.Name, "deployment", cmd.deployment,
		"revision", rev, "pid", p.PID(), "http", ports.addrs().HTTP)
	l.wg.Go(func() { l.follow(ctx, ip) })
}

// follow tells the loop when ip becomes ready and when it exits.
func (l *istiodLoop) follow(ctx context.Context, ip *istiodProc) {
	a := ip.ports.addrs()
	if poll(ctx, []*proc.Process{ip.p}, "istiod at "+a.HTTP, istiodReady(a.HTTP)) == nil {
		if !l.send(ctx, istiodEvent{p: ip, ready: true}) {
			return
		}
		select {
		case <-ip.p.Done():
		case <-ctx.Done():
			return
		}
	}
	l.send(ctx, istiodEvent{p: ip})
}

// send hands ev to the loop, unless the loop is stopping.
func (l *istiodLoop) send(ctx context.Context, ev istiodEvent) bool {
	select {
	case l.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// handle records what follow saw, unless it is of an istiod that the loop
// stopped itself.
func (l *istiodLoop) handle(ev istiodEvent) {
	ip := ev.p
	if l.running[ip.revision] != ip {
		return
	}
	if ev.ready {
		ip.ready = true
		l.d.log.Info("istiod ready", "cluster", l.d.c.Name, "revision", ip.revision, "http", ip.ports.addrs().HTTP)
		return
	}
	delete(l.running, ip.revision)
	b := l.crash(ip.revision, ip.cmd, ip.ready)
	l.d.log.Warn("istiod exited; starting it again after a back-off", "cluster", l.d.c.Name, "revision", ip.revision,
		"backoff", b, "err", ip.p.ExitError())
}

// crash records that the istiod of rev, running cmd, failed (after becoming
// ready, or before), and returns how long it waits before its next start.
func (l *istiodLoop) crash(rev string, cmd istiodCommand, wasReady bool) time.Duration {
	b := minBackoff
	if cl, ok := l.crashed[rev]; ok {
		cl.timer.Stop()
		if cl.cmd.equal(cmd) {
			b = min(2*cl.backoff, maxBackoff)
		}
	}
	if !wasReady {
		// Perhaps another process took one of its ports in the meantime.
		delete(l.d.ports, rev)
	}
	l.crashed[rev] = &crashLoop{cmd: cmd, backoff: b, retryAt: time.Now().Add(b), timer: time.AfterFunc(b, l.poke)}
	return b
}

// killAll kills every istiod, as a crash of the cluster would, and reports
// that none is ready.
func (l *istiodLoop) killAll() {
	for _, ip := range l.running {
		ip.p.Kill()
	}
	clear(l.running)
	for _, cl := range l.crashed {
		cl.timer.Stop()
	}
	if l.statusRetry != nil {
		l.statusRetry.Stop()
	}
	l.publish()
}

// statusRetryAfter is how long the loop waits to write the Deployments'
// statuses again after a write failed for another reason than a conflict
// (which writeStatus retries itself).
const statusRetryAfter = time.Second

// statusWriteTimeout bounds one Deployment's status write, retries
// included, so that an API server that does not answer holds up the loop
// only so long.
const statusWriteTimeout = 10 * time.Second

// writeStatuses writes, in a cluster without workloads, the status of every
// istiod Deployment that is not being deleted, from whether the istiod run
// for it is ready (rolloutStatus); a Deployment that runs no istiod (a
// second one of its revision) has none ready. A status that is already
// right is not written again. If a write fails, all are tried again after
// statusRetryAfter. With workloads it writes nothing: kube-controller-manager
// does, from kwok's pods.
func (l *istiodLoop) writeStatuses(ctx context.Context) {
	if l.d.c.Workloads {
		return
	}
	deps, err := l.lister.Deployments(istio.Namespace).List(labels.Everything())
	if err != nil {
		l.d.log.Error("list istiod Deployments", "cluster", l.d.c.Name, "err", err)
		return
	}
	ready := map[string]bool{}
	for _, ip := range l.running {
		if ip.ready {
			ready[ip.cmd.deployment] = true
		}
	}
	failed := false
	for _, dep := range deps {
		if dep.DeletionTimestamp != nil {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, statusWriteTimeout)
		err := writeStatus(wctx, l.client, dep, ready[dep.Name])
		cancel()
		if err != nil && ctx.Err() == nil {
			l.d.log.Warn("istiod Deployment's status not written; trying again", "cluster", l.d.c.Name,
				"after", statusRetryAfter, "err", err)
			failed = true
		}
	}
	if failed {
		if l.statusRetry != nil {
			l.statusRetry.Stop()
		}
		l.statusRetry = time.AfterFunc(statusRetryAfter, l.poke)
	}
}

// publish calls changed if the ready istiods are not those it last reported.
func (l *istiodLoop) publish() {
	ready := map[string]DeployedIstiod{}
	for rev, ip := range l.running {
		if ip.ready {
			ready[rev] = DeployedIstiod{IstiodAddrs: ip.ports.addrs(), Deployment: ip.cmd.deployment, PID: ip.p.PID()}
		}
	}
	if maps.Equal(ready, l.published) {
		return
	}
	l.published = ready
	l.d.changed(maps.Clone(ready))
}

// istiodCommand is what runs for an istiod Deployment: pilot-discovery's
// arguments and environment as the Deployment's container gives them, before
// the fleet adds its own (istiodArgs, KUBECONFIG). A change to the
// Deployment restarts its istiod only if it changes these: replicas,
// resources, probes, labels and the image mean nothing to a process that
// runs no image.
type istiodCommand struct {
	deployment string
	args, env  []string
}

func (a istiodCommand) equal(b istiodCommand) bool {
	return a.deployment == b.deployment && slices.Equal(a.args, b.args) && slices.Equal(a.env, b.env)
}

// desiredIstiods returns the istiod command of each revision that deps ask
// for, and what keeps any of deps from being run. A Deployment being
// deleted or scaled to zero asks for none; of two Deployments of one
// revision, the first by name is run.
func desiredIstiods(deps []*appsv1.Deployment) (map[string]istiodCommand, []error) {
	deps = slices.SortedFunc(slices.Values(deps), func(a, b *appsv1.Deployment) int { return cmp.Compare(a.Name, b.Name) })
	want := map[string]istiodCommand{}
	var problems []error
	for _, dep := range deps {
		if dep.DeletionTimestamp != nil || (dep.Spec.Replicas != nil && *dep.Spec.Replicas == 0) {
			continue
		}
		rev, cmd, err := istiodCommandOf(dep)
		if err != nil {
			problems = append(problems, err)
			continue
		}
		if other, ok := want[rev]; ok {
			problems = append(problems, fmt.Errorf("deployment %s/%s: revision %s is already run for deployment %s; delete one of the two",
				dep.Namespace, dep.Name, rev, other.deployment))
			continue
		}
		want[rev] = cmd
	}
	return want, problems
}

// istiodCommandOf returns the revision of istiod Deployment dep and what its
// container (the one named discovery, as in Istio's chart, or else the
// first) would run. The environment is what Kubernetes would give the
// container, in the one pod the fleet plays, <deployment>-localfleet: the
// values, and the fields that valueFrom refers to (the pod's name,
// namespace, service account and IP). Other sources (resource limits,
// ConfigMap and Secret keys, envFrom) are left out, and so is KUBECONFIG,
// which the fleet sets. It starts with defaults that the container's
// environment overrides: POD_NAME, POD_NAMESPACE, REVISION (the revision, so
// that istiod reads the mesh config from ConfigMap istio-<revision>) and
// GOGC=50.
func istiodCommandOf(dep *appsv1.Deployment) (string, istiodCommand, error) {
	containers := dep.Spec.Template.Spec.Containers
	if len(containers) == 0 {
		return "", istiodCommand{}, fmt.Errorf("deployment %s/%s has no containers", dep.Namespace, dep.Name)
	}
	ctr := containers[0]
	for _, c := range containers {
		if c.Name == "discovery" {
			ctr = c
			break
		}
	}
	rev := cmp.Or(dep.Labels[revisionLabel], "default")

	// The image's entrypoint is pilot-discovery; a command names it again.
	var args []string
	if len(ctr.Command) > 0 {
		args = append(args, ctr.Command[1:]...)
	}
	args = append(args, ctr.Args...)
	if len(args) == 0 || args[0] != "discovery" {
		args = append([]string{"discovery"}, args...)
	}

	pod := dep.Name + "-localfleet"
	fields := map[string]string{
		"metadata.name":           pod,
		"metadata.namespace":      dep.Namespace,
		"spec.serviceAccountName": cmp.Or(dep.Spec.Template.Spec.ServiceAccountName, "default"),
		"status.podIP":            "127.0.0.1",
		"status.hostIP":           "127.0.0.1",
	}
	env := []string{"POD_NAME=" + pod, "POD_NAMESPACE=" + dep.Namespace, "REVISION=" + rev, "GOGC=50"}
	for _, e := range ctr.Env {
		value, ok := e.Value, true
		if e.ValueFrom != nil {
			value, ok = "", false
			if f := e.ValueFrom.FieldRef; f != nil {
				value, ok = fields[f.FieldPath]
			}
		}
		if ok && e.Name != "KUBECONFIG" {
			env = append(env, e.Name+"="+value)
		}
	}
	return rev, istiodCommand{deployment: dep.Name, args: args, env: env}, nil
}

// overriding returns args with own appended and without the flags that own
// sets (as --name=value or --name value, with one dash or two), so that
// pilot-discovery gets each of them once, with the fleet's value: a
// Deployment's --monitoringAddr=:15014 would share one port among every
// istiod on the machine.
func overriding(args, own []string) []string {
	names := map[string]bool{}
	for _, a := range own {
		names[flagName(a)] = true
	}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || !names[flagName(a)] {
			out = append(out, a)
			continue
		}
		if !strings.Contains(a, "=") {
			i++ // its value is the next argument
		}
	}
	return append(out, own...)
}

// flagName returns the name of the flag in arg, such as httpAddr for
// --httpAddr=:8080.
func flagName(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	return name
}
