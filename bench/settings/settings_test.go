// Package settings measures the compiler on the traffic and security
// settings of one large cluster, as an agent recompiles it:
//
//   - 1,000 namespaces in 20 workspaces of 4 tenants (50 namespaces each);
//   - 200 settings: the organization's, one per tenant (4), one per
//     workspace (20), and 175 TrafficSettings and SecuritySettings in groups
//     of 5 namespaces each;
//   - 2,000 ServiceRoutes, two per namespace, each with two weighted subsets
//     and a header route;
//   - per compile: the wall time of compile.CompileIn on the whole bundle
//     (decode, validate, merge per namespace, emit and validate every Istio
//     object with Istio's own code), p50 and p99.
//
// Results are in docs/benchmarks.md. Target: ≤ 200 ms.
//
//	go test -run '^$' -bench . -benchtime 30x ./bench/settings/
package settings

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"flotilla.io/flotilla/bench/internal/quantile"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
)

const (
	tenants           = 4
	workspacesPerT    = 5
	namespacesPerWS   = 50
	groupNamespaces   = 5
	routesPerNS       = 2
	groupSettingsWant = 175
)

func object(kind, fqn, group string, spec any) bundle.Object {
	raw, err := json.Marshal(spec)
	if err != nil {
		panic(err)
	}
	name := fqn[len(fqn)-len(fqn[lastSlash(fqn)+1:]):]
	return bundle.Object{APIVersion: "flotilla.io/v1alpha1", Kind: kind, FQN: fqn, Name: name, Group: group, Spec: raw}
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// largeCluster is the bundle and namespaces of the measured cluster.
func largeCluster() (*bundle.Bundle, []string) {
	const org = "organizations/acme"
	scope := func(fqn, typ string, ns []string) bundle.Group {
		return bundle.Group{FQN: fqn, Type: typ, ConfigMode: compile.ConfigModeBridged, Namespaces: ns}
	}
	b := &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{scope(org, compile.GroupTypeOrganization, []string{})}}
	b.Objects = append(b.Objects, object(compile.KindOrganizationSetting, org+"/organizationsettings/defaults", org, map[string]any{
		"defaultSecuritySetting": map[string]any{"mtlsMode": "STRICT", "authorization": map[string]any{"mode": "NAMESPACE"}, "propagationStrategy": "STRICTER"},
		"defaultTrafficSetting":  map[string]any{"reachability": map[string]any{"mode": "CLUSTER"}, "resilience": map[string]any{"timeout": "10s"}},
	}))
	var namespaces []string
	groupSettings := 0
	for t := range tenants {
		tenant := fmt.Sprintf("%s/tenants/t%d", org, t)
		b.Groups = append(b.Groups, scope(tenant, compile.GroupTypeTenant, []string{}))
		b.Objects = append(b.Objects, object(compile.KindTenantSetting, tenant+"/tenantsettings/defaults", tenant, map[string]any{
			"defaultTrafficSetting": map[string]any{"resilience": map[string]any{"retries": map[string]any{"attempts": 2, "perTryTimeout": "2s"}}},
		}))
		for w := range workspacesPerT {
			ws := fmt.Sprintf("%s/workspaces/w%d", tenant, w)
			prefix := fmt.Sprintf("t%d-w%d-", t, w)
			b.Groups = append(b.Groups, scope(ws, compile.GroupTypeWorkspace, []string{"*/" + prefix + "*"}))
			b.Objects = append(b.Objects, object(compile.KindWorkspaceSetting, ws+"/workspacesettings/defaults", ws, map[string]any{
				"defaultTrafficSetting": map[string]any{"reachability": map[string]any{"mode": "WORKSPACE"},
					"resilience": map[string]any{"connectionPool": map[string]any{"http2MaxRequests": 1000}}},
			}))
			for g := 0; g < namespacesPerWS/groupNamespaces; g++ {
				var sel []string
				for n := range groupNamespaces {
					ns := fmt.Sprintf("%sns%02d", prefix, g*groupNamespaces+n)
					namespaces = append(namespaces, ns)
					sel = append(sel, "c1/"+ns)
				}
				traffic := fmt.Sprintf("%s/groups/traffic%d", ws, g)
				security := fmt.Sprintf("%s/groups/security%d", ws, g)
				b.Groups = append(b.Groups, bundle.Group{FQN: traffic, Type: "traffic", ConfigMode: compile.ConfigModeBridged, Namespaces: sel},
					bundle.Group{FQN: security, Type: "security", ConfigMode: compile.ConfigModeBridged, Namespaces: sel})
				if groupSettings < groupSettingsWant {
					b.Objects = append(b.Objects, object(compile.KindTrafficSetting, traffic+"/trafficsettings/s", traffic, map[string]any{
						"reachability": map[string]any{"mode": "GROUP"}, "resilience": map[string]any{"outlierDetection": map[string]any{"consecutive5xxErrors": 5, "interval": "10s"}},
					}))
					groupSettings++
				}
				if groupSettings < groupSettingsWant {
					b.Objects = append(b.Objects, object(compile.KindSecuritySetting, security+"/securitysettings/s", security, map[string]any{
						"jwt": []any{map[string]any{"issuer": "https://issuer.example.com", "jwksUri": "https://issuer.example.com/jwks"}},
					}))
					groupSettings++
				}
				for n := range groupNamespaces {
					ns := sel[n][len("c1/"):]
					for r := range routesPerNS {
						b.Objects = append(b.Objects, object(compile.KindServiceRoute, fmt.Sprintf("%s/serviceroutes/%s-svc%d", traffic, ns, r), traffic, map[string]any{
							"service": fmt.Sprintf("%s/svc%d", ns, r),
							"subsets": []any{
								map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}, "weight": 90},
								map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}, "weight": 10},
							},
							"httpRoutes": []any{map[string]any{"name": "canary", "match": []any{map[string]any{"headers": map[string]any{"x-canary": "1"}}},
								"destination": []any{map[string]any{"subset": "v2"}}}},
						}))
					}
				}
			}
		}
	}
	return b, namespaces
}

