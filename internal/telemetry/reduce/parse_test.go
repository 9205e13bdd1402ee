package reduce

import (
	"cmp"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

// proxyBody is the shape of an Envoy sidecar's /stats/prometheus output for
// Istio's standard metrics.
const proxyBody = `# TYPE istio_requests_total counter
istio_requests_total{reporter="destination",destination_workload="web",response_code="200",pod="web-1"} 12
istio_requests_total{reporter="destination",destination_workload="web",response_code="503",pod="web-1"} 1
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="destination",le="1"} 2
istio_request_duration_milliseconds_bucket{reporter="destination",le="1800000"} 13
istio_request_duration_milliseconds_bucket{reporter="destination",le="+Inf"} 13
istio_request_duration_milliseconds_sum{reporter="destination"} 40.5
istio_request_duration_milliseconds_count{reporter="destination"} 13
# TYPE envoy_server_live gauge
envoy_server_live 1
`

func TestParse(t *testing.T) {
	got, err := Parse(strings.NewReader(proxyBody))
	if err != nil {
		t.Fatal(err)
	}
	want := []Sample{
		smp("envoy_server_live", 1),
		smp("istio_request_duration_milliseconds_bucket", 13, "reporter", "destination", "le", "+Inf"),
		smp("istio_request_duration_milliseconds_bucket", 2, "reporter", "destination", "le", "1.0"),
		smp("istio_request_duration_milliseconds_bucket", 13, "reporter", "destination", "le", "1.8e+06"),
		smp("istio_request_duration_milliseconds_count", 13, "reporter", "destination"),
		smp("istio_request_duration_milliseconds_sum", 40.5, "reporter", "destination"),
		req(12, "web", "web-1", "reporter", "destination"),
		req(1, "web", "web-1", "reporter", "destination", "response_code", "503"),
	}
	order := func(a, b Sample) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(key(a.Name, a.Labels), key(b.Name, b.Labels)))
	}
	slices.SortFunc(got, order)
	slices.SortFunc(want, order)
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("samples (-want +got):\n%s", diff)
	}
}

func TestParseRejectsABrokenBody(t *testing.T) {
	if _, err := Parse(strings.NewReader("istio_requests_total{reporter=\"x\" 1\n")); err == nil {
		t.Error("a body with an unterminated label set parsed without error")
	}
}

func TestParsedScrapesReduceToTheDrivenTotals(t *testing.T) {
	r := New("east", 0)
	for i, body := range []string{proxyBody, strings.ReplaceAll(proxyBody, "web-1", "web-2")} {
		samples, err := Parse(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Observe(string(rune('a'+i)), samples, 1)
	}
	want := []string{
		"istio_request_duration_milliseconds_bucket{le=+Inf,reporter=destination} 26 @1",
		"istio_request_duration_milliseconds_bucket{le=1.0,reporter=destination} 4 @1",
		"istio_request_duration_milliseconds_bucket{le=1.8e+06,reporter=destination} 26 @1",
		"istio_request_duration_milliseconds_count{reporter=destination} 26 @1",
		"istio_request_duration_milliseconds_sum{reporter=destination} 81 @1",
		"istio_requests_total{destination_workload=web,reporter=destination,response_code=2xx} 24 @1",
		"istio_requests_total{destination_workload=web,reporter=destination,response_code=5xx} 2 @1",
	}
	if diff := gocmp.Diff(want, render(r.Snapshot())); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
}
