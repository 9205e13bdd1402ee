package central

import (
	"strings"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// Intent is what bundles are computed from: the stored clusters, groups and
// the resources that live in groups.
type Intent struct {
	Clusters []store.Record
	Groups   []store.Record
	Objects  []store.Record
}

// orgOf is the organization FQN of a record's FQN.
func orgOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 3)
	if len(parts) < 2 {
		return fqn
	}
	return parts[0] + "/" + parts[1]
}

// Bundles computes every cluster's bundle, by cluster FQN. A group reaches
// a cluster of its organization when one of its patterns selects the
// cluster's name; the agent narrows to namespaces when it compiles, so a new
// namespace gets its policy without a round trip. It is pure.
func Bundles(reg *resource.Registry, in Intent) (map[string]*bundle.Bundle, error) {
	type parsedGroup struct {
		bundle.Group
		sel selector.Set
		org string
	}
	groups := make([]parsedGroup, 0, len(in.Groups))
	for _, g := range in.Groups {
		spec, sel, err := resource.StoredGroup(g)
		if err != nil {
			return nil, err
		}
		groups = append(groups, parsedGroup{
			Group: bundle.Group{FQN: g.FQN, Type: spec.GetType(), ConfigMode: spec.GetConfigMode(), Namespaces: spec.GetNamespaceSelector().GetNames()},
			sel:   sel, org: orgOf(g.FQN),
		})
	}
	byGroup := map[string][]bundle.Object{}
	for _, o := range in.Objects {
		apiVersion := resource.APIVersion
		if k, ok := reg.Kind(o.Kind); ok {
			apiVersion = k.APIVersion()
		}
		byGroup[o.Parent] = append(byGroup[o.Parent], bundle.Object{
			APIVersion: apiVersion, Kind: o.Kind, FQN: o.FQN, Name: o.Name,
			Group: o.Parent, Namespace: o.Namespace, Spec: o.Spec,
		})
	}
	out := make(map[string]*bundle.Bundle, len(in.Clusters))
	for _, c := range in.Clusters {
		b := &bundle.Bundle{Cluster: c.Name}
		org := orgOf(c.FQN)
		for _, g := range groups {
			if g.org != org || !g.sel.MatchCluster(c.Name) {
				continue
			}
			b.Groups = append(b.Groups, g.Group)
			b.Objects = append(b.Objects, byGroup[g.FQN]...)
		}
		b.Normalize()
		out[c.FQN] = b
	}
	return out, nil
}

// bundleKinds are the kinds that travel in bundles: those living in groups.
func bundleKinds(reg *resource.Registry) []string {
	var out []string
	for _, k := range reg.Kinds() {
		if k.Parent == resource.KindGroup {
			out = append(out, k.Name)
		}
	}
	return out
}
