// Package charts holds Flotilla's Helm charts, embedded so that the CLI
// renders them without a checkout (`flotilla cluster onboard -o
// manifests`), and renders them with the Helm SDK as `helm template` does:
// the chart's values schema and its own checks refuse bad values, naming
// the key.
package charts

import (
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
)

// Agent is the chart of a cluster's agent; the namespace it installs into.
const (
	Agent          = "flotilla-agent"
	AgentNamespace = "flotilla-system"
)

// Server is the chart of the management plane (any namespace).
const Server = "flotilla-server"

//go:embed all:flotilla-agent all:flotilla-server
var files embed.FS

// Load returns the embedded chart called name.
func Load(name string) (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(files, name, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		if path.Ext(p) == ".go" {
			return nil
		}
		bufs = append(bufs, &archive.BufferedFile{Name: strings.TrimPrefix(p, name+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", name, err)
	}
	if len(bufs) == 0 {
		return nil, fmt.Errorf("no chart %s", name)
	}
	return loader.LoadFiles(bufs)
}

// KubeVersion is the Kubernetes version Render assumes (its
// Capabilities.KubeVersion): the one Flotilla's Kubernetes client is built
// for, and the local fleet runs.
const KubeVersion = "v1.36.3"

// Render renders the chart as release in namespace with values, CRDs
// included, the way `helm template --include-crds` does, and returns the
// manifests as one YAML stream. Values the chart refuses give an error
// that names the key.
func Render(c *chart.Chart, releaseName, namespace string, values map[string]any) (string, error) {
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler))
	in := action.NewInstall(cfg)
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return "", err
	}
	in.KubeVersion = kv
	in.DryRunStrategy = action.DryRunClient
	in.Replace = true
	in.IncludeCRDs = true
	in.ReleaseName, in.Namespace = releaseName, namespace
	rel, err := in.Run(c, values)
	if err != nil {
		return "", fmt.Errorf("chart %s: %w", c.Name(), err)
	}
	r, ok := rel.(*release.Release)
	if !ok {
		return "", fmt.Errorf("chart %s: unexpected release type %T", c.Name(), rel)
	}
	return r.Manifest, nil
}
