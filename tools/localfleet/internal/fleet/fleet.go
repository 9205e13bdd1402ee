// Package fleet starts and stops a local fleet: N clusters started in
// parallel, each prepared for Istio unless it is bare, and described by
// DIR/fleet.json.
//
//	Start ──┬─ cluster.Start(c1) ── istio.Install(c1) ── [StartIstiod(c1)] ──┬── WriteManifest ── (serve) ── Stop
//	        └─ cluster.Start(c2)   (bare: no istio.Install, no istiod)  ──────┘
//
// While it serves, StopCluster crashes one cluster and StartCluster brings it
// back, each rewriting fleet.json. With RunIstiods, every cluster also runs
// an istiod for each istiod Deployment that appears in it, and fleet.json is
// rewritten whenever one becomes ready or goes.
//
// Layout of DIR:
//
//	fleet.json           the Manifest, written once every cluster is ready, then on every StopCluster and StartCluster
//	<name>.kubeconfig    administrator kubeconfig of each cluster
//	<name>/              the cluster's credentials, etcd data and logs
//	localfleet.log       the supervisor's log (written by the command)
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"flotilla.io/flotilla/tools/localfleet/internal/cluster"
	"flotilla.io/flotilla/tools/localfleet/internal/istio"
)

// ManifestFile is the name of the manifest inside the fleet directory.
const ManifestFile = "fleet.json"

// Labels put on the istio-system namespace of each cluster.
const (
	LabelRegion  = "topology.kubernetes.io/region"
	LabelZone    = "topology.kubernetes.io/zone"
	LabelCluster = "localfleet.flotilla.io/cluster"
	// LabelNetwork is Istio's: istiod reads its cluster's network from the
	// label on its own namespace.
	LabelNetwork = "topology.istio.io/network"
)

// Options configure Start.
type Options struct {
	// Clusters is the number of clusters, at least 1.
	Clusters int
	// NamePrefix names the clusters NamePrefix1 … NamePrefixN.
	NamePrefix string
	// Dir is the fleet directory. It is created if absent.
	Dir string
	// BinDir holds the etcd and kube-apiserver executables.
	BinDir string
	// CRDs is the path of Istio's CRD YAML.
	CRDs string
	// Workloads adds kube-controller-manager, kube-scheduler and kwok to
	// every cluster (see cluster.Spec.Workloads).
	Workloads bool
	// Istio adds an istiod (pilot-discovery) to every cluster but the bare
	// ones, started once Istio's CRDs are installed.
	Istio bool
	// Bare is how many clusters, the last ones, are started bare: without
	// Istio's CRDs, the istio-system namespace and istiod, as a cluster that
	// was never prepared for Istio. 0 to Clusters.
	Bare int
	// RunIstiods makes every cluster run a real istiod for each istiod
	// Deployment in its istio-system (cluster.RunDeployedIstiods), as
	// Flotilla's agent installs them with Istio's chart; bare clusters
	// are the main case. Without Workloads, the clusters also write those
	// Deployments' statuses, from whether their istiods are ready.
	RunIstiods bool
	// Log receives progress messages.
	Log *slog.Logger
}

// Manifest describes a running fleet. It is the contract between this tool
// and its users (internal/testfleet reads it); add fields, never rename them.
type Manifest struct {
	// SupervisorPID is the process that owns every cluster process.
	// Signalling it with SIGTERM stops the fleet.
	SupervisorPID int `json:"supervisorPid"`
	// Clusters are in name order: c1, c2, ….
	Clusters []ClusterInfo `json:"clusters"`
}

// ClusterInfo describes one running cluster.
type ClusterInfo struct {
	Name string `json:"name"`
	// Server is the API server URL.
	Server string `json:"server"`
	// Kubeconfig is the absolute path of the administrator kubeconfig.
	Kubeconfig string `json:"kubeconfig"`
	Region     string `json:"region"`
	Zone       string `json:"zone"`
	// Network is the cluster's Istio network, network-i.
	Network string `json:"network"`
	// PIDs maps component name ("etcd", "kube-apiserver", with workloads
	// "kube-controller-manager", "kube-scheduler", "kwok", and with Istio
	// "istiod") to process id.
	PIDs map[string]int `json:"pids"`
	// Istiod is where the cluster's istiod listens; nil without Istio.
	Istiod *cluster.IstiodAddrs `json:"istiod,omitempty"`
	// Istiods are, by revision, the istiods run for the cluster's istiod
	// Deployments (RunIstiods) that are ready; nil when none is.
	Istiods map[string]cluster.DeployedIstiod `json:"istiods,omitempty"`
	// Bare is true for a cluster started without Istio's CRDs, the
	// istio-system namespace and istiod. Network is still the one it would be
	// labelled with.
	Bare bool `json:"bare,omitempty"`
	// Stopped is true while the cluster is stopped (StopCluster, `localfleet
	// stop`); PIDs is then empty. Its data, Server and Kubeconfig stay valid
	// for StartCluster.
	Stopped bool `json:"stopped,omitempty"`
}

