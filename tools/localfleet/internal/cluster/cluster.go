// Package cluster runs one local Kubernetes control plane: an etcd and a
// kube-apiserver on free loopback ports, secured with TLS and a bearer token
// for an administrator in group system:masters; optionally (Spec.Workloads)
// also kube-controller-manager, kube-scheduler and kwok with one simulated
// node, (StartIstiod) an istiod, and (RunDeployedIstiods) an istiod for each
// istiod Deployment that appears in the cluster. Kill crashes every component
// of the cluster and Restart brings them back on the same data, ports and
// credentials.
//
// Layout of a cluster's directory (Spec.Dir):
//
//	pki/ca.crt, ca.key, apiserver.crt, apiserver.key, sa.key, tokens.csv
//	etcd/                   etcd's data
//	<component>.log         one log per component: etcd.log, kube-apiserver.log, …
//	istiods/<revision>.log  the istiod of each istiod Deployment (RunDeployedIstiods)
//
// The kubeconfig goes to Spec.Kubeconfig, which is usually outside Spec.Dir.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.io/flotilla/tools/localfleet/internal/pki"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// Names of the components, as used in logs, messages and Cluster.PIDs.
const (
	Etcd                  = "etcd"
	KubeAPIServer         = "kube-apiserver"
	KubeControllerManager = "kube-controller-manager"
	KubeScheduler         = "kube-scheduler"
	Kwok                  = "kwok"
)

// apiserverEnv is added to kube-apiserver's environment. With Istio's CRDs
// installed an idle kube-apiserver holds about 390 MB resident at the default
// GOGC=100 and about 305 MB at GOGC=50, at no measurable cost in start time;
// see docs/benchmarks.md.
var apiserverEnv = []string{"GOGC=50"}

// stopGrace is how long a component may take to exit after SIGTERM.
const stopGrace = 3 * time.Second

// Spec describes a cluster to start.
type Spec struct {
	// Name is the cluster's name, used as the kubeconfig context name.
	Name string
	// Dir holds the cluster's credentials, data and logs. It is created.
	Dir string
	// Kubeconfig is the path of the administrator kubeconfig to write.
	Kubeconfig string
	// BinDir holds the etcd and kube-apiserver executables, and with
	// Workloads also kube-controller-manager, kube-scheduler, kwok and
	// kwok-stages.yaml.
	BinDir string
	// Workloads adds kube-controller-manager, kube-scheduler and kwok, and
	// one kwok-simulated node, so that Deployments get Running pods with IPs
	// and Services get EndpointSlices.
	Workloads bool
	// Region and Zone label the simulated node (with Workloads).
	Region, Zone string
	// OnExit, if set, is called with an error naming the component whenever
	// a component of the started cluster exits without Stop or Kill having
	// asked it to. It is called from a goroutine of its own and should not
	// block.
	OnExit func(error)
}

// Cluster is a control plane that Start started. Stop must be called to end
// it. Kill stops it as a crash would, and Restart starts it again with the
// same data, ports and credentials. Its methods are safe for concurrent use.
type Cluster struct {
	Spec
	// Server is the API server's URL, https://127.0.0.1:port.
	Server string
	// Config authenticates as the administrator. Do not modify it; copy it
	// with rest.CopyConfig.
	Config *rest.Config

	// Chosen by the first start and kept for Restart.
	etcdURL, peerURL string
	port             int // kube-apiserver's secure port
	creds            credentials
	istiod           *istiodRun // nil until StartIstiod succeeds

	// mu guards procs and deployed, and serializes Stop, Kill, Restart,
	// StartIstiod and RunDeployedIstiods.
	mu sync.Mutex
	// deployed runs the istiods of istiod Deployments while the cluster
	// runs; nil until RunDeployedIstiods.
	deployed *deployedIstiods
	// procs are the running components in start order; none when stopped.
	procs []*proc.Process
}

// errExited marks a start that failed because a component exited, most often
// because another process took its port between probing and binding.
var errExited = errors.New("component exited during start")

// Start starts etcd and kube-apiserver (and with Workloads the rest) and
// returns once the API server reports ready (and the node is Ready). A start
// that fails because a component exits early is retried on new ports, up to
// three times.
func Start(ctx context.Context, spec Spec, log *slog.Logger) (*Cluster, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var c *Cluster
		c, err = start(ctx, spec, log)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, errExited) {
			break
		}
		log.Warn("retrying cluster start", "cluster", spec.Name, "attempt", attempt, "err", err)
	}
	return nil, fmt.Errorf("start cluster %s: %w", spec.Name, err)
}

