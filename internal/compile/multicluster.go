package compile

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"flotilla.io/flotilla/internal/bundle"
)

// Names of what the multicluster pass writes.
const (
	// MulticlusterNamespace holds the ServiceEntries (and their
	// DestinationRules) of services that run only in other clusters. The
	// agent creates it.
	MulticlusterNamespace = "flotilla-multicluster"
	// EastWestGatewayName is the Istio Gateway of an east-west gateway.
	EastWestGatewayName = "flotilla-eastwest"
	// EastWestPort is Istio's AUTO_PASSTHROUGH port.
	EastWestPort = 15443
	// labelTLSMode tells the client sidecar to originate Istio mTLS to the
	// endpoint: the remote gateway passes it through by SNI.
	labelTLSMode = "security.istio.io/tlsMode"
)

// Outlier detection written into every failover DestinationRule: Istio
// fails over between localities only when outlier detection is set.
var failoverOutlierDetection = map[string]any{
	"consecutive5xxErrors":     int64(5),
	"consecutiveGatewayErrors": int64(5),
	"interval":                 "10s",
	"baseEjectionTime":         "30s",
	"maxEjectionPercent":       int64(100),
}

// multicluster compiles the bundle's Multicluster slice:
//   - an Istio Gateway per east-west gateway: on its Service's tls port (15443 when it reported none), TLS AUTO_PASSTHROUGH,
//     hosts *.local, selecting the gateway pods;
//   - per exposed service with ready instances elsewhere: when it also runs
//     here, one WorkloadEntry per remote cluster that the local Service
//     selects; when it runs only elsewhere, a MESH_INTERNAL ServiceEntry for
//     its svc.cluster.local host in MulticlusterNamespace. Either way the
//     remote endpoint is that cluster's east-west gateway on its port for
//     every service port name, with the remote locality, weight = its ready
//     endpoints, label security.istio.io/tlsMode=istio and no network field;
//   - a DestinationRule with outlier detection and locality failover.
//
// Instances with no ready endpoints get no traffic and are left out; a
// service with none left gets nothing, so traffic never goes into a black
// hole. Stale instances (their agent disconnected) stay: a lost control
// connection is not an outage, and outlier detection handles real failures.
func (c *compilation) multicluster(mc *bundle.Multicluster) {
	for _, ew := range mc.EastWest {
		if !c.namespaces[ew.Namespace] {
			c.diag(ew.Owner, "spec.eastWestGateway.workloadSelector.namespace",
				"namespace %q does not exist in cluster %s: the east-west gateway's Gateway is written there", ew.Namespace, c.cluster)
			continue
		}
		switch {
		case ew.Service == "":
			c.diag(ew.Owner, "spec.eastWestGateway.workloadSelector", "cluster %s has no east-west gateway Service (a Service labelled istio=eastwestgateway): the Gateway is written, but other clusters cannot reach this cluster's services until the gateway is deployed", c.cluster)
		case ew.Refused != "":
			c.diag(ew.Owner, "spec.eastWestGateway.workloadSelector", "cluster %s reports its east-west gateway Service %s at %s, outside the cluster's spec.addressRanges: other clusters do not send it traffic; fix the Service's address, or the ranges if they are wrong", c.cluster, ew.Service, ew.Refused)
		case ew.Address == "":
			c.diag(ew.Owner, "spec.eastWestGateway.workloadSelector", "the east-west gateway Service %s of cluster %s has no address: give it a LoadBalancer address, or annotate it with flotilla.io/external-address", ew.Service, c.cluster)
		}
		port := cmp.Or(ew.Port, EastWestPort) // the Service's: the port the other clusters' WorkloadEntries name
		c.emit(ew.Owner, "networking.istio.io/v1", "Gateway", ew.Namespace, EastWestGatewayName, map[string]any{
			"selector": stringMap(ew.Labels),
			"servers": []any{map[string]any{
				"port":  map[string]any{"number": int64(port), "name": "tls", "protocol": "TLS"},
				"tls":   map[string]any{"mode": "AUTO_PASSTHROUGH"},
				"hosts": []any{"*.local"},
			}},
		})
	}
	for _, s := range mc.Services {
		c.remoteService(s)
	}
}

