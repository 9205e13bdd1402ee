package compile

import (
	"crypto/sha256"
	"path"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	flotillav1alpha1 "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/istioinstall"
)

// KindIstioInstallation is one revision of Istio's control plane on the
// clusters it selects (package istioinstall renders it).
const KindIstioInstallation = "IstioInstallation"

// istioInstallation is one IstioInstallation of the bundle, decoded.
type istioInstallation struct {
	fqn  string
	spec *flotillav1alpha1.IstioInstallationSpec
}

// istioInstallation checks an IstioInstallation and keeps it for the Istio
// pass, which renders those that select this cluster.
func (c *compilation) istioInstallation(o bundle.Object) {
	spec, ok := decodeCached(c, o, func() *flotillav1alpha1.IstioInstallationSpec { return &flotillav1alpha1.IstioInstallationSpec{} })
	if !ok {
		return
	}
	if problems := istioinstall.Check(spec); len(problems) > 0 {
		for _, p := range problems {
			c.diag(o.FQN, p.Field, "%s", p.Message)
		}
		return
	}
	c.installs = append(c.installs, istioInstallation{fqn: o.FQN, spec: spec})
}

// istioPass renders the installations that select this cluster: one
// revision each, the base chart (CRDs, the default revision's validation)
// by one of them.
func (c *compilation) istioPass() {
	if len(c.installs) == 0 {
		return
	}
	facts, meshID := c.clusterFacts()
	var mine []istioInstallation
	revisions := map[string]string{} // revision → FQN
	tags := map[string]string{}      // tag → revision
	for _, in := range c.installs {
		if !SelectsCluster(in.spec.GetClusters(), c.cluster, facts) {
			continue
		}
		rev := istioinstall.Revision(in.spec)
		if other, dup := revisions[rev]; dup {
			c.diag(in.fqn, "spec.revision", "cluster %s already runs revision %q from %s: give one of them another revision", c.cluster, rev, other)
			continue
		}
		revisions[rev] = in.fqn
		var kept []string
		for i, t := range in.spec.GetTags() {
			if r, dup := tags[t]; dup {
				c.diag(in.fqn, index("spec.tags", i), "tag %q already points at revision %q in cluster %s: a tag points at one revision; remove it from one installation", t, r, c.cluster)
				continue
			}
			tags[t] = rev
			kept = append(kept, t)
		}
		if len(kept) != len(in.spec.GetTags()) {
			spec := cloneInstall(in.spec)
			spec.Tags = kept
			in.spec = spec
		}
		mine = append(mine, in)
	}
	if len(mine) == 0 {
		return
	}
	// The unnamed revision's webhook always injects the default tag's
	// namespaces (istio-injection=enabled): the tag on another revision
	// would make two webhooks inject them.
	if unnamed := revisions["default"]; unnamed != "" && tags["default"] != "" && tags["default"] != "default" {
		for i, in := range mine {
			if j := slices.Index(in.spec.GetTags(), "default"); j >= 0 {
				c.diag(in.fqn, "spec.tags", "tag \"default\" would make revision %q inject the namespaces labelled istio-injection=enabled in cluster %s, which the unnamed revision of %s injects too (its webhook always selects them), so two webhooks would inject each pod: give every revision a name (spec.revision) to move the default tag between them",
					istioinstall.Revision(in.spec), c.cluster, unnamed)
				spec := cloneInstall(in.spec)
				spec.Tags = slices.Delete(slices.Clone(spec.Tags), j, j+1)
				mine[i].spec = spec
			}
		}
		tags["default"] = "default"
	}
	// The base chart comes from the installation tagged "default", else
	// the default revision's, else the first.
	base := 0
	for i, in := range mine {
		if slices.Contains(in.spec.GetTags(), "default") {
			base = i
			break
		}
		if in.spec.GetRevision() == "" {
			base = i
		}
	}
	cluster := istioinstall.Cluster{Name: c.cluster, MeshID: meshID}
	if facts != nil {
		cluster.Network = facts.Network
	}
	for i, in := range mine {
		objs, err := c.cache.render(istioinstall.Input{Spec: in.spec, Cluster: cluster, Base: i == base, DefaultRevision: tags["default"]})
		if err != nil {
			c.diag(in.fqn, "spec", "%v", err)
			continue
		}
		for _, o := range objs {
			c.addWhole(in.fqn, o)
		}
	}
}