func BenchmarkCompileSettings(b *testing.B) {
	bun, namespaces := largeCluster()
	settings, routes := 0, 0
	for _, o := range bun.Objects {
		if o.Kind == compile.KindServiceRoute {
			routes++
		} else {
			settings++
		}
	}
	if len(namespaces) != 1000 || settings != 200 || routes != 2000 {
		b.Fatalf("the cluster has %d namespaces, %d settings and %d routes; want 1,000, 200 and 2,000", len(namespaces), settings, routes)
	}
	r := compile.Compile(bun, namespaces)
	if len(r.Diagnostics) > 0 {
		b.Fatalf("diagnostics: %v", r.Diagnostics[:min(5, len(r.Diagnostics))])
	}
	// Per namespace: PeerAuthentication, AuthorizationPolicy, Sidecar,
	// DestinationRule; RequestAuthentication in the namespaces of the
	// security groups with settings; per route a DestinationRule and a
	// VirtualService.
	if len(r.Objects) < 4*1000+2*2000 {
		b.Fatalf("compiled %d objects, want at least %d", len(r.Objects), 4*1000+2*2000)
	}
	// cold: a compilation with nothing remembered (an agent's first after
	// it starts). recompile: the agent's case after that, with its cache of
	// what the previous compilation found valid, after one ServiceRoute's
	// split changed.
	for _, mode := range []string{"cold", "recompile"} {
		b.Run(mode, func(b *testing.B) {
			cache := &compile.Cache{}
			in := compile.Cluster{Namespaces: namespaces}
			if mode == "recompile" {
				in.Cache = cache
				compile.CompileIn(bun, in)
			}
			var times []time.Duration
			for i := range b.N {
				if mode == "recompile" {
					changeOneRoute(bun, i)
				}
				start := time.Now()
				compile.CompileIn(bun, in)
				times = append(times, time.Since(start))
			}
			b.StopTimer()
			quantile.Report(b, "", times)
			b.ReportMetric(float64(len(r.Objects)), "objects")
		})
	}
}

// changeOneRoute gives the first ServiceRoute a new split.
func changeOneRoute(b *bundle.Bundle, i int) {
	for j, o := range b.Objects {
		if o.Kind == compile.KindServiceRoute {
			w := 10 + i%80
			b.Objects[j] = object(compile.KindServiceRoute, o.FQN, o.Group, map[string]any{
				"service": "t0-w0-ns00/svc0",
				"subsets": []any{
					map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}, "weight": 100 - w},
					map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}, "weight": w},
				},
			})
			return
		}
	}
}