func start(ctx context.Context, spec Spec, log *slog.Logger) (*Cluster, error) {
	if err := os.RemoveAll(spec.Dir); err != nil {
		return nil, fmt.Errorf("clean %s: %w", spec.Dir, err)
	}
	pkiDir := filepath.Join(spec.Dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", pkiDir, err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	creds, err := writeCredentials(pkiDir, spec.Name)
	if err != nil {
		return nil, err
	}
	server := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	c := &Cluster{
		Spec:    spec,
		Server:  server,
		etcdURL: "http://127.0.0.1:" + strconv.Itoa(ports[0]),
		peerURL: "http://127.0.0.1:" + strconv.Itoa(ports[1]),
		port:    ports[2],
		creds:   creds,
		Config: &rest.Config{
			Host:            server,
			BearerToken:     creds.token,
			TLSClientConfig: rest.TLSClientConfig{CAData: creds.caPEM},
			QPS:             100,
			Burst:           200,
		},
	}
	if err := writeKubeconfig(spec.Kubeconfig, spec.Name, server, creds); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.stop()
		}
	}()
	if err := c.startControlPlane(ctx, log); err != nil {
		return nil, err
	}
	if spec.Workloads {
		if err := c.startWorkloads(ctx, log); err != nil {
			return nil, err
		}
		if err := c.createNode(ctx); err != nil {
			return nil, err
		}
		if err := c.waitWorkloads(ctx); err != nil {
			return nil, err
		}
	}
	ok = true
	c.watch(c.procs...)
	return c, nil
}

// Restart starts a cluster that Kill stopped: the same components with the
// same data, ports and credentials, so that its kubeconfig and fleet.json
// stay true. It returns once the cluster is as ready as Start left it. If it
// fails, the cluster is left stopped.
func (c *Cluster) Restart(ctx context.Context, log *slog.Logger) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.procs) > 0 {
		return fmt.Errorf("cluster %s is running; stop it first", c.Name)
	}
	if err := c.restart(ctx, log); err != nil {
		c.stop()
		return fmt.Errorf("restart cluster %s: %w", c.Name, err)
	}
	c.watch(c.procs...)
	c.deployed.start()
	return nil
}

func (c *Cluster) restart(ctx context.Context, log *slog.Logger) error {
	if err := c.startControlPlane(ctx, log); err != nil {
		return err
	}
	if c.Workloads {
		if err := c.releaseNodeLease(ctx); err != nil {
			return err
		}
		if err := c.startWorkloads(ctx, log); err != nil {
			return err
		}
		if err := c.waitWorkloads(ctx); err != nil {
			return err
		}
	}
	if c.istiod != nil {
		if _, err := c.runIstiod(ctx, *c.istiod, log); err != nil {
			return err
		}
	}
	return nil
}

// startControlPlane starts etcd and kube-apiserver on the cluster's ports
// and waits until the API server is ready.
func (c *Cluster) startControlPlane(ctx context.Context, log *slog.Logger) error {
	etcd, err := c.start(Etcd, []string{
		"--name", c.Name,
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-url", c.etcdURL,
		"--listen-peer-url", c.peerURL,
	}, nil)
	if err != nil {
		return err
	}
	log.Debug("started etcd", "cluster", c.Name, "pid", etcd.PID(), "url", c.etcdURL)
	if err := waitEtcd(ctx, c.etcdURL, etcd); err != nil {
		return err
	}

	apiserver, err := c.start(KubeAPIServer, []string{
		"--etcd-servers=" + c.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.port),
		"--tls-cert-file=" + c.creds.servingCert,
		"--tls-private-key-file=" + c.creds.servingKey,
		"--client-ca-file=" + c.creds.caCert,
		"--token-auth-file=" + c.creds.tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.creds.saKey,
		"--service-account-signing-key-file=" + c.creds.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// The kubernetes Service's endpoints would be 127.0.0.1, which
		// validation rejects; nothing in the fleet needs them.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}, apiserverEnv)
	if err != nil {
		return err
	}
	log.Debug("started kube-apiserver", "cluster", c.Name, "pid", apiserver.PID(), "server", c.Server)
	return waitReady(ctx, c.Config, apiserver)
}

// start starts component name from BinDir, logging to DIR/<name>.log, and
// records it for Stop. The caller holds mu, or is the only user of c.
func (c *Cluster) start(name string, args, env []string) (*proc.Process, error) {
	p, err := proc.Start(name, filepath.Join(c.BinDir, name), args, env, filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// forget drops a stopped component from the cluster's.
func (c *Cluster) forget(p *proc.Process) {
	c.procs = slices.DeleteFunc(c.procs, func(q *proc.Process) bool { return q == p })
}

// watch reports to OnExit the exits of procs that nobody asked for. It is
// called once the components are ready, so that a start that failed, and was
// retried, is not reported.
func (c *Cluster) watch(procs ...*proc.Process) {
	if c.OnExit == nil {
		return
	}
	for _, p := range procs {
		go func() {
			<-p.Done()
			if !p.Stopping() {
				c.OnExit(fmt.Errorf("cluster %s: %w", c.Name, p.ExitError()))
			}
		}()
	}
}

// PIDs returns the process id of each running component, keyed by component
// name; it is empty while the cluster is stopped.
func (c *Cluster) PIDs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := make(map[string]int, len(c.procs))
	for _, p := range c.procs {
		pids[p.Name] = p.PID()
	}
	return pids
}

// Stop stops the components in the reverse order of their start, so etcd
// goes last, and waits for each to exit; the istiods of Deployments go
// first. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deployed.stop()
	c.stop()
}

func (c *Cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Stop(stopGrace)
	}
	c.procs = nil
}

