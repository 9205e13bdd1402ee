package compile

import (
	"slices"
	"strconv"
	"strings"
	"time"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/selector"
)

const networkingAPIVersion = "networking.istio.io/v1"

// trafficObjects writes namespace ns's Sidecar (reachability, egress) and
// its DestinationRule for "*.<ns>.svc.cluster.local" (connection pool,
// outlier detection). Timeouts and retries go into the routes of the
// namespace's ServiceRoutes.
func (c *compilation) trafficObjects(ns string, s *namespaceSettings) {
	reach, hasReach := s.fields["traffic.reachability"]
	egress, hasEgress := s.fields["traffic.egress"]
	if hasReach || hasEgress {
		owner := egress.Source
		hosts := []string{"*/*"}
		if hasReach {
			owner = reach.Source
			hosts = c.reachableHosts(ns, s, reach)
		}
		spec := map[string]any{"egress": []any{map[string]any{"hosts": anyStrings(hosts)}}}
		if hasEgress {
			e := egress.Value.(*pb.Egress)
			spec["outboundTrafficPolicy"] = map[string]any{
				"mode":        "ALLOW_ANY",
				"egressProxy": map[string]any{"host": e.GetHost(), "port": map[string]any{"number": int64(e.GetPort())}},
			}
		}
		if why := c.wideTaken("Sidecar", ns); why != "" {
			c.diag(owner, "", "%s", why)
		} else {
			c.emit(owner, networkingAPIVersion, "Sidecar", ns, SettingsObjectName, spec)
		}
	}
	policy, owner := trafficPolicy(s)
	if policy == nil {
		return
	}
	host := "*." + ns + ".svc.cluster.local"
	if dr, ok := c.userDRs[host]; ok {
		c.diag(owner, "", "the cluster's own DestinationRule %s for %s is kept, so the connection pool and outlier detection of namespace %s are not applied: remove it, or let Flotilla's settings go", dr, host, ns)
		return
	}
	c.emit(owner, networkingAPIVersion, "DestinationRule", ns, SettingsObjectName, map[string]any{
		"host":          host,
		"trafficPolicy": policy,
	})
}

// trafficPolicy is a DestinationRule trafficPolicy from the namespace's
// connection pool and outlier detection, and the setting that owns it (the
// one that set the connection pool, else the outlier detection); nil when
// neither is set.
func trafficPolicy(s *namespaceSettings) (map[string]any, string) {
	cp, hasCP := s.fields["traffic.resilience.connectionPool"]
	od, hasOD := s.fields["traffic.resilience.outlierDetection"]
	if !hasCP && !hasOD {
		return nil, ""
	}
	policy := map[string]any{}
	owner := od.Source
	if hasCP {
		owner = cp.Source
		policy["connectionPool"] = connectionPoolSpec(cp.Value.(*pb.ConnectionPool))
	}
	if hasOD {
		policy["outlierDetection"] = outlierDetectionSpec(od.Value.(*pb.OutlierDetection))
	}
	return policy, owner
}

// reachableHosts are the Sidecar egress hosts of ns for its reachability:
// always istio-system and the multicluster namespace, so the control plane
// and remote services stay reachable.
func (c *compilation) reachableHosts(ns string, s *namespaceSettings, f Setting) []string {
	r := f.Value.(*pb.Reachability)
	var hosts []string
	switch r.GetMode() {
	case "CLUSTER":
		return []string{"*/*"}
	case "NAMESPACE":
		hosts = []string{"./*"}
	case "GROUP":
		hosts = c.namespaceHosts(f.scope, c.groups[f.scope].Namespaces)
	case "WORKSPACE":
		hosts = c.namespaceHosts(s.workspace, c.groups[s.workspace].Namespaces)
	case "CUSTOM":
		hosts = slices.Clone(r.GetHosts())
	}
	hosts = append(hosts, "istio-system/*", MulticlusterNamespace+"/*")
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// namespaceHosts are "<ns>/*" for each existing namespace that patterns
// select in this cluster, computed once per group.
func (c *compilation) namespaceHosts(group string, patterns []string) []string {
	if h, ok := c.hostsOf[group]; ok {
		return slices.Clone(h)
	}
	var hosts []string
	if sel, err := selector.ParseSet(patterns); err == nil {
		for _, ns := range c.sortedNamespaces() {
			if sel.Match(c.cluster, ns) {
				hosts = append(hosts, ns+"/*")
			}
		}
	}
	if c.hostsOf == nil {
		c.hostsOf = map[string][]string{}
	}
	c.hostsOf[group] = hosts
	return slices.Clone(hosts)
}

func connectionPoolSpec(p *pb.ConnectionPool) map[string]any {
	tcp, http := map[string]any{}, map[string]any{}
	if v := p.GetMaxConnections(); v > 0 {
		tcp["maxConnections"] = int64(v)
	}
	if v := p.GetConnectTimeout(); v != "" {
		tcp["connectTimeout"] = protoDuration(v)
	}
	if v := p.GetHttp1MaxPendingRequests(); v > 0 {
		http["http1MaxPendingRequests"] = int64(v)
	}
	if v := p.GetHttp2MaxRequests(); v > 0 {
		http["http2MaxRequests"] = int64(v)
	}
	if v := p.GetMaxRequestsPerConnection(); v > 0 {
		http["maxRequestsPerConnection"] = int64(v)
	}
	out := map[string]any{}
	if len(tcp) > 0 {
		out["tcp"] = tcp
	}
	if len(http) > 0 {
		out["http"] = http
	}
	return out
}

func outlierDetectionSpec(o *pb.OutlierDetection) map[string]any {
	out := map[string]any{}
	if v := o.GetConsecutive_5XxErrors(); v > 0 {
		out["consecutive5xxErrors"] = int64(v)
	}
	if v := o.GetInterval(); v != "" {
		out["interval"] = protoDuration(v)
	}
	if v := o.GetBaseEjectionTime(); v != "" {
		out["baseEjectionTime"] = protoDuration(v)
	}
	if v := o.GetMaxEjectionPercent(); v > 0 {
		out["maxEjectionPercent"] = int64(v)
	}
	return out
}

func retriesSpec(r *pb.Retries) map[string]any {
	out := map[string]any{"attempts": int64(r.GetAttempts())}
	if v := r.GetPerTryTimeout(); v != "" {
		out["perTryTimeout"] = protoDuration(v)
	}
	if v := r.GetRetryOn(); v != "" {
		out["retryOn"] = v
	}
	return out
}

// protoDuration writes a duration the settings accept ("250ms", "1m30s",
// "10s") as protobuf's JSON form, seconds with the unit s ("0.250s", "90s"),
// which Istio's schema and every parser of the CRD accept.
func protoDuration(v string) string {
	d, err := time.ParseDuration(v)
	if err != nil {
		return v // validation refused it already
	}
	secs := strconv.FormatFloat(d.Seconds(), 'f', 9, 64)
	secs = strings.TrimRight(strings.TrimRight(secs, "0"), ".")
	return secs + "s"
}
