package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"

	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// Istiod is the component name of Istio's control plane (pilot-discovery,
// built from istio.io/istio by tools/localfleet/istiod).
const Istiod = "istiod"

// istiodEnv is added to istiod's environment: the namespace it runs in; a
// Gateway selects gateway pods of its own namespace only, as Flotilla's
// tenancy needs (else a tenant's Gateway would configure another tenant's
// gateway pods); and no Kubernetes Gateway API controller (the fleet
// installs only Istio's CRDs).
var istiodEnv = []string{
	"POD_NAMESPACE=istio-system",
	"POD_NAME=istiod-0",
	"PILOT_SCOPE_GATEWAY_TO_NAMESPACE=true",
	"PILOT_ENABLE_GATEWAY_API=false",
	"PILOT_ENABLE_GATEWAY_API_STATUS=false",
	"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false",
	"GOGC=50",
}

// IstiodAddrs are where a cluster's istiod listens, all on loopback.
type IstiodAddrs struct {
	// HTTP serves /ready and the debug endpoints (/debug/configz,
	// /debug/registryz, /debug/syncz, …).
	HTTP string `json:"http"`
	// GRPC serves xDS in plain text: what a test's proxy probe connects to.
	GRPC string `json:"grpc"`
	// Monitoring serves Prometheus metrics at /metrics.
	Monitoring string `json:"monitoring"`
}

// IstiodSpec configures StartIstiod.
type IstiodSpec struct {
	// Network is the cluster's Istio network (topology.istio.io/network).
	Network string
}

// istiodRun is how istiod was started, kept so that Restart starts it again
// on the same ports.
type istiodRun struct {
	spec  IstiodSpec
	ports istiodPorts
}

// istiodPorts are an istiod's loopback ports, in order: HTTP, gRPC,
// monitoring, secure gRPC and HTTPS (webhooks).
type istiodPorts []int

func newIstiodPorts() (istiodPorts, error) { return freePorts(5) }

func (p istiodPorts) addrs() IstiodAddrs {
	return IstiodAddrs{HTTP: loopback(p[0]), GRPC: loopback(p[1]), Monitoring: loopback(p[2])}
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// istiodArgs are the flags that every istiod of the cluster gets, the
// fleet's own (StartIstiod) and those of istiod Deployments
// (RunDeployedIstiods): the cluster's API server, and loopback ports of its
// own. They replace Istio's defaults (:8080, :15010, :15014, :15012 and
// :15017 on every interface, ControlZ on localhost:9876), which two istiods
// on one machine cannot share.
func (c *Cluster) istiodArgs(ports istiodPorts) []string {
	a := ports.addrs()
	return []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--httpAddr=" + a.HTTP,
		"--grpcAddr=" + a.GRPC,
		"--monitoringAddr=" + a.Monitoring,
		"--secureGRPCAddr=" + loopback(ports[3]),
		"--httpsAddr=" + loopback(ports[4]),
		"--ctrlz_port=0", // any free port, on localhost
		// Absent files: istiod then reads the mesh config from the istio
		// (or istio-<revision>) ConfigMap, whose absence means Istio's
		// defaults.
		"--meshConfig=" + filepath.Join(c.Dir, "mesh.yaml"),
		"--networksConfig=" + filepath.Join(c.Dir, "meshNetworks.yaml"),
		"--shutdownDuration=1s",
	}
}

// istiodReady is a check for poll: istiod at addr answers /ready with 200.
func istiodReady(addr string) func(context.Context) error {
	return httpOK("http://" + addr + "/ready")
}

// StartIstiod starts istiod against the cluster's API server, as cluster ID
// Name, and returns once it reports ready. Call it after Istio's CRDs are
// Established and istio-system exists. istiod is stopped with the cluster,
// and started again by Restart.
// A start that fails because istiod exits early (a port taken between
// choosing it and binding it) is retried on new ports, up to three times.
func (c *Cluster) StartIstiod(ctx context.Context, spec IstiodSpec, log *slog.Logger) (IstiodAddrs, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.procs) == 0 {
		return IstiodAddrs{}, fmt.Errorf("start istiod in cluster %s: the cluster is stopped", c.Name)
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var ports istiodPorts
		if ports, err = newIstiodPorts(); err != nil {
			break
		}
		run := istiodRun{spec: spec, ports: ports}
		var p *proc.Process
		if p, err = c.runIstiod(ctx, run, log); err == nil {
			c.istiod = &run
			c.watch(p)
			return run.ports.addrs(), nil
		}
		if !errors.Is(err, errExited) {
			break
		}
		log.Warn("retrying istiod start on new ports", "cluster", c.Name, "attempt", attempt, "err", err)
	}
	return IstiodAddrs{}, err
}

// runIstiod starts istiod as run says and waits until it reports ready.
func (c *Cluster) runIstiod(ctx context.Context, run istiodRun, log *slog.Logger) (*proc.Process, error) {
	a := run.ports.addrs()
	args := append([]string{
		"discovery",
		"--clusterID=" + c.Name,
		"--domain=cluster.local",
		"--log_output_level=default:info",
	}, c.istiodArgs(run.ports)...)
	p, err := c.start(Istiod, args, append(istiodEnv, "ISTIO_META_NETWORK="+run.spec.Network, "CLUSTER_ID="+c.Name))
	if err != nil {
		return nil, err
	}
	log.Debug("started istiod", "cluster", c.Name, "pid", p.PID(), "xds", a.GRPC, "http", a.HTTP)
	err = poll(ctx, []*proc.Process{p}, "istiod at "+a.HTTP, istiodReady(a.HTTP))
	if err != nil {
		// A failed istiod is not part of the cluster: a supervisor watching
		// the cluster's components must not see it exit.
		p.Stop(stopGrace)
		c.forget(p)
		return nil, fmt.Errorf("start istiod in cluster %s: %w", c.Name, err)
	}
	return p, nil
}
