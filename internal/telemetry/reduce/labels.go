package reduce

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
)

// ClusterLabel names the label the Reducer adds to every reduced series.
const ClusterLabel = "cluster"

// families maps the name of every raw series in scope to the metric family
// it belongs to: the family names the drop counter and groups a histogram's
// series for the budget.
var families = map[string]string{
	"istio_requests_total":                       "istio_requests_total",
	"istio_request_duration_milliseconds_bucket": "istio_request_duration_milliseconds",
	"istio_request_duration_milliseconds_sum":    "istio_request_duration_milliseconds",
	"istio_request_duration_milliseconds_count":  "istio_request_duration_milliseconds",
	"istio_tcp_sent_bytes_total":                 "istio_tcp_sent_bytes_total",
	"istio_tcp_received_bytes_total":             "istio_tcp_received_bytes_total",
	"istio_tcp_connections_opened_total":         "istio_tcp_connections_opened_total",
	"istio_tcp_connections_closed_total":         "istio_tcp_connections_closed_total",
}

// keep is the allowlist of raw labels that survive reduction. Every other
// label is dropped: pod, pod_name, instance, every *_ip label, versions,
// principals, response_flags and whatever a scrape or federation adds (job,
// namespace). source_cluster and destination_cluster are kept beyond
// Istio's recording rules because a fleet's cross-cluster edges need them,
// and they take one value per cluster.
var keep = map[string]bool{
	"reporter":                       true,
	"source_workload":                true,
	"source_workload_namespace":      true,
	"source_canonical_service":       true,
	"source_cluster":                 true,
	"destination_workload":           true,
	"destination_workload_namespace": true,
	"destination_service":            true,
	"destination_service_name":       true,
	"destination_service_namespace":  true,
	"destination_canonical_service":  true,
	"destination_cluster":            true,
	"request_protocol":               true,
	"response_code":                  true,
	"grpc_response_status":           true,
	"connection_security_policy":     true,
}

// reducedLabels returns the sorted label set of the reduced series that the
// raw series (name, raw) adds to:
//   - __name__ is kept and cluster is set to the Reducer's cluster;
//   - a label in keep survives, unless its value is empty or an IP address
//     or IP:port (a passthrough destination_service, say), which would give
//     one series per address;
//   - response_code becomes its class: 2xx for 200 to 299, and so on for 1xx
//     to 5xx; "0" (no response) stays; any other value becomes "other";
//   - le survives on _bucket series, in Prometheus's canonical float form,
//     so that le="1" from a proxy and le="1.0" from a federating Prometheus
//     are the same bucket.
func reducedLabels(cluster, name string, raw map[string]string, isBucket bool) []prompb.Label {
	out := make([]prompb.Label, 0, len(keep)+3)
	out = append(out, prompb.Label{Name: model.MetricNameLabel, Value: name}, prompb.Label{Name: ClusterLabel, Value: cluster})
	for n, v := range raw {
		switch {
		case n == model.BucketLabel && isBucket:
			out = append(out, prompb.Label{Name: n, Value: canonicalLe(v)})
		case !keep[n] || v == "" || isAddress(v):
		case n == "response_code":
			out = append(out, prompb.Label{Name: n, Value: codeClass(v)})
		default:
			out = append(out, prompb.Label{Name: n, Value: v})
		}
	}
	slices.SortFunc(out, func(a, b prompb.Label) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func isAddress(v string) bool {
	if _, err := netip.ParseAddr(v); err == nil {
		return true
	}
	_, err := netip.ParseAddrPort(v)
	return err == nil
}

func codeClass(code string) string {
	if code == "0" {
		return code
	}
	n, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || n < 100 || n > 599 {
		return "other"
	}
	return code[:1] + "xx"
}

func canonicalLe(v string) string {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return v
	}
	return labels.FormatOpenMetricsFloat(f)
}