func cloneInstall(s *flotillav1alpha1.IstioInstallationSpec) *flotillav1alpha1.IstioInstallationSpec {
	return proto.Clone(s).(*flotillav1alpha1.IstioInstallationSpec)
}

// clusterFacts are what the cluster's own group says of it, and the mesh
// ID: its organization's name.
func (c *compilation) clusterFacts() (*bundle.ClusterFacts, string) {
	var facts *bundle.ClusterFacts
	meshID := ""
	for _, g := range c.groups {
		switch g.Type {
		case GroupTypeCluster:
			if path.Base(g.FQN) == c.cluster {
				facts = g.Cluster
			}
		case GroupTypeOrganization:
			meshID = path.Base(g.FQN)
		}
	}
	return facts, meshID
}

// SelectsCluster reports whether every condition of sel holds for the
// cluster; an empty selector selects nothing.
func SelectsCluster(sel *flotillav1alpha1.ClusterSelector, name string, facts *bundle.ClusterFacts) bool {
	if len(sel.GetNames()) == 0 && len(sel.GetLabels()) == 0 && len(sel.GetRegions()) == 0 {
		return false
	}
	if len(sel.GetNames()) > 0 && !slices.ContainsFunc(sel.GetNames(), func(p string) bool { return matchName(p, name) }) {
		return false
	}
	if facts == nil {
		facts = &bundle.ClusterFacts{}
	}
	for k, v := range sel.GetLabels() {
		if have, ok := facts.Labels[k]; !ok || have != v {
			return false
		}
	}
	return len(sel.GetRegions()) == 0 || slices.Contains(sel.GetRegions(), facts.Region)
}

func matchName(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

// addWhole adds a rendered object as it is, labelled and annotated as
// Flotilla's (Helm's managed-by label gives way to Flotilla's).
func (c *compilation) addWhole(owner string, o *unstructured.Unstructured) {
	labels := o.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelManagedBy] = ManagedBy
	o.SetLabels(labels)
	ann := o.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[AnnotationOwner] = owner
	o.SetAnnotations(ann)
	c.out = append(c.out, emitted{owner: owner, apiVersion: o.GetAPIVersion(), kind: o.GetKind(), namespace: o.GetNamespace(), name: o.GetName(), obj: o})
}

// render renders an installation, or returns the objects rendered for the
// same input by the last compilation (copies: the caller may change them).
func (c *Cache) render(in istioinstall.Input) ([]*unstructured.Unstructured, error) {
	if c == nil {
		return istioinstall.Render(in)
	}
	key, err := renderKey(in)
	if err != nil {
		return nil, err
	}
	objs, ok := c.renders[key]
	if !ok {
		if objs, err = istioinstall.Render(in); err != nil {
			return nil, err
		}
	}
	if c.nextRenders == nil {
		c.nextRenders = map[[sha256.Size]byte][]*unstructured.Unstructured{}
	}
	c.nextRenders[key] = objs
	out := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		out[i] = o.DeepCopy()
	}
	return out, nil
}

// renderKey identifies a render's input.
func renderKey(in istioinstall.Input) ([sha256.Size]byte, error) {
	spec, err := proto.MarshalOptions{Deterministic: true}.Marshal(in.Spec)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	h := sha256.New()
	for _, s := range []string{string(spec), in.Cluster.Name, in.Cluster.Network, in.Cluster.MeshID, strconv.FormatBool(in.Base), in.DefaultRevision} {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{0})
		h.Write([]byte(s))
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out, nil
}