// Topology returns the region, zone and Istio network of the i-th cluster,
// counting from 1: region-i, zone-ia and network-i, so every cluster has its
// own.
func Topology(i int) (region, zone, network string) {
	return "region-" + strconv.Itoa(i), "zone-" + strconv.Itoa(i) + "a", "network-" + strconv.Itoa(i)
}

// Fleet is a running set of clusters. Stop must be called to end it. Its
// methods are safe for concurrent use.
type Fleet struct {
	dir      string
	log      *slog.Logger
	clusters []*cluster.Cluster
	// failed holds the first exit of a component that nobody stopped.
	failed chan error

	// ops serializes StopCluster and StartCluster, so that the manifest
	// they write follows the order of what they did.
	ops sync.Mutex
	// mu guards manifest.
	mu       sync.Mutex
	manifest Manifest
}

// Start starts every cluster in parallel and returns when all are ready with
// Istio's CRDs Established. If any cluster fails, all are stopped and the
// errors of every failed cluster are returned.
func Start(ctx context.Context, opts Options) (*Fleet, error) {
	if opts.Clusters < 1 {
		return nil, fmt.Errorf("clusters must be at least 1, got %d", opts.Clusters)
	}
	if opts.Bare < 0 || opts.Bare > opts.Clusters {
		return nil, fmt.Errorf("bare clusters must be 0 to %d (the number of clusters), got %d", opts.Clusters, opts.Bare)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("fleet dir %s: %w", opts.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create fleet dir: %w", err)
	}
	crds, err := istio.LoadCRDs(opts.CRDs)
	if err != nil {
		return nil, err
	}

	f := &Fleet{
		dir:      dir,
		log:      opts.Log,
		clusters: make([]*cluster.Cluster, opts.Clusters),
		failed:   make(chan error, 1),
		manifest: Manifest{SupervisorPID: os.Getpid(), Clusters: make([]ClusterInfo, opts.Clusters)},
	}
	// The first failure cancels the other clusters' starts.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, opts.Clusters)
	var wg sync.WaitGroup
	for i := range opts.Clusters {
		wg.Go(func() {
			name := opts.NamePrefix + strconv.Itoa(i+1)
			region, zone, network := Topology(i + 1)
			bare := i >= opts.Clusters-opts.Bare
			spec := cluster.Spec{
				Name:       name,
				Dir:        filepath.Join(dir, name),
				Kubeconfig: filepath.Join(dir, name+".kubeconfig"),
				BinDir:     opts.BinDir,
				Workloads:  opts.Workloads,
				Region:     region,
				Zone:       zone,
				OnExit:     f.componentExited,
			}
			c, err := cluster.Start(ctx, spec, opts.Log)
			if err != nil {
				errs[i] = err
				cancel()
				return
			}
			f.clusters[i] = c
			info := ClusterInfo{Name: name, Server: c.Server, Kubeconfig: spec.Kubeconfig, Region: region, Zone: zone, Network: network, Bare: bare}
			if !bare {
				labels := map[string]string{LabelRegion: region, LabelZone: zone, LabelCluster: name, LabelNetwork: network}
				if err := istio.Install(ctx, c.Config, crds, labels); err != nil {
					errs[i] = fmt.Errorf("prepare cluster %s: %w", name, err)
					cancel()
					return
				}
			}
			if opts.Istio && !bare {
				addrs, err := c.StartIstiod(ctx, cluster.IstiodSpec{Network: network}, opts.Log)
				if err != nil {
					errs[i] = err
					cancel()
					return
				}
				info.Istiod = &addrs
			}
			info.PIDs = c.PIDs()
			f.manifest.Clusters[i] = info
			opts.Log.Info("cluster ready", "cluster", name, "server", c.Server, "bare", bare)
		})
	}
	wg.Wait()
	if err := firstCauses(errs); err != nil {
		f.Stop()
		return nil, err
	}
	if err := WriteManifest(dir, f.manifest); err != nil {
		f.Stop()
		return nil, err
	}
	if opts.RunIstiods {
		for i, c := range f.clusters {
			if err := c.RunDeployedIstiods(opts.Log, func(istiods map[string]cluster.DeployedIstiod) { f.istiodsChanged(i, istiods) }); err != nil {
				f.Stop()
				return nil, err
			}
		}
	}
	return f, nil
}

// firstCauses joins the errors that are not merely the cancellation caused by
// another cluster's failure; if all are cancellations, it joins them all.
func firstCauses(errs []error) error {
	var causes []error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			causes = append(causes, err)
		}
	}
	if len(causes) == 0 {
		return errors.Join(errs...)
	}
	return errors.Join(causes...)
}

