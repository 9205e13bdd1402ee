// Package istiorender measures what an IstioInstallation costs the agent
// that compiles it (issue 25's "render time per cluster"):
//
//   - cold: package istioinstall renders Istio's charts for one cluster (the
//     base chart with Istio's CRDs, istiod of a revision with two revision
//     tags, an ingress and an east-west gateway), through compile.CompileIn
//     without a cache: what the central control plane's plan pays per
//     cluster, and an agent after a change of the installation;
//   - warm: the agent's recompile of the same bundle with its compile.Cache
//     (an unrelated change, a new namespace), which reuses the render;
//   - both: wall time per compile, p50 and p99, and the objects rendered.
//
// Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 20x ./bench/istiorender/
package istiorender

import (
	"encoding/json"
	"testing"
	"time"

	"flotilla.io/flotilla/bench/internal/quantile"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
)

func installBundle() *bundle.Bundle {
	spec := `{"clusters":{"names":["*"]},"version":"1.31","revision":"canary","tags":["default","prod-canary"],
		"gateways":[{"name":"istio-ingressgateway","type":"ingress"},{"name":"istio-eastwestgateway","type":"eastwest"}]}`
	return &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{
		{FQN: "organizations/acme", Type: compile.GroupTypeOrganization, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}},
		{FQN: "organizations/acme/clusters/c1", Type: compile.GroupTypeCluster, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{},
			Cluster: &bundle.ClusterFacts{Network: "net1"}},
	}, Objects: []bundle.Object{{APIVersion: compile.IngressGatewayAPIVersion, Kind: compile.KindIstioInstallation,
		FQN: "organizations/acme/istioinstallations/canary", Name: "canary", Group: "organizations/acme", Spec: json.RawMessage(spec)}}}
}

func BenchmarkRender(b *testing.B) {
	bun := installBundle()
	for _, tc := range []struct {
		name  string
		cache bool
	}{{"cold", false}, {"warm", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var cache compile.Cache
			in := compile.Cluster{Namespaces: []string{"istio-system"}}
			if tc.cache {
				in.Cache = &cache
				compile.CompileIn(bun, in) // the render the next ones reuse
			}
			times := make([]time.Duration, 0, b.N)
			var objects int
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				r := compile.CompileIn(bun, in)
				times = append(times, time.Since(start))
				if len(r.Diagnostics) > 0 {
					b.Fatal(r.Diagnostics)
				}
				objects = len(r.Objects)
			}
			b.StopTimer()
			quantile.Report(b, "", times)
			b.ReportMetric(float64(objects), "objects")
		})
	}
}