// Kill stops the cluster as a crash would: it sends SIGKILL to every
// component, the istiods of Deployments included, with no SIGTERM first, and
// waits for them to exit. The data, ports and credentials are kept for
// Restart.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.procs) == 0 {
		return fmt.Errorf("cluster %s is already stopped", c.Name)
	}
	c.deployed.stop()
	for _, p := range c.procs {
		p.Kill()
	}
	c.procs = nil
	return nil
}

// credentials are the paths of a cluster's credential files, plus the token
// and CA for the kubeconfig.
type credentials struct {
	caCert, caKey, servingCert, servingKey, saKey, tokens string
	caPEM                                                 []byte
	token                                                 string
}

func writeCredentials(dir, name string) (credentials, error) {
	ca, err := pki.NewCA("localfleet-" + name + "-ca")
	if err != nil {
		return credentials{}, err
	}
	serving, err := ca.IssueServing("kube-apiserver",
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)})
	if err != nil {
		return credentials{}, err
	}
	saKey, err := pki.NewSigningKey()
	if err != nil {
		return credentials{}, err
	}
	token, err := pki.NewToken()
	if err != nil {
		return credentials{}, err
	}
	c := credentials{
		caCert:      filepath.Join(dir, "ca.crt"),
		caKey:       filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"),
		servingKey:  filepath.Join(dir, "apiserver.key"),
		saKey:       filepath.Join(dir, "sa.key"),
		tokens:      filepath.Join(dir, "tokens.csv"),
		caPEM:       ca.CertPEM,
		token:       token,
	}
	files := map[string][]byte{
		c.caCert:      ca.CertPEM,
		c.caKey:       ca.KeyPEM,
		c.servingCert: serving.CertPEM,
		c.servingKey:  serving.KeyPEM,
		c.saKey:       saKey,
		// token,user,uid,"group1,group2"
		c.tokens: []byte(token + `,admin,admin,"system:masters"` + "\n"),
	}
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return credentials{}, fmt.Errorf("write %s: %w", path, err)
		}
	}
	return c, nil
}

func writeKubeconfig(path, name, server string, creds credentials) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: creds.caPEM}
	cfg.AuthInfos[name+"-admin"] = &clientcmdapi.AuthInfo{Token: creds.token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name + "-admin"}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All n listeners are held open together so that the ports differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// poll calls check every 50ms until it returns nil, the context ends, or any
// of procs exits, whichever comes first.
func poll(ctx context.Context, procs []*proc.Process, what string, check func(context.Context) error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		last := check(attempt)
		cancel()
		if last == nil {
			return nil
		}
		for _, p := range procs {
			select {
			case <-p.Done():
				return fmt.Errorf("%w: %w", errExited, p.ExitError())
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// httpOK is a check for poll: GET url answers 200.
func httpOK(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

func waitEtcd(ctx context.Context, url string, p *proc.Process) error {
	return poll(ctx, []*proc.Process{p}, "etcd at "+url, httpOK(url+"/health"))
}

func waitReady(ctx context.Context, cfg *rest.Config, p *proc.Process) error {
	client, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	return poll(ctx, []*proc.Process{p}, "kube-apiserver at "+cfg.Host, func(ctx context.Context) error {
		_, err := client.RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}
