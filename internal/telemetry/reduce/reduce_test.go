package reduce

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/prometheus/prompb"
)

// smp builds a raw sample from a name, a value and label pairs.
func smp(name string, v float64, kv ...string) Sample {
	ls := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		ls[kv[i]] = kv[i+1]
	}
	return Sample{Name: name, Labels: ls, Value: v}
}

// req is an istio_requests_total sample from a pod of workload wl.
func req(v float64, wl, pod string, kv ...string) Sample {
	return smp("istio_requests_total", v, append([]string{"destination_workload", wl, "pod", pod, "response_code", "200"}, kv...)...)
}

// render prints reduced series one a line: name{labels but cluster} value @ts.
func render(tss []prompb.TimeSeries) []string {
	var out []string
	for _, ts := range tss {
		var name string
		var ls []string
		for _, l := range ts.Labels {
			switch l.Name {
			case "__name__":
				name = l.Value
			case ClusterLabel:
			default:
				ls = append(ls, l.Name+"="+l.Value)
			}
		}
		for _, s := range ts.Samples {
			out = append(out, fmt.Sprintf("%s{%s} %g @%d", name, strings.Join(ls, ","), s.Value, s.Timestamp))
		}
	}
	return out
}

type scrape struct {
	target  string
	ts      int64
	samples []Sample
	forget  bool // Forget(target) instead of observing it
}

