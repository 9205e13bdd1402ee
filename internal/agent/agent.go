package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"google.golang.org/protobuf/proto"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/agent/apply"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
)

// Config configures an agent.
type Config struct {
	// Server is the central control plane's URL, or several server
	// replicas' URLs separated by commas: the agent keeps one session, and
	// moves to the next replica when a session fails.
	Server string
	// Cluster is this cluster's name (or FQN) in Flotilla.
	Cluster string
	// TokenFile holds a join token, used only until the agent has a credential.
	TokenFile string
	// Kube reaches the agent's own cluster. QPS and Burst are set explicitly
	// (client-go's defaults of 5/10 cap an agent at ~300 writes a minute).
	Kube *rest.Config
	// Version is the agent's own version, reported to the central control plane.
	Version string
	Log     *slog.Logger
	// ResyncPeriod re-applies the current bundle even without a change.
	ResyncPeriod time.Duration
	// RuntimeDigestInterval is how often the agent sends the digest of the
	// runtime state it reported, so that the central control plane can
	// prove it holds the same; zero means DefaultRuntimeDigestInterval.
	RuntimeDigestInterval time.Duration
	// TLS configures https:// servers; nil uses the system roots.
	TLS *tls.Config
	// HealthListen is where the agent answers /healthz and /readyz (e.g.
	// ":8081" in a pod); empty for none.
	HealthListen string
	// IstioLifecycle lets the agent install and upgrade Istio from the
	// IstioInstallations that select its cluster, with the permissions of
	// LifecyclePermissions besides Permissions. Off, those installations
	// are reported as not applied here, and nothing of them is written.
	IstioLifecycle bool
}

// Default client rate limits for the agent's Kubernetes client.
const (
	DefaultQPS   = 50
	DefaultBurst = 100
)

// Agent is one cluster's edge control plane.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	kube    kubernetes.Interface
	cache   *bundleCache
	applier *apply.Applier
	servers []string
	clients []agentv1connect.AgentServiceClient // one per server
	inv     *inventoryWatch
	rt      *runtimeWatch
	rules   *userRules
	pods    *subsetWatch
	// policies is the cluster's own objects as last reported (a.mu).
	policies *agentv1.ClusterPolicies
	// compiled remembers what the last compilations decoded and found
	// valid; only the reconcile loop uses it.
	compiled compile.Cache

	// outbox carries reports to the central control plane; producers never
	// block (a full outbox drops, and the next session starts with a full
	// report anyway).
	outbox chan *agentv1.ConnectRequest

	mu      sync.Mutex
	current *bundle.Bundle // the bundle to reconcile; nil before the first
	version string
	rev     int64 // the store revision of current
	lastAck *agentv1.Ack
	wake    chan struct{} // capacity 1: reconcile soon
	recheck atomic.Bool   // a reconcile is due after gateRecheck

	// started is set once the CRD and namespaces are in place (readyz).
	started atomic.Bool

	// sleep waits between session attempts (sleepCtx; tests record it).
	sleep func(ctx context.Context, d time.Duration) bool
}

// DefaultRuntimeDigestInterval is how often the runtime digest is sent.
const DefaultRuntimeDigestInterval = 30 * time.Second

// runtimeBatch is how long the agent gathers runtime changes after the
// first one before it reports them, so a burst travels in few messages.
const runtimeBatch = 20 * time.Millisecond