// Manifest returns the description of the fleet.
func (f *Fleet) Manifest() Manifest {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.manifest
	m.Clusters = slices.Clone(m.Clusters)
	return m
}

// Failed returns a channel that receives the first exit of a component that
// neither Stop nor StopCluster asked for, as an error naming the cluster and
// the component.
func (f *Fleet) Failed() <-chan error { return f.failed }

func (f *Fleet) componentExited(err error) {
	select {
	case f.failed <- err:
	default: // the first failure is already waiting
	}
}

// StopCluster stops cluster name as a crash would (every process SIGKILLed,
// istiod included) and marks it stopped in fleet.json. Its etcd data, ports
// and credentials are kept for StartCluster; the other clusters are left
// alone.
func (f *Fleet) StopCluster(name string) error {
	f.ops.Lock()
	defer f.ops.Unlock()
	i, err := f.index(name)
	if err != nil {
		return err
	}
	if err := f.clusters[i].Kill(); err != nil {
		return err
	}
	f.log.Info("cluster stopped", "cluster", name)
	return f.update(i)
}

// StartCluster starts a cluster that StopCluster stopped, on the same data,
// ports and credentials, and returns once it is as ready as Start left it.
func (f *Fleet) StartCluster(ctx context.Context, name string) error {
	f.ops.Lock()
	defer f.ops.Unlock()
	i, err := f.index(name)
	if err != nil {
		return err
	}
	if err := f.clusters[i].Restart(ctx, f.log); err != nil {
		return err
	}
	f.log.Info("cluster started again", "cluster", name, "server", f.clusters[i].Server)
	return f.update(i)
}

// index returns the position of cluster name.
func (f *Fleet) index(name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for i, c := range f.manifest.Clusters {
		if c.Name == name {
			return i, nil
		}
		names = append(names, c.Name)
	}
	return 0, fmt.Errorf("no cluster %q in the fleet; its clusters are %s", name, strings.Join(names, ", "))
}

// update records the processes of cluster i in the manifest and writes it.
func (f *Fleet) update(i int) error {
	pids := f.clusters[i].PIDs()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.manifest.Clusters[i].PIDs = pids
	f.manifest.Clusters[i].Stopped = len(pids) == 0
	return WriteManifest(f.dir, f.manifest)
}

// istiodsChanged records the ready istiods of cluster i's Deployments and
// writes the manifest.
func (f *Fleet) istiodsChanged(i int, istiods map[string]cluster.DeployedIstiod) {
	if len(istiods) == 0 {
		istiods = nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.manifest.Clusters[i].Istiods = istiods
	if err := WriteManifest(f.dir, f.manifest); err != nil {
		f.log.Warn("fleet.json does not show the istiods of Deployments", "cluster", f.manifest.Clusters[i].Name, "err", err)
	}
}

// Stop stops every cluster in parallel and waits for all processes to exit.
func (f *Fleet) Stop() {
	var wg sync.WaitGroup
	for _, c := range f.clusters {
		if c != nil {
			wg.Go(c.Stop)
		}
	}
	wg.Wait()
}

// WriteManifest atomically writes m to DIR/fleet.json.
func WriteManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	tmp := filepath.Join(dir, ManifestFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestFile)); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// ReadManifest reads DIR/fleet.json.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("decode %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}
