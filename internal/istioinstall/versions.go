package istioinstall

import (
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"

	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"istio.io/istio/manifests"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
)

// The charts an installation renders, by the name its values use.
const (
	ChartBase    = "base"
	ChartIstiod  = "istiod"
	ChartGateway = "gateway"
	ChartCNI     = "cni"
	ChartZtunnel = "ztunnel"
)

// chartDirs are where each chart lives in Istio's manifests tree.
var chartDirs = map[string]string{
	ChartBase:    "charts/base",
	ChartIstiod:  "charts/istio-control/istio-discovery",
	ChartGateway: "charts/gateway",
	ChartCNI:     "charts/istio-cni",
	ChartZtunnel: "charts/ztunnel",
}

// Charts are the chart names, sorted.
func Charts() []string { return slices.Sorted(maps.Keys(chartDirs)) }

// release is one Istio version this binary ships charts for.
type release struct {
	version string
	// tag is the image tag its charts get unless the values say otherwise:
	// the embedded defaults name a testing image, so it is always set.
	tag   string
	files fs.FS

	once   sync.Once
	charts map[string]*chart.Chart
	// defaults are each chart's default values, flattened out of Istio's
	// "_internal_defaults_do_not_set" wrapper.
	defaults map[string]map[string]any
	err      error
}

// Hub is the image registry the charts get unless the values say otherwise.
const Hub = "docker.io/istio"

// releases are the versions shipped. The Istio module the binary is built
// with is 1.31 (its VERSION file; a development build of it): the module
// proxy serves no other minor version's source, so one version ships, and
// upgrades move between revisions of it (docs/istio-lifecycle.md).
var releases = []*release{
	{version: "1.31", tag: "1.31.0", files: manifests.FS},
}

// Versions are the Istio versions this binary has charts for, sorted.
func Versions() []string {
	out := make([]string, len(releases))
	for i, r := range releases {
		out[i] = r.version
	}
	slices.Sort(out)
	return out
}

func releaseOf(version string) (*release, error) {
	for _, r := range releases {
		if r.version == version {
			return r, r.load()
		}
	}
	return nil, fmt.Errorf("%q is not a version this binary has charts for: use one of %s", version, strings.Join(Versions(), ", "))
}

// load parses the release's charts once.
func (r *release) load() error {
	r.once.Do(func() {
		r.charts = map[string]*chart.Chart{}
		r.defaults = map[string]map[string]any{}
		for name, dir := range chartDirs {
			c, err := loadChart(r.files, dir)
			if err != nil {
				r.err = fmt.Errorf("Istio %s chart %s: %w", r.version, name, err)
				return
			}
			// Istio's release builds stamp the charts' version in; the
			// module's sources say 1.0.0, which labels would repeat.
			c.Metadata.Version, c.Metadata.AppVersion = r.tag, r.tag
			r.charts[name] = c
			r.defaults[name] = flatDefaults(c.Values)
		}
	})
	return r.err
}

func loadChart(files fs.FS, dir string) (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(files, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(files, p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: strings.TrimPrefix(p, dir+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return loader.LoadFiles(bufs)
}

// flatDefaults are a chart's defaults as its templates see them: Istio's
// charts keep them under "_internal_defaults_do_not_set" and merge them
// into .Values themselves.
func flatDefaults(values map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range values {
		if k != internalDefaults {
			out[k] = v
		}
	}
	if inner, ok := values[internalDefaults].(map[string]any); ok {
		for k, v := range inner {
			out[k] = v
		}
	}
	return out
}

const internalDefaults = "_internal_defaults_do_not_set"

// profiles are the Helm profiles every chart of a release has
// (files/profile-<name>.yaml); "" is Istio's default.
var profiles = []string{"", "ambient", "demo", "preview", "remote", "stable"}

// Profiles are the profiles an installation may name.
func Profiles() []string { return slices.Clone(profiles[1:]) }

// decodeYAML decodes a manifest into plain maps, whole numbers as int64 as
// unstructured objects hold them.
func decodeYAML(data []byte) (map[string]any, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = utiljson.Unmarshal(j, &out)
	return out, err
}