// New checks cfg and builds an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Server == "" || cfg.Cluster == "" {
		return nil, errors.New("agent: --server and --cluster are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 10 * time.Minute
	}
	kcfg := rest.CopyConfig(cfg.Kube)
	if kcfg.QPS == 0 {
		kcfg.QPS, kcfg.Burst = DefaultQPS, DefaultBurst
	}
	kcfg.UserAgent = "flotilla-agent/" + cfg.Version
	kube, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return nil, fmt.Errorf("agent: kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(kcfg)
	if err != nil {
		return nil, fmt.Errorf("agent: dynamic client: %w", err)
	}
	a := &Agent{
		cfg: cfg, log: cfg.Log, kube: kube, cache: &bundleCache{dyn: dyn},
		outbox: make(chan *agentv1.ConnectRequest, 1024),
		wake:   make(chan struct{}, 1),
		sleep:  sleepCtx,
	}
	kinds := apply.IstioKinds()
	if cfg.IstioLifecycle {
		kinds = append(kinds, LifecycleKinds()...)
	}
	a.applier, err = apply.New(kcfg, apply.Options{GVKs: kinds, Logger: cfg.Log.With("component", "applier"), OnDrift: a.onDrift})
	if err != nil {
		return nil, fmt.Errorf("agent: applier: %w", err)
	}
	for _, s := range strings.Split(cfg.Server, ",") {
		s = strings.TrimSuffix(strings.TrimSpace(s), "/")
		if s == "" {
			continue
		}
		a.servers = append(a.servers, s)
		a.clients = append(a.clients, agentv1connect.NewAgentServiceClient(httpClient(s, cfg.TLS), s, connect.WithGRPC()))
	}
	a.inv = newInventoryWatch(kube, a.send, a.poke)
	a.rt = newRuntimeWatch(a.inv.factory)
	a.rules = newUserRules(dyn, a.poke)
	md, err := metadata.NewForConfig(kcfg)
	if err != nil {
		return nil, fmt.Errorf("agent: metadata client: %w", err)
	}
	a.pods = newSubsetWatch(md, a.poke)
	a.inv.proxies, a.inv.webhooks = a.pods.proxiesByRevision, cfg.IstioLifecycle
	a.inv.policies = func() *agentv1.ClusterPolicies {
		p := &agentv1.ClusterPolicies{DestinationRules: a.rules.hosts(), NamespaceWide: a.rules.namespaceWide()}
		a.mu.Lock()
		a.policies = p
		a.mu.Unlock()
		return p
	}
	if cfg.RuntimeDigestInterval == 0 {
		cfg.RuntimeDigestInterval = DefaultRuntimeDigestInterval
		a.cfg.RuntimeDigestInterval = cfg.RuntimeDigestInterval
	}
	return a, nil
}

// httpClient speaks HTTP/2 (over TLS for https, cleartext for http), with
// pings that find a dead connection.
func httpClient(server string, tlsConfig *tls.Config) *http.Client {
	p := new(http.Protocols)
	if strings.HasPrefix(server, "https://") {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	return &http.Client{Transport: &http.Transport{
		Protocols:       p,
		TLSClientConfig: tlsConfig,
		HTTP2:           &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 10 * time.Second},
	}}
}

// send queues a report without blocking.
func (a *Agent) send(m *agentv1.ConnectRequest) {
	select {
	case a.outbox <- m:
	default:
		a.log.Warn("report queue full; dropping a report (the next session sends a full one)")
	}
}

// poke asks the reconcile loop to run soon.
// recheckSoon reconciles again after gateRecheck, once however often it
// is asked before then.
func (a *Agent) recheckSoon() {
	if a.recheck.CompareAndSwap(false, true) {
		time.AfterFunc(gateRecheck, func() {
			a.recheck.Store(false)
			a.poke()
		})
	}
}

func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Agent) onDrift(d apply.Drift) {
	a.log.Info("drift", "object", d.Kind+" "+d.Namespace+"/"+d.Name, "change", d.Change, "restored", d.Restored)
	a.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Drift{Drift: &agentv1.Drift{
		Fqn: d.Owner, Kind: d.Kind, Namespace: d.Namespace, Name: d.Name, Change: string(d.Change), Restored: d.Restored, Message: d.Message,
	}}})
}

