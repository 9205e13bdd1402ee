// Package fleet starts and stops a local fleet: N clusters started in
// parallel, each prepared for Istio, and described by DIR/fleet.json.
//
//	Start ──┬─ cluster.Start(c1) ── istio.Install(c1) ── [StartIstiod(c1)] ──┬── WriteManifest ── (serve) ── Stop
//	        └─ cluster.Start(c2) ── istio.Install(c2) ── [StartIstiod(c2)] ──┘
//
// Layout of DIR:
//
//	fleet.json           the Manifest, written once every cluster is ready
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
	"strconv"
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
	// Istio adds an istiod (pilot-discovery) to every cluster, started once
	// Istio's CRDs are installed.
	Istio bool
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
}

// Topology returns the region, zone and Istio network of the i-th cluster,
// counting from 1: region-i, zone-ia and network-i, so every cluster has its
// own.
func Topology(i int) (region, zone, network string) {
	return "region-" + strconv.Itoa(i), "zone-" + strconv.Itoa(i) + "a", "network-" + strconv.Itoa(i)
}

// Fleet is a running set of clusters. Stop must be called to end it.
type Fleet struct {
	clusters []*cluster.Cluster
	manifest Manifest
}

// Start starts every cluster in parallel and returns when all are ready with
// Istio's CRDs Established. If any cluster fails, all are stopped and the
// errors of every failed cluster are returned.
func Start(ctx context.Context, opts Options) (*Fleet, error) {
	if opts.Clusters < 1 {
		return nil, fmt.Errorf("clusters must be at least 1, got %d", opts.Clusters)
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
		clusters: make([]*cluster.Cluster, opts.Clusters),
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
			spec := cluster.Spec{
				Name:       name,
				Dir:        filepath.Join(dir, name),
				Kubeconfig: filepath.Join(dir, name+".kubeconfig"),
				BinDir:     opts.BinDir,
				Workloads:  opts.Workloads,
				Region:     region,
				Zone:       zone,
			}
			c, err := cluster.Start(ctx, spec, opts.Log)
			if err != nil {
				errs[i] = err
				cancel()
				return
			}
			f.clusters[i] = c
			labels := map[string]string{LabelRegion: region, LabelZone: zone, LabelCluster: name, LabelNetwork: network}
			if err := istio.Install(ctx, c.Config, crds, labels); err != nil {
				errs[i] = fmt.Errorf("prepare cluster %s: %w", name, err)
				cancel()
				return
			}
			info := ClusterInfo{Name: name, Server: c.Server, Kubeconfig: spec.Kubeconfig, Region: region, Zone: zone, Network: network}
			if opts.Istio {
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
			opts.Log.Info("cluster ready", "cluster", name, "server", c.Server)
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
func (f *Fleet) Manifest() Manifest { return f.manifest }

// Exited returns a channel that receives an error whenever a component of any
// cluster exits, including exits caused by Stop.
func (f *Fleet) Exited() <-chan error {
	n := 0
	for _, c := range f.clusters {
		n += len(c.PIDs())
	}
	ch := make(chan error, n)
	for _, c := range f.clusters {
		go func() {
			from := c.Exited()
			for range len(c.PIDs()) {
				ch <- <-from
			}
		}()
	}
	return ch
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