func TestReducer(t *testing.T) {
	tests := []struct {
		name        string
		budget      int
		scrapes     []scrape
		want        []string
		wantDropped map[string]uint64
	}{
		{
			name: "two pods of one workload sum into one series without pod labels",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(3, "web", "web-1", "instance", "10.0.0.1:15020", "source_ip", "10.0.0.9")}},
				{target: "b", ts: 2, samples: []Sample{req(4, "web", "web-2", "instance", "10.0.0.2:15020", "source_ip", "10.0.0.8")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 7 @2"},
		},
		{
			name: "a restarted proxy's counter keeps the reduced series monotonic",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(10, "web", "web-1")}},
				{target: "a", ts: 2, samples: []Sample{req(15, "web", "web-1")}},
				{target: "a", ts: 3, samples: []Sample{req(3, "web", "web-1")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 18 @3"},
		},
		{
			name: "one of two targets restarting only adds its new value",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(10, "web", "web-1")}},
				{target: "b", ts: 1, samples: []Sample{req(20, "web", "web-2")}},
				{target: "a", ts: 2, samples: []Sample{req(12, "web", "web-1")}},
				{target: "b", ts: 2, samples: []Sample{req(2, "web", "web-2")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 34 @2"},
		},
		{
			name: "a target that disappears keeps its total and a new pod adds to it",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(10, "web", "web-1")}},
				{target: "a", forget: true},
				{target: "b", ts: 2, samples: []Sample{req(4, "web", "web-2")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 14 @2"},
		},
		{
			name: "a series absent from a scrape counts in full when it comes back",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(10, "web", "web-1")}},
				{target: "a", ts: 2, samples: nil},
				{target: "a", ts: 3, samples: []Sample{req(12, "web", "web-1")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 22 @3"},
		},
		{
			name: "a federated scrape of many proxies tracks each raw series apart",
			scrapes: []scrape{
				{target: "federate", ts: 1, samples: []Sample{req(10, "web", "web-1"), req(20, "web", "web-2")}},
				{target: "federate", ts: 2, samples: []Sample{req(11, "web", "web-1"), req(1, "web", "web-2")}},
			},
			want: []string{"istio_requests_total{destination_workload=web,response_code=2xx} 32 @2"},
		},
		{
			name: "response codes of one class share a series",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{
					req(1, "web", "web-1", "response_code", "200"),
					req(2, "web", "web-1", "response_code", "204"),
					req(4, "web", "web-1", "response_code", "503"),
				}},
			},
			want: []string{
				"istio_requests_total{destination_workload=web,response_code=2xx} 3 @1",
				"istio_requests_total{destination_workload=web,response_code=5xx} 4 @1",
			},
		},
		{
			name: "histogram buckets keep le and sum across pods",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{
					smp("istio_request_duration_milliseconds_bucket", 1, "le", "5", "pod", "p1"),
					smp("istio_request_duration_milliseconds_bucket", 2, "le", "+Inf", "pod", "p1"),
					smp("istio_request_duration_milliseconds_sum", 9, "pod", "p1"),
					smp("istio_request_duration_milliseconds_count", 2, "pod", "p1"),
				}},
				{target: "b", ts: 1, samples: []Sample{
					smp("istio_request_duration_milliseconds_bucket", 3, "le", "5.0", "pod", "p2"),
					smp("istio_request_duration_milliseconds_bucket", 3, "le", "+Inf", "pod", "p2"),
					smp("istio_request_duration_milliseconds_sum", 6, "pod", "p2"),
					smp("istio_request_duration_milliseconds_count", 3, "pod", "p2"),
				}},
			},
			want: []string{
				"istio_request_duration_milliseconds_bucket{le=+Inf} 5 @1",
				"istio_request_duration_milliseconds_bucket{le=5.0} 4 @1",
				"istio_request_duration_milliseconds_count{} 5 @1",
				"istio_request_duration_milliseconds_sum{} 15 @1",
			},
		},
		{
			name: "tcp counters are reduced like requests",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{
					smp("istio_tcp_sent_bytes_total", 100, "destination_workload", "db", "pod", "p1"),
					smp("istio_tcp_received_bytes_total", 50, "destination_workload", "db", "pod", "p1"),
					smp("istio_tcp_connections_opened_total", 2, "destination_workload", "db", "pod", "p1"),
					smp("istio_tcp_connections_closed_total", 1, "destination_workload", "db", "pod", "p1"),
				}},
			},
			want: []string{
				"istio_tcp_connections_closed_total{destination_workload=db} 1 @1",
				"istio_tcp_connections_opened_total{destination_workload=db} 2 @1",
				"istio_tcp_received_bytes_total{destination_workload=db} 50 @1",
				"istio_tcp_sent_bytes_total{destination_workload=db} 100 @1",
			},
		},
		{
			name: "metrics outside Istio's standard set are ignored",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{
					smp("envoy_cluster_upstream_cx_total", 7, "pod", "p1"),
					smp("istio_build", 1),
				}},
			},
		},
		{
			name: "negative and NaN values are skipped",
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(-1, "web", "web-1"), req(math.NaN(), "api", "api-1"), req(math.Inf(1), "db", "db-1")}},
			},
		},
		{
			name:   "past the budget a new series is dropped and counted while existing ones update",
			budget: 1,
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{req(5, "web", "web-1")}},
				{target: "a", ts: 2, samples: []Sample{req(7, "web", "web-1"), req(3, "api", "api-1")}},
				{target: "a", ts: 3, samples: []Sample{req(8, "web", "web-1"), req(4, "api", "api-1")}},
			},
			want:        []string{"istio_requests_total{destination_workload=web,response_code=2xx} 8 @3"},
			wantDropped: map[string]uint64{"istio_requests_total": 2},
		},
		{
			name:   "a histogram is admitted whole or not at all",
			budget: 3,
			scrapes: []scrape{
				{target: "a", ts: 1, samples: []Sample{
					req(1, "web", "web-1"),
					smp("istio_request_duration_milliseconds_bucket", 1, "le", "5"),
					smp("istio_request_duration_milliseconds_bucket", 1, "le", "+Inf"),
					smp("istio_request_duration_milliseconds_sum", 2),
					smp("istio_request_duration_milliseconds_count", 1),
				}},
			},
			want:        []string{"istio_requests_total{destination_workload=web,response_code=2xx} 1 @1"},
			wantDropped: map[string]uint64{"istio_request_duration_milliseconds": 4},
		},
		{
			name: "a series is stamped with its latest update",
			scrapes: []scrape{
				{target: "a", ts: 5, samples: []Sample{req(1, "web", "web-1"), req(1, "api", "api-1")}},
				{target: "b", ts: 9, samples: []Sample{req(1, "web", "web-2")}},
				{target: "c", ts: 7, samples: []Sample{req(1, "web", "web-3")}},
			},
			want: []string{
				"istio_requests_total{destination_workload=api,response_code=2xx} 1 @5",
				"istio_requests_total{destination_workload=web,response_code=2xx} 3 @9",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New("east", tt.budget)
			for _, s := range tt.scrapes {
				if s.forget {
					r.Forget(s.target)
					continue
				}
				r.Observe(s.target, s.samples, s.ts)
			}
			if diff := cmp.Diff(tt.want, render(r.Snapshot())); diff != "" {
				t.Errorf("snapshot (-want +got):\n%s", diff)
			}
			want := tt.wantDropped
			if want == nil {
				want = map[string]uint64{}
			}
			if diff := cmp.Diff(want, r.Dropped()); diff != "" {
				t.Errorf("dropped (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReducedLabels(t *testing.T) {
	tests := []struct {
		name   string
		series string
		raw    map[string]string
		want   map[string]string
	}{
		{
			name:   "pod, instance and ip labels are dropped and the kept ones stay",
			series: "istio_requests_total",
			raw: map[string]string{
				"pod": "web-1", "pod_name": "web-1", "instance": "10.0.0.1:15020", "source_ip": "10.0.0.9",
				"namespace": "shop", "job": "envoy-stats", "source_version": "v1", "response_flags": "-",
				"reporter": "destination", "source_workload": "fe", "source_workload_namespace": "shop",
				"source_canonical_service": "fe", "source_cluster": "west",
				"destination_workload": "web", "destination_workload_namespace": "shop",
				"destination_service": "web.shop.svc.cluster.local", "destination_service_name": "web",
				"destination_service_namespace": "shop", "destination_canonical_service": "web",
				"destination_cluster": "east", "request_protocol": "http", "response_code": "404",
				"grpc_response_status": "", "connection_security_policy": "mutual_tls",
			},
			want: map[string]string{
				"__name__": "istio_requests_total", "cluster": "east",
				"reporter": "destination", "source_workload": "fe", "source_workload_namespace": "shop",
				"source_canonical_service": "fe", "source_cluster": "west",
				"destination_workload": "web", "destination_workload_namespace": "shop",
				"destination_service": "web.shop.svc.cluster.local", "destination_service_name": "web",
				"destination_service_namespace": "shop", "destination_canonical_service": "web",
				"destination_cluster": "east", "request_protocol": "http", "response_code": "4xx",
				"connection_security_policy": "mutual_tls",
			},
		},
		{
			name:   "a kept label whose value is an address is dropped",
			series: "istio_requests_total",
			raw: map[string]string{
				"destination_service": "10.96.0.1:443", "destination_service_name": "10.96.0.1",
				"source_workload": "fd00::1", "destination_workload": "[fd00::2]:80", "reporter": "source",
			},
			want: map[string]string{"__name__": "istio_requests_total", "cluster": "east", "reporter": "source"},
		},
		{
			name:   "the scraped cluster label is replaced by the reducer's",
			series: "istio_requests_total",
			raw:    map[string]string{"cluster": "Kubernetes"},
			want:   map[string]string{"__name__": "istio_requests_total", "cluster": "east"},
		},
		{
			name:   "le is kept in canonical form on buckets",
			series: "istio_request_duration_milliseconds_bucket",
			raw:    map[string]string{"le": "1800000"},
			want:   map[string]string{"__name__": "istio_request_duration_milliseconds_bucket", "cluster": "east", "le": "1.8e+06"},
		},
		{
			name:   "le is dropped from other series",
			series: "istio_requests_total",
			raw:    map[string]string{"le": "5"},
			want:   map[string]string{"__name__": "istio_requests_total", "cluster": "east"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := reducedLabels("east", tt.series, tt.raw, strings.HasSuffix(tt.series, "_bucket"))
			got := map[string]string{}
			for i, l := range ls {
				if i > 0 && ls[i-1].Name >= l.Name {
					t.Errorf("labels not sorted: %q before %q", ls[i-1].Name, l.Name)
				}
				got[l.Name] = l.Value
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("labels (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCodeClass(t *testing.T) {
	for code, want := range map[string]string{
		"0": "0", "101": "1xx", "200": "2xx", "204": "2xx", "301": "3xx", "404": "4xx", "429": "4xx",
		"503": "5xx", "599": "5xx", "600": "other", "99": "other", "1000": "other", "2xx": "other", "-": "other",
	} {
		if got := codeClass(code); got != want {
			t.Errorf("codeClass(%q) = %q, want %q", code, got, want)
		}
	}
}

func TestExpireFreesTheBudget(t *testing.T) {
	r := New("east", 1)
	r.Observe("a", []Sample{req(5, "web", "web-1")}, 1)
	r.Observe("b", []Sample{req(3, "api", "api-1")}, 2)
	if got := render(r.Snapshot()); len(got) != 1 {
		t.Fatalf("before expiry: %v, want only web", got)
	}
	r.Expire(2)
	r.Observe("b", []Sample{req(4, "api", "api-1")}, 3)
	want := []string{"istio_requests_total{destination_workload=api,response_code=2xx} 4 @3"}
	if diff := cmp.Diff(want, render(r.Snapshot())); diff != "" {
		t.Errorf("after expiry (-want +got):\n%s", diff)
	}
}

func TestStatsCountRawAndReducedSeries(t *testing.T) {
	r := New("east", 0)
	r.Observe("a", []Sample{req(1, "web", "web-1"), req(1, "web", "web-1", "response_code", "201"), smp("istio_build", 1)}, 1)
	r.Observe("b", []Sample{req(1, "web", "web-2"), req(1, "web", "web-2", "response_code", "NaN", "x", "y"), req(-3, "web", "web-2", "x", "z")}, 1)
	want := Stats{RawSeries: 5, ReducedSeries: 2, Invalid: 1}
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestSnapshotIsTheCallers(t *testing.T) {
	r := New("east", 0)
	r.Observe("a", []Sample{req(1, "web", "web-1")}, 1)
	first := r.Snapshot()
	first[0].Labels[0].Value = "changed"
	first[0].Samples[0].Value = 99
	if diff := cmp.Diff(render(r.Snapshot()), []string{"istio_requests_total{destination_workload=web,response_code=2xx} 1 @1"}); diff != "" {
		t.Errorf("snapshot changed by its caller (-got +want):\n%s", diff)
	}
}
