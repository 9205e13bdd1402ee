// Package charts holds Flotilla's Helm charts, embedded so that the CLI
// renders them without a checkout (`flotilla cluster onboard -o
// manifests`), and renders them with the Helm SDK as `helm template` does:
// the chart's values schema and its own checks refuse bad values, naming
// the key.
package charts

import (
	"cmp"
	"embed"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
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

// Render renders the chart as release in namespace with values, the way
// `helm template --include-crds` does (schema validation included), and
// returns the manifests as one YAML stream, in an order kubectl can apply:
// CRDs, namespaces, then what the others need before them. Values the
// chart refuses give an error that names the key. It uses Helm's engine
// alone: Helm's install machinery would double the binary's size.
func Render(c *chart.Chart, releaseName, namespace string, values map[string]any) (string, error) {
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return "", err
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	opts := common.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	vals, err := util.ToRenderValuesWithSchemaValidation(c, values, opts, caps, false)
	if err != nil {
		return "", fmt.Errorf("chart %s: %w", c.Name(), err)
	}
	rendered, err := engine.Render(c, vals)
	if err != nil {
		return "", fmt.Errorf("chart %s: %w", c.Name(), err)
	}
	type doc struct {
		order int
		file  string
		text  string
	}
	var docs []doc
	add := func(file, content string) {
		for _, d := range strings.Split(content, "\n---") {
			d = strings.TrimSpace(strings.TrimPrefix(d, "---"))
			if !hasObject(d) {
				continue
			}
			docs = append(docs, doc{order: kindOrder(d), file: file, text: d})
		}
	}
	for _, crd := range c.CRDObjects() {
		add(crd.Filename, string(crd.File.Data))
	}
	for _, name := range slices.Sorted(maps.Keys(rendered)) {
		if base := path.Base(name); strings.HasPrefix(base, "_") || strings.HasSuffix(base, "NOTES.txt") {
			continue
		}
		add(name, rendered[name])
	}
	slices.SortStableFunc(docs, func(a, b doc) int { return cmp.Compare(a.order, b.order) })
	var b strings.Builder
	for i, d := range docs {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "# Source: %s\n%s\n", d.file, d.text)
	}
	return b.String(), nil
}

// hasObject reports whether a YAML document holds more than comments.
func hasObject(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return true
		}
	}
	return false
}

// installOrder is the order kinds are applied in: what others refer to
// first.
var installOrder = []string{"CustomResourceDefinition", "Namespace", "NetworkPolicy", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim",
	"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "Ingress"}

// kindOrder is the place of a document's kind in installOrder; unknown
// kinds go last.
func kindOrder(doc string) int {
	for _, line := range strings.Split(doc, "\n") {
		if k, ok := strings.CutPrefix(line, "kind:"); ok {
			if i := slices.Index(installOrder, strings.TrimSpace(k)); i >= 0 {
				return i
			}
			break
		}
	}
	return len(installOrder)
}

// AgentValues are the agent chart's values for one cluster: its name (or
// FQN), the management plane's URL as the agent dials it, the PEM CA of
// the server's certificate (empty for the system roots) and a join token.
func AgentValues(cluster, serverURL, ca, token string) map[string]any {
	server := map[string]any{"url": serverURL}
	if ca != "" {
		server["ca"] = ca
	}
	return map[string]any{"cluster": cluster, "server": server, "joinToken": token}
}
