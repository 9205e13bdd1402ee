package compile

import (
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	utiljson "k8s.io/apimachinery/pkg/util/json"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/istio"
	"flotilla.io/flotilla/internal/selector"
)

// direct compiles an object of a DIRECT group: an Istio object written by
// the user, delivered as written into its namespace once its kind, name,
// namespace and spec are valid. The older apiVersions of a kind (e.g.
// networking.istio.io/v1beta1) are written as the catalogue's version (v1),
// so each object has one identity for conflicts and pruning.
func (c *compilation) direct(o bundle.Object, t target) {
	k, ok := istio.Lookup(o.APIVersion, o.Kind)
	if !ok {
		names := make([]string, 0, 8)
		for _, k := range istio.All() {
			names = append(names, k.Kind)
		}
		c.diag(o.FQN, "kind", "%s %s is not an Istio kind Flotilla delivers in DIRECT groups: use one of %s (networking.istio.io/v1 or security.istio.io/v1)",
			o.APIVersion, o.Kind, strings.Join(names, ", "))
		return
	}
	valid := true
	if msgs := content.IsDNS1123Subdomain(o.Name); len(msgs) > 0 {
		c.diag(o.FQN, "name", "%q cannot name a %s: %s", o.Name, k.Kind, strings.Join(msgs, "; "))
		valid = false
	}
	if o.Namespace == "" {
		c.diag(o.FQN, "namespace", "a namespace is required for a %s in a DIRECT group", k.Kind)
		valid = false
	} else if msgs := content.IsDNS1123Label(o.Namespace); len(msgs) > 0 {
		c.diag(o.FQN, "namespace", "%q is not a namespace name: %s", o.Namespace, strings.Join(msgs, "; "))
		valid = false
	}
	spec, ok := c.directSpec(o)
	if !ok {
		return
	}
	for _, e := range istio.Validate(k, o.Name, o.Namespace, spec) {
		c.diag(o.FQN, e.Path, "%s", e.Message)
		valid = false
	}
	owns := c.owner(o.Group, t)
	if !valid || !t.reaches(o.Namespace) || !owns(o.Namespace) {
		return
	}
	for _, d := range Confine(k.Kind, o.Namespace, spec, owns) {
		c.diag(o.FQN, d.Field, "%s", d.Message)
		valid = false
	}
	if !valid {
		return
	}
	if _, set := spec["exportTo"]; exportingKinds[k.Kind] && !set {
		// Visible in the workspace, not the mesh (Istio's default).
		var to []any
		for _, ns := range c.sortedNamespaces() {
			if owns(ns) {
				to = append(to, ns)
			}
		}
		spec["exportTo"] = to
	}
	c.add(o.FQN, k.APIVersion, k.Kind, o.Namespace, o.Name, spec) // validated above
}

// owner returns what the workspace of group owns in this cluster: the
// namespaces its scope group selects (those of the group's own selector
// when the bundle lacks the workspace, which the central control plane
// never sends so).
func (c *compilation) owner(group string, t target) func(ns string) bool {
	if ws, ok := c.groups[workspaceOf(group)]; ok && ws.Type == GroupTypeWorkspace {
		if sel, err := selector.ParseSet(ws.Namespaces); err == nil {
			return func(ns string) bool { return sel.Match(c.cluster, ns) }
		}
	}
	return func(ns string) bool { return t.selector.Match(c.cluster, ns) }
}

// directSpec decodes the spec into JSON values as unstructured objects hold
// them (whole numbers as int64); a missing or null spec is empty.
func (c *compilation) directSpec(o bundle.Object) (map[string]any, bool) {
	if len(o.Spec) == 0 {
		return map[string]any{}, true
	}
	var v any
	if err := utiljson.Unmarshal(o.Spec, &v); err != nil {
		c.diag(o.FQN, "spec", "not valid JSON: %v", err)
		return nil, false
	}
	switch v := v.(type) {
	case nil:
		return map[string]any{}, true
	case map[string]any:
		return v, true
	default:
		c.diag(o.FQN, "spec", "the spec must be an object, got %s", jsonType(v))
		return nil, false
	}
}

func jsonType(v any) string {
	switch v.(type) {
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}
