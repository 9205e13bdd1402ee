package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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

// StartIstiod starts istiod against the cluster's API server, as cluster ID
// Name, and returns once it reports ready. Call it after Istio's CRDs are
// Established and istio-system exists. istiod is stopped with the cluster.
// A start that fails because istiod exits early (a port taken between
// choosing it and binding it) is retried on new ports, up to three times.
func (c *Cluster) StartIstiod(ctx context.Context, spec IstiodSpec, log *slog.Logger) (IstiodAddrs, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var a IstiodAddrs
		a, err = c.startIstiod(ctx, spec, log)
		if err == nil {
			return a, nil
		}
		if !errors.Is(err, errExited) {
			break
		}
		log.Warn("retrying istiod start on new ports", "cluster", c.Name, "attempt", attempt, "err", err)
	}
	return IstiodAddrs{}, err
}

func (c *Cluster) startIstiod(ctx context.Context, spec IstiodSpec, log *slog.Logger) (IstiodAddrs, error) {
	ports, err := freePorts(5)
	if err != nil {
		return IstiodAddrs{}, err
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	a := IstiodAddrs{HTTP: addr(0), GRPC: addr(1), Monitoring: addr(2)}
	p, err := c.start(Istiod, []string{
		"discovery",
		"--kubeconfig=" + c.Kubeconfig,
		"--clusterID=" + c.Name,
		"--domain=cluster.local",
		"--httpAddr=" + a.HTTP,
		"--grpcAddr=" + a.GRPC,
		"--monitoringAddr=" + a.Monitoring,
		"--secureGRPCAddr=" + addr(3),
		"--httpsAddr=" + addr(4),
		// Absent files: istiod then reads the mesh config from the istio
		// ConfigMap, whose absence means Istio's defaults.
		"--meshConfig=" + filepath.Join(c.Dir, "mesh.yaml"),
		"--networksConfig=" + filepath.Join(c.Dir, "meshNetworks.yaml"),
		"--shutdownDuration=1s",
		"--log_output_level=default:info",
	}, append(istiodEnv, "ISTIO_META_NETWORK="+spec.Network, "CLUSTER_ID="+c.Name))
	if err != nil {
		return IstiodAddrs{}, err
	}
	log.Debug("started istiod", "cluster", c.Name, "pid", p.PID(), "xds", a.GRPC, "http", a.HTTP)
	err = poll(ctx, []*proc.Process{p}, "istiod at "+a.HTTP, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.HTTP+"/ready", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("istiod /ready: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		// A failed istiod is not part of the cluster: a supervisor watching
		// the cluster's components must not see it exit.
		p.Stop(stopGrace)
		c.forget(p)
		return IstiodAddrs{}, fmt.Errorf("start istiod in cluster %s: %w", c.Name, err)
	}
	return a, nil
}
