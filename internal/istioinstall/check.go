package istioinstall

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// Problem is one reason an installation cannot be rendered, at a field path
// of its spec ("spec.values.istiod.replicaCount").
type Problem struct {
	Field, Message string
}

// GatewayTypes and the gateways' upgrade modes.
var (
	GatewayTypes = []string{"ingress", "eastwest", "egress"}
	UpgradeModes = []string{"inPlace", "revision"}
	ServiceTypes = []string{"LoadBalancer", "ClusterIP", "NodePort"}
)

// owned are the values Flotilla sets itself, by chart ("*" for all): the
// field a user sets instead, for the error.
var owned = map[string]string{
	"global.meshID":                   "the organization's name",
	"global.multiCluster.clusterName": "the cluster's name",
	"global.network":                  "the Cluster's spec.network",
	"revision":                        "spec.revision",
	"revisionTags":                    "spec.tags",
	"defaultRevision":                 `spec.tags (the installation tagged "default")`,
	"profile":                         "spec.profile",
	"global.profile":                  "spec.profile",
	"meshConfig":                      "spec.meshConfig",
	"networkGateway":                  "spec.gateways[].type eastwest",
}

// Check reports every problem of spec that would stop it rendering, with
// the field and the fix; none means Render will accept it for any cluster.
func Check(spec *pb.IstioInstallationSpec) []Problem {
	var out []Problem
	add := func(field, format string, args ...any) {
		out = append(out, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	sel := spec.GetClusters()
	if len(sel.GetNames()) == 0 && len(sel.GetLabels()) == 0 && len(sel.GetRegions()) == 0 {
		add("spec.clusters", `is required: select clusters by names (patterns such as "prod-*" or "*"), labels or regions`)
	}
	for i, n := range sel.GetNames() {
		if strings.Trim(n, "*") == "" && n != "*" || strings.Contains(strings.TrimSuffix(n, "*"), "*") {
			add(fmt.Sprintf("spec.clusters.names[%d]", i), `%q: a cluster name, a prefix ending in "*", or "*"`, n)
		}
	}
	rel, err := releaseOf(spec.GetVersion())
	if spec.GetVersion() == "" {
		add("spec.version", "is required: one of %s", strings.Join(Versions(), ", "))
	} else if err != nil {
		add("spec.version", "%s", err)
	}
	if r := spec.GetRevision(); r != "" {
		if strings.Contains(r, ".") {
			add("spec.revision", "%q has a dot, which Istio's revision names cannot: write %q", r, strings.ReplaceAll(r, ".", "-"))
		} else if errs := validation.IsDNS1123Label(r); len(errs) > 0 {
			add("spec.revision", "%q: %s", r, strings.Join(errs, "; "))
		} else if r == "default" {
			add("spec.revision", `"default" is the name of the revision left empty: leave spec.revision empty`)
		}
	}
	if !slices.Contains(profiles, spec.GetProfile()) {
		add("spec.profile", "%q is not a profile of Istio's charts: use one of %s, or leave it empty for the default", spec.GetProfile(), strings.Join(Profiles(), ", "))
	}
	seen := map[string]int{}
	for i, t := range spec.GetTags() {
		f := fmt.Sprintf("spec.tags[%d]", i)
		if errs := validation.IsDNS1123Label(t); len(errs) > 0 || strings.Contains(t, ".") {
			add(f, "%q is not a revision tag name (a DNS label without dots, e.g. prod-stable)", t)
		}
		if j, dup := seen[t]; dup {
			add(f, "%q is also spec.tags[%d]", t, j)
		}
		seen[t] = i
	}
	out = append(out, checkGateways(spec.GetGateways())...)
	if err == nil && rel != nil {
		out = append(out, checkValues(rel, spec)...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Field < out[j].Field })
	return out
}

func checkGateways(gws []*pb.IstioGateway) []Problem {
	var out []Problem
	names := map[string]int{}
	for i, g := range gws {
		f := fmt.Sprintf("spec.gateways[%d]", i)
		if g.GetName() == "" {
			out = append(out, Problem{f + ".name", "is required: the gateway's Deployment name, e.g. istio-ingressgateway"})
		} else if errs := validation.IsDNS1123Label(g.GetName()); len(errs) > 0 {
			out = append(out, Problem{f + ".name", fmt.Sprintf("%q: %s", g.GetName(), strings.Join(errs, "; "))})
		}
		key := g.GetNamespace() + "/" + g.GetName()
		if j, dup := names[key]; dup {
			out = append(out, Problem{f + ".name", fmt.Sprintf("%q is also spec.gateways[%d] in the same namespace", g.GetName(), j)})
		}
		names[key] = i
		if !slices.Contains(GatewayTypes, g.GetType()) {
			out = append(out, Problem{f + ".type", fmt.Sprintf("%q: use one of %s", g.GetType(), strings.Join(GatewayTypes, ", "))})
		}
		if ns := g.GetNamespace(); ns != "" {
			if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
				out = append(out, Problem{f + ".namespace", fmt.Sprintf("%q: %s", ns, strings.Join(errs, "; "))})
			}
		}
		if st := g.GetServiceType(); st != "" && !slices.Contains(ServiceTypes, st) {
			out = append(out, Problem{f + ".serviceType", fmt.Sprintf("%q: use one of %s", st, strings.Join(ServiceTypes, ", "))})
		}
		if u := g.GetUpgrade(); u != "" && !slices.Contains(UpgradeModes, u) {
			out = append(out, Problem{f + ".upgrade", fmt.Sprintf("%q: use one of %s", u, strings.Join(UpgradeModes, ", "))})
		}
		if g.GetReplicas() > 100 {
			out = append(out, Problem{f + ".replicas", fmt.Sprintf("%d is more than 100: scale gateways with values.gateway.autoscaling instead", g.GetReplicas())})
		}
	}
	return out
}

// checkValues holds every value given against the defaults of the chart it
// is for: a key the chart does not have is a typo or a value of another
// version, and Helm would ignore it silently.
func checkValues(rel *release, spec *pb.IstioInstallationSpec) []Problem {
	var out []Problem
	vals := spec.GetValues().AsMap()
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := "spec.values." + k
		v, ok := vals[k].(map[string]any)
		if !ok {
			out = append(out, Problem{f, "must be a map of the chart's values"})
			continue
		}
		switch {
		case k == "global":
			out = append(out, walk(f, "global", v, rel.defaults[ChartIstiod]["global"], "")...)
		case chartDirs[k] != "":
			out = append(out, walk(f, "", v, rel.defaults[k], k)...)
		default:
			out = append(out, Problem{f, fmt.Sprintf("%q is not a chart: use global (every chart) or one of %s", k, strings.Join(Charts(), ", "))})
		}
	}
	return out
}