func (c *compilation) remoteService(s bundle.RemoteService) {
	host := s.Name + "." + s.Namespace + ".svc.cluster.local"
	for _, conflict := range s.Conflicts {
		c.diag(s.Owner, "", "%s/%s: %s; the ports of the first cluster are used: give the service the same ports everywhere", s.Namespace, s.Name, conflict)
	}
	remotes := slices.Clone(s.Remotes)
	slices.SortStableFunc(remotes, func(a, b bundle.RemoteInstance) int { return strings.Compare(a.Cluster, b.Cluster) })
	var live []bundle.RemoteInstance
	for _, r := range remotes {
		switch {
		case r.Ready == 0:
			// Scaled to zero there: no traffic goes to it.
		case r.Refused != "":
			c.diag(s.Owner, "spec.eastWestGateway", "cluster %s runs %s/%s but reports its east-west gateway at %s, outside that cluster's spec.addressRanges: no traffic goes there; fix the gateway's address, or the ranges if they are wrong",
				r.Cluster, s.Namespace, s.Name, r.Refused)
		case r.Address == "":
			c.diag(s.Owner, "spec.eastWestGateway", "cluster %s runs %s/%s but its east-west gateway has no address: give the gateway's Service a LoadBalancer address, or annotate it with flotilla.io/external-address",
				r.Cluster, s.Namespace, s.Name)
		default:
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	var ports []bundle.ServicePort
	for _, p := range s.Ports {
		if strings.EqualFold(p.Protocol, "UDP") || strings.EqualFold(p.Protocol, "SCTP") {
			continue // Istio carries TCP only
		}
		ports = append(ports, p)
	}
	if len(ports) == 0 {
		return
	}
	gatewayPorts := func(r bundle.RemoteInstance) map[string]any {
		out := map[string]any{}
		for _, p := range ports {
			out[portName(p)] = int64(r.Port)
		}
		return out
	}
	ns := MulticlusterNamespace
	if s.Local {
		ns = s.Namespace
		if !c.namespaces[ns] {
			return // the service's namespace is gone here: nothing selects the entries
		}
		for _, r := range live {
			labels := stringMap(s.Selector)
			labels[labelTLSMode] = "istio"
			c.emit(s.Owner, "networking.istio.io/v1", "WorkloadEntry", ns, objectName(s.Name, r.Cluster), map[string]any{
				"address":  r.Address,
				"ports":    gatewayPorts(r),
				"labels":   labels,
				"locality": locality(r),
				"weight":   int64(r.Ready),
			})
		}
	} else {
		if !c.namespaces[ns] {
			c.diag(s.Owner, "", "namespace %s does not exist in cluster %s yet (the agent creates it): %s/%s is not reachable there until it does", ns, c.cluster, s.Namespace, s.Name)
			return
		}
		var sePorts, endpoints []any
		for _, p := range ports {
			sePorts = append(sePorts, map[string]any{"number": int64(p.Number), "name": portName(p), "protocol": istioProtocol(p)})
		}
		for _, r := range live {
			endpoints = append(endpoints, map[string]any{
				"address":  r.Address,
				"ports":    gatewayPorts(r),
				"labels":   map[string]any{labelTLSMode: "istio"},
				"locality": locality(r),
				"weight":   int64(r.Ready),
			})
		}
		c.emit(s.Owner, "networking.istio.io/v1", "ServiceEntry", ns, objectName(s.Namespace, s.Name), map[string]any{
			"hosts":      []any{host},
			"location":   "MESH_INTERNAL",
			"resolution": "STATIC",
			"ports":      sePorts,
			"endpoints":  endpoints,
		})
	}
	if dr := c.userDRs[host]; dr != "" {
		c.diag(s.Owner, "", "cluster %s has its own DestinationRule %s for %s, so Flotilla writes none and leaves it alone: failover across clusters needs trafficPolicy.outlierDetection (e.g. consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s) and trafficPolicy.loadBalancer.localityLbSetting.enabled: true in it",
			c.cluster, dr, host)
		return
	}
	lb := map[string]any{"enabled": true}
	if len(s.FailoverPriority) > 0 {
		var fp []any
		for _, l := range s.FailoverPriority {
			fp = append(fp, l)
		}
		lb["failoverPriority"] = fp
	}
	if c.routed(host) {
		c.failoverLB[host] = lb // the ServiceRoute's DestinationRule carries it
		return
	}
	name := objectName("flotilla", s.Name)
	if !s.Local {
		name = objectName(s.Namespace, s.Name)
	}
	c.emit(s.Owner, "networking.istio.io/v1", "DestinationRule", ns, name, map[string]any{
		"host": host,
		"trafficPolicy": map[string]any{
			"loadBalancer":     map[string]any{"localityLbSetting": lb},
			"outlierDetection": maps.Clone(failoverOutlierDetection),
		},
	})
}

// portName is the name a port goes by in the endpoints' port maps; an
// unnamed port is named after its number.
func portName(p bundle.ServicePort) string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("port-%d", p.Number)
}

// istioProtocol derives the protocol Istio would select from the port's
// name prefix (http, http2, https, grpc, tls…); TCP otherwise.
func istioProtocol(p bundle.ServicePort) string {
	prefix, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	switch prefix {
	case "http", "http2", "https", "grpc", "tls", "mongo", "redis", "mysql":
		return strings.ToUpper(prefix)
	}
	return "TCP"
}

func locality(r bundle.RemoteInstance) string {
	switch {
	case r.Region == "":
		return ""
	case r.Zone == "":
		return r.Region
	}
	return r.Region + "/" + r.Zone
}

// objectName joins parts with "-"; a name longer than 63 characters keeps
// its first 52 and a hash of the whole, so it stays a valid, unique name.
func objectName(parts ...string) string {
	n := strings.Join(parts, "-")
	if len(n) <= 63 {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	return strings.TrimRight(n[:52], "-.") + "-" + hex.EncodeToString(sum[:5])
}