// Run runs the agent until ctx ends: it installs its CRD, reconciles from
// the stored bundle at once (so a cluster cut off from the central control
// plane still converges), and keeps a session with the central control plane.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errs := make(chan error, 8)
	if a.cfg.HealthListen != "" {
		ln, err := net.Listen("tcp", a.cfg.HealthListen)
		if err != nil {
			return fmt.Errorf("agent: --health-listen: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.serveHealth(ctx, ln); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	if err := a.cache.install(ctx); err != nil {
		return err
	}
	if err := ensureNamespaces(ctx, a.kube); err != nil {
		return err
	}
	a.started.Store(true)
	if b, v, rev, err := a.cache.load(ctx); err != nil {
		a.log.Error("stored bundle unusable; waiting for the central control plane", "err", err)
	} else if b != nil {
		a.log.Info("loaded the stored bundle", "version", v, "revision", rev)
		a.setBundle(b, v, rev)
	}
	for _, run := range []func(context.Context) error{a.applier.Run, a.inv.run, a.rules.run, a.pods.run, a.sessions} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				errs <- err
				cancel()
			}
		}()
	}
	err := a.reconcileLoop(ctx)
	cancel()
	wg.Wait()
	select {
	case e := <-errs:
		return e
	default:
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// setBundle makes b the bundle to reconcile.
func (a *Agent) setBundle(b *bundle.Bundle, version string, rev int64) {
	a.mu.Lock()
	a.current, a.version, a.rev = b, version, rev
	a.mu.Unlock()
	a.poke()
}

// reconcileLoop compiles and applies the current bundle whenever it is
// poked (new bundle, namespaces changed) or the resync period passes.
func (a *Agent) reconcileLoop(ctx context.Context) error {
	resync := time.NewTicker(a.cfg.ResyncPeriod)
	defer resync.Stop()
	// States: idle until poked or resynced; then reconcile once (it takes
	// the latest bundle and namespaces, so several pokes cost one pass).
	for {
		select {
		case <-a.wake:
		case <-resync.C:
		case <-ctx.Done():
			return nil
		}
		a.reconcile(ctx)
	}
}

func (a *Agent) reconcile(ctx context.Context) {
	a.mu.Lock()
	b, version, rev := a.current, a.version, a.rev
	a.mu.Unlock()
	if b == nil {
		return
	}
	namespaces, ok := a.inv.namespaces()
	if !ok {
		// The namespace informer has not synced: compiling now would prune
		// objects of namespaces not yet seen. The informer pokes on sync.
		return
	}
	hosts, wide := a.rules.hosts(), a.rules.namespaceWide()
	res := compile.CompileIn(b, compile.Cluster{Namespaces: namespaces, DestinationRules: hosts, NamespaceWide: wide, Cache: &a.compiled})
	if !a.cfg.IstioLifecycle {
		res = withoutLifecycle(b, res, a.cfg.Cluster)
	} else {
		if err := a.lifecycleNamespaces(ctx, res.Objects, namespaces); err != nil {
			a.log.Warn("create the namespaces Istio goes into", "err", err) // the apply reports each object it could not write
		}
		if held := a.holdGateways(ctx, res.Objects); held > 0 {
			a.recheckSoon()
		}
	}
	a.reportPolicies(&agentv1.ClusterPolicies{DestinationRules: hosts, NamespaceWide: wide})
	report := a.applier.Apply(ctx, res.Objects)
	ack := buildAck(version, b, res, report, a.pods.warnings(a.cfg.Cluster, res.Objects))
	ack.Revision = rev
	a.mu.Lock()
	stale := a.version != version
	a.lastAck = ack
	a.mu.Unlock()
	failed := 0
	for _, r := range ack.GetResources() {
		if r.GetState() == "Failed" {
			failed++
		}
	}
	a.log.Info("reconciled", "version", version, "objects", len(res.Objects), "created", report.Count(apply.Created), "updated", report.Count(apply.Updated), "deleted", report.Count(apply.Deleted), "failedResources", failed)
	if !stale {
		a.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: ack}})
	}
}

// withoutLifecycle drops what IstioInstallations rendered, for an agent
// that does not manage Istio, with a diagnostic on each that selected the
// cluster: nothing of an installation is written or pruned there; the
// central control plane's plan shows what it would render.
func withoutLifecycle(b *bundle.Bundle, res compile.Result, cluster string) compile.Result {
	installs := map[string]bool{}
	for _, o := range b.Objects {
		if o.Kind == compile.KindIstioInstallation {
			installs[o.FQN] = true
		}
	}
	if len(installs) == 0 {
		return res
	}
	kept := res.Objects[:0:0]
	dropped := map[string]bool{}
	for _, o := range res.Objects {
		if owner := o.GetAnnotations()[compile.AnnotationOwner]; installs[owner] {
			dropped[owner] = true
			continue
		}
		kept = append(kept, o)
	}
	res.Objects = kept
	for _, fqn := range slices.Sorted(maps.Keys(dropped)) {
		res.Diagnostics = append(res.Diagnostics, compile.Diagnostic{FQN: fqn, Message: fmt.Sprintf(
			"cluster %s's agent does not manage Istio's lifecycle, so this installation is not applied there and nothing of it is written: install the agent chart with istioLifecycle.enabled=true (the agent's --istio-lifecycle), which grants what it needs", cluster)})
	}
	return res
}