// walk checks the user's values v at path (rel is the path inside the
// chart's values, for the owned keys) against the chart's defaults def.
func walk(field, rel string, v map[string]any, def any, chartName string) []Problem {
	var out []Problem
	known, isMap := def.(map[string]any)
	ks := make([]string, 0, len(v))
	for k := range v {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		f, r := field+"."+k, k
		if rel != "" {
			r = rel + "." + k
		}
		if by, ok := owned[r]; ok {
			out = append(out, Problem{f, "is set by Flotilla from " + by + ": set that instead"})
			continue
		}
		if !isMap || freeForm(rel, known) {
			continue // a free-form map (labels, env, annotations) or no default
		}
		d, ok := known[k]
		if !ok {
			out = append(out, Problem{f, unknownKey(k, known, chartName)})
			continue
		}
		if sub, ok := v[k].(map[string]any); ok {
			if d == nil {
				continue
			}
			if _, isMap := d.(map[string]any); !isMap {
				out = append(out, Problem{f, fmt.Sprintf("is a map, but the chart's value is %s", describe(d))})
				continue
			}
			out = append(out, walk(f, r, sub, d, chartName)...)
			continue
		}
		if d != nil && !sameType(v[k], d) {
			out = append(out, Problem{f, fmt.Sprintf("is %s, but the chart's value is %s", describe(v[k]), describe(d))})
		}
	}
	return out
}

// freeForm reports whether the chart's map at rel takes any key: it is
// empty, named like labels, annotations, env or a selector, or its keys are
// label or annotation keys.
func freeForm(rel string, known map[string]any) bool {
	if len(known) == 0 {
		return true
	}
	last := rel[strings.LastIndex(rel, ".")+1:]
	for _, suffix := range []string{"Annotations", "annotations", "Labels", "labels", "env", "Selector", "selector"} {
		if strings.HasSuffix(last, suffix) {
			return true
		}
	}
	for k := range known {
		if strings.ContainsAny(k, "./") {
			return true
		}
	}
	return false
}

func unknownKey(k string, known map[string]any, chartName string) string {
	var near []string
	for c := range known {
		if similar(strings.ToLower(k), strings.ToLower(c)) {
			near = append(near, c)
		}
	}
	sort.Strings(near)
	where := "the chart"
	if chartName != "" {
		where = "the " + chartName + " chart"
	}
	if len(near) > 0 {
		return fmt.Sprintf("%s has no value %q: did you mean %s?", where, k, strings.Join(near, " or "))
	}
	return fmt.Sprintf("%s has no value %q (its values at this level: %s)", where, k, strings.Join(firstKeys(known, 12), ", "))
}

func firstKeys(m map[string]any, n int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		if !strings.HasPrefix(k, "_") {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	if len(ks) > n {
		ks = append(ks[:n], "…")
	}
	return ks
}

// similar reports whether a and b are at most two edits apart.
func similar(a, b string) bool {
	if a == b {
		return true
	}
	if d := len(a) - len(b); d > 2 || d < -2 {
		return false
	}
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)] <= 2
}

func sameType(v, d any) bool {
	return kindOf(v) == kindOf(d) || kindOf(d) == "a string" && kindOf(v) != "a map" && kindOf(v) != "a list"
}

func kindOf(v any) string {
	switch v.(type) {
	case bool:
		return "a boolean"
	case float64, int, int64, uint64, float32:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case map[string]any:
		return "a map"
	}
	return fmt.Sprintf("%T", v)
}

func describe(v any) string {
	switch v.(type) {
	case map[string]any, []any:
		return kindOf(v)
	}
	return fmt.Sprintf("%s (%v)", kindOf(v), v)
}
