package istioinstall

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// Namespace is where istiod, and by default the gateways, run.
const Namespace = "istio-system"

// KubeVersion is the Kubernetes version the charts are rendered for (their
// Capabilities.KubeVersion): the one the agent's client is built for.
const KubeVersion = "v1.36.3"

// Cluster is what rendering needs to know of the cluster.
type Cluster struct {
	Name    string // global.multiCluster.clusterName
	Network string // global.network, and the east-west gateways' network
	MeshID  string // global.meshID: the organization
}

// Input is one installation to render for one cluster.
type Input struct {
	Spec    *pb.IstioInstallationSpec
	Cluster Cluster
	// Base says this installation renders what a cluster holds once,
	// whatever its revisions: the base chart (CRDs, the default revision's
	// validation) and, for the ambient profile, istio-cni and ztunnel.
	Base bool
	// DefaultRevision is the revision tagged "default" in the cluster ("default"
	// for the revision left empty), which the base chart validates with;
	// empty when no installation there has the tag.
	DefaultRevision string
}

// Revision is the revision name an installation's istiod goes by.
func Revision(spec *pb.IstioInstallationSpec) string {
	return cmp.Or(spec.GetRevision(), "default")
}

// Render renders the installation for the cluster. The objects are in no
// particular order; each has its namespace set where it is namespaced.
func Render(in Input) ([]*unstructured.Unstructured, error) {
	if problems := Check(in.Spec); len(problems) > 0 {
		msgs := make([]string, len(problems))
		for i, p := range problems {
			msgs[i] = p.Field + ": " + p.Message
		}
		return nil, errors.New(strings.Join(msgs, "; "))
	}
	rel, err := releaseOf(in.Spec.GetVersion())
	if err != nil {
		return nil, err
	}
	user := in.Spec.GetValues().AsMap()
	global := map[string]any{
		"hub":            Hub,
		"tag":            rel.tag,
		"istioNamespace": Namespace,
		"meshID":         in.Cluster.MeshID,
		"multiCluster":   map[string]any{"clusterName": in.Cluster.Name},
		"network":        in.Cluster.Network,
	}
	if g, ok := user["global"].(map[string]any); ok {
		global = merge(global, g)
	}
	withGlobal := func(chart string, extra map[string]any) map[string]any {
		v := map[string]any{"global": global}
		if in.Spec.GetProfile() != "" {
			v["profile"] = in.Spec.GetProfile()
		}
		if u, ok := user[chart].(map[string]any); ok {
			v = merge(v, u)
		}
		return merge(v, extra)
	}
	rev := in.Spec.GetRevision()
	var out []*unstructured.Unstructured
	render := func(chart, release, namespace string, values map[string]any) error {
		objs, err := renderChart(rel, chart, release, namespace, values)
		if err != nil {
			return fmt.Errorf("render Istio %s chart %s for cluster %s: %w", rel.version, chart, in.Cluster.Name, err)
		}
		out = append(out, objs...)
		return nil
	}
	if in.Base {
		if err := render(ChartBase, "base", Namespace, withGlobal(ChartBase, map[string]any{
			"defaultRevision": in.DefaultRevision,
			// Fail, as istiod sets it once it serves: left out, the applier
			// and istiod would keep flipping the policy.
			"base": map[string]any{"validationFailurePolicy": "Fail"},
		})); err != nil {
			return nil, err
		}
	}
	// The unnamed revision's own webhook already injects the namespaces of
	// the default tag (istio-injection=enabled): a tag webhook beside it
	// would inject them twice.
	tags := in.Spec.GetTags()
	if rev == "" {
		tags = tagsBut(tags, "default")
	}
	istiod := map[string]any{"revision": rev, "revisionTags": toAny(tags)}
	if slices.Contains(in.Spec.GetTags(), "default") {
		istiod["defaultRevision"] = Revision(in.Spec)
	}
	if mc := in.Spec.GetMeshConfig().AsMap(); len(mc) > 0 {
		istiod["meshConfig"] = mc
	}
	if err := render(ChartIstiod, "istiod", Namespace, withGlobal(ChartIstiod, istiod)); err != nil {
		return nil, err
	}
	if in.Base && in.Spec.GetProfile() == "ambient" {
		if err := render(ChartCNI, "istio-cni", Namespace, withGlobal(ChartCNI, nil)); err != nil {
			return nil, err
		}
		if err := render(ChartZtunnel, "ztunnel", Namespace, withGlobal(ChartZtunnel, map[string]any{"revision": rev, "network": in.Cluster.Network})); err != nil {
			return nil, err
		}
	}
	for _, g := range in.Spec.GetGateways() {
		name := GatewayName(in.Spec, g)
		values := map[string]any{"name": name, "revision": rev, "service": map[string]any{"type": serviceType(g)}}
		if g.GetReplicas() > 0 {
			// A fixed count: the chart's autoscaler would own it otherwise.
			values["replicaCount"] = int64(g.GetReplicas())
			values["autoscaling"] = map[string]any{"enabled": false}
		}
		labels := map[string]any{"istio": strings.TrimPrefix(g.GetName(), "istio-")}
		if g.GetType() == "eastwest" {
			labels["istio"] = "eastwestgateway"
			if in.Cluster.Network != "" {
				values["networkGateway"] = in.Cluster.Network
				labels["topology.istio.io/network"] = in.Cluster.Network
			}
		}
		values["labels"] = labels
		if err := render(ChartGateway, name, cmp.Or(g.GetNamespace(), Namespace), withGlobal(ChartGateway, values)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GatewayName is the name a gateway's objects get: its own, and for one
// that upgrades by revision, with the revision after it.
func GatewayName(spec *pb.IstioInstallationSpec, g *pb.IstioGateway) string {
	if g.GetUpgrade() == "revision" && spec.GetRevision() != "" {
		return g.GetName() + "-" + spec.GetRevision()
	}
	return g.GetName()
}

func serviceType(g *pb.IstioGateway) string {
	if g.GetServiceType() != "" {
		return g.GetServiceType()
	}
	if g.GetType() == "egress" {
		return "ClusterIP"
	}
	return "LoadBalancer"
}

func tagsBut(tags []string, skip string) []string {
	var out []string
	for _, t := range tags {
		if t != skip {
			out = append(out, t)
		}
	}
	return out
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// merge returns a copy of base with over merged into it, maps key by key.
func merge(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range over {
		if sub, ok := v.(map[string]any); ok {
			if have, ok := out[k].(map[string]any); ok {
				out[k] = merge(have, sub)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// renderChart renders one chart as `helm template` would, and decodes its
// manifests.
func renderChart(rel *release, name, releaseName, namespace string, values map[string]any) ([]*unstructured.Unstructured, error) {
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	opts := common.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	vals, err := util.ToRenderValuesWithSchemaValidation(rel.charts[name], values, opts, caps, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(rel.charts[name], vals)
	if err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(files))
	var out []*unstructured.Unstructured
	for _, f := range names {
		if !strings.HasSuffix(f, ".yaml") && !strings.HasSuffix(f, ".yml") {
			continue // NOTES.txt
		}
		for _, doc := range splitYAML(files[f]) {
			m, err := decodeYAML(doc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(m) == 0 {
				continue
			}
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
	return out, nil
}

// splitYAML splits a YAML stream at its document markers: lines that are
// "---", or start with "--- ".
func splitYAML(s string) [][]byte {
	var out [][]byte
	var cur []byte
	flush := func() {
		if len(bytes.TrimSpace(cur)) > 0 {
			out = append(out, cur)
		}
		cur = nil
	}
	for line := range strings.Lines(s) {
		if t := strings.TrimRight(line, "\r\n"); t == "---" || strings.HasPrefix(t, "--- ") {
			flush()
			continue
		}
		cur = append(cur, line...)
	}
	flush()
	return out
}