// lifecycleNamespaces creates the namespaces that what IstioInstallations
// rendered goes into and that the cluster lacks (istio-system on a bare
// cluster). They are not Flotilla's objects: never pruned, for a namespace
// holds more than what Flotilla put there.
func (a *Agent) lifecycleNamespaces(ctx context.Context, objs []*unstructured.Unstructured, existing []string) error {
	have := map[string]bool{}
	for _, ns := range existing {
		have[ns] = true
	}
	var errs []error
	for _, o := range objs {
		ns := o.GetNamespace()
		if ns == "" || have[ns] || !strings.Contains(o.GetAnnotations()[compile.AnnotationOwner], "/istioinstallations/") {
			continue
		}
		have[ns] = true
		created := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"flotilla.io/created-for": "istio"}}}
		if _, err := a.kube.CoreV1().Namespaces().Create(ctx, created, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			errs = append(errs, fmt.Errorf("create namespace %s: %w", ns, err))
		} else if err == nil {
			a.log.Info("created a namespace for Istio", "namespace", ns)
		}
	}
	return errors.Join(errs...)
}

// buildAck turns compile diagnostics and the apply report into one status
// per intent resource of the bundle.
func buildAck(version string, b *bundle.Bundle, res compile.Result, report apply.Report, warnings map[string][]string) *agentv1.Ack {
	diags := map[string][]string{}
	for _, d := range res.Diagnostics {
		diags[d.FQN] = append(diags[d.FQN], d.String())
	}
	byOwner := report.ByOwner()
	ack := &agentv1.Ack{BundleVersion: version}
	// Intent objects, then the workspace settings behind the multicluster
	// slice: each gets its status.
	owners := make([]string, 0, len(b.Objects))
	for _, o := range b.Objects {
		owners = append(owners, o.FQN)
	}
	if mc := b.Multicluster; mc != nil {
		seen := map[string]bool{}
		add := func(fqn string) {
			if !seen[fqn] {
				seen[fqn] = true
				owners = append(owners, fqn)
			}
		}
		for _, e := range mc.EastWest {
			add(e.Owner)
		}
		for _, s := range mc.Services {
			add(s.Owner)
		}
	}
	for _, fqn := range owners {
		rs := &agentv1.ResourceStatus{Fqn: fqn, State: "Applied"}
		var failures, waits []string
		failures = append(failures, diags[fqn]...)
		for _, r := range byOwner[fqn] {
			switch r.Action {
			case apply.Failed:
				failures = append(failures, fmt.Sprintf("%s %s/%s: %s", r.Kind, r.Namespace, r.Name, r.Message))
			case apply.Deleted, apply.Released:
			case apply.Held:
				waits = append(waits, fmt.Sprintf("%s %s/%s %s", r.Kind, r.Namespace, r.Name, r.Message))
				rs.Objects = append(rs.Objects, fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name))
			default:
				rs.Objects = append(rs.Objects, fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name))
			}
		}
		sort.Strings(rs.Objects)
		switch {
		case len(failures) > 0:
			rs.State, rs.Message = "Failed", strings.Join(failures, "; ")
		case len(waits) > 0:
			rs.State, rs.Message = "Pending", strings.Join(waits, "; ")
		case len(rs.Objects) == 0:
			rs.Message = "nothing to write in this cluster: no namespace it selects exists here"
		default:
			rs.Message = fmt.Sprintf("%d object(s)", len(rs.Objects))
		}
		if w := warnings[fqn]; len(w) > 0 && rs.State == "Applied" {
			rs.Message += "; warning: " + strings.Join(w, "; warning: ")
		}
		ack.Resources = append(ack.Resources, rs)
	}
	return ack
}

// reportPolicies tells the central control plane the cluster's own
// objects that Flotilla leaves alone, when they changed since last told.
func (a *Agent) reportPolicies(p *agentv1.ClusterPolicies) {
	a.mu.Lock()
	same := proto.Equal(p, a.policies)
	a.policies = p
	a.mu.Unlock()
	if !same {
		a.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: &agentv1.Inventory{ClusterPolicies: p}}})
	}
}

// readToken reads a join token file.
func readToken(path string) (string, error) {
	if path == "" {
		return "", errors.New("no credential stored in the cluster and no --token-file: run `flotilla cluster onboard <cluster>` and pass its token")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read join token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
