package resource

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"flotilla.io/flotilla/internal/store"
)

// APIVersion is the apiVersion of every Flotilla resource.
const APIVersion = "flotilla.io/v1alpha1"

// Kind describes one resource kind.
type Kind struct {
	// Name is the kind as written in YAML, e.g. "Workspace".
	Name string
	// Plural is the lowercase plural, used in FQNs and on the command line.
	Plural string
	// Short are further names accepted on the command line, e.g. "ws".
	Short []string
	// Parent is the parent kind's Name; empty for a root kind.
	Parent string
	// APIVersions are the apiVersions accepted for the kind; the first is
	// the one stored and shown. Empty means [APIVersion].
	APIVersions []string
	// Namespaced kinds (raw Istio objects) carry metadata.namespace: where
	// they are written in each selected cluster.
	Namespaced bool
	// NewSpec returns an empty spec message of this kind.
	NewSpec func() proto.Message
	// Default fills defaults into a decoded spec; optional.
	Default func(spec proto.Message)
	// Validate checks a decoded spec alone; optional. Paths are relative to
	// the resource ("spec.type").
	Validate func(spec proto.Message) []FieldError
	// ValidateIn is Validate for kinds whose rules also read the object's
	// name and namespace (Istio's own kinds); optional.
	ValidateIn func(name, namespace string, spec proto.Message) []FieldError
	// CheckRefs checks an object against the rest of the store; optional.
	CheckRefs func(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error)
	// CheckDelete says why deleting a stored object would take from
	// clusters what workloads there still use, which only a forced delete
	// may; optional. Empty means it may go.
	CheckDelete func(ctx context.Context, r store.Reader, rec store.Record) (string, error)
}

// APIVersion is the apiVersion the kind is stored and shown with.
func (k *Kind) APIVersion() string {
	if len(k.APIVersions) == 0 {
		return APIVersion
	}
	return k.APIVersions[0]
}

func (k *Kind) acceptsAPIVersion(v string) bool {
	if len(k.APIVersions) == 0 {
		return v == APIVersion
	}
	for _, a := range k.APIVersions {
		if a == v {
			return true
		}
	}
	return false
}

// FieldError is one problem at one field of one resource.
type FieldError struct {
	Field   string
	Message string
}

// Registry holds the known kinds. It is built once at start-up and read
// concurrently afterwards.
type Registry struct {
	kinds  map[string]*Kind // by Name
	lookup map[string]*Kind // by every accepted spelling, lowercased
	depth  map[string]int
}

// NewRegistry returns a registry of the given kinds. It panics on a
// programming error: a duplicate name or an unknown parent.
func NewRegistry(kinds ...*Kind) *Registry {
	r := &Registry{kinds: map[string]*Kind{}, lookup: map[string]*Kind{}, depth: map[string]int{}}
	for _, k := range kinds {
		r.add(k)
	}
	for _, k := range kinds {
		if k.Parent != "" && r.kinds[k.Parent] == nil {
			panic(fmt.Sprintf("resource: kind %s has unknown parent %s", k.Name, k.Parent))
		}
	}
	return r
}

func (r *Registry) add(k *Kind) {
	names := append([]string{k.Name, k.Plural}, k.Short...)
	for _, n := range names {
		n = strings.ToLower(n)
		if prev := r.lookup[n]; prev != nil && prev != k {
			panic(fmt.Sprintf("resource: name %q is taken twice", n))
		}
		r.lookup[n] = k
	}
	r.kinds[k.Name] = k
}

// Lookup finds a kind by its name, plural or a short name, in any case.
func (r *Registry) Lookup(name string) (*Kind, bool) {
	k, ok := r.lookup[strings.ToLower(name)]
	return k, ok
}

// Kind returns the kind named exactly name.
func (r *Registry) Kind(name string) (*Kind, bool) {
	k, ok := r.kinds[name]
	return k, ok
}

// Kinds returns every kind, parents before children, then by name.
func (r *Registry) Kinds() []*Kind {
	out := make([]*Kind, 0, len(r.kinds))
	for _, k := range r.kinds {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := r.Depth(out[i]), r.Depth(out[j])
		if di != dj {
			return di < dj
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// BundleKinds are the kinds that travel in bundles: those living in
// groups, and the settings of organizations, tenants and workspaces and the
// organization's IstioInstallations (in their scope groups).
func (r *Registry) BundleKinds() []string {
	var out []string
	for _, k := range r.Kinds() {
		switch k.Name {
		case KindOrganizationSetting, KindTenantSetting, KindWorkspaceSetting, KindIstioInstallation:
			out = append(out, k.Name)
			continue
		}
		if k.Parent == KindGroup {
			out = append(out, k.Name)
		}
	}
	return out
}

// Depth is 0 for a root kind, 1 for its children, and so on.
func (r *Registry) Depth(k *Kind) int {
	d := 0
	for p := k.Parent; p != ""; p = r.kinds[p].Parent {
		d++
	}
	return d
}

// Ancestors returns the chain of parent kinds of k, root first.
func (r *Registry) Ancestors(k *Kind) []*Kind {
	var out []*Kind
	for p := k.Parent; p != ""; p = r.kinds[p].Parent {
		out = append([]*Kind{r.kinds[p]}, out...)
	}
	return out
}

// ByPlural finds a kind by its plural, as it appears in an FQN.
func (r *Registry) ByPlural(plural string) (*Kind, bool) {
	k, ok := r.lookup[plural]
	if !ok || k.Plural != plural {
		return nil, false
	}
	return k, true
}

// Names lists every kind, for error messages.
func (r *Registry) Names() string { return strings.Join(r.names(), ", ") }

func (r *Registry) names() []string {
	var out []string
	for _, k := range r.Kinds() {
		out = append(out, k.Name)
	}
	return out
}

// UnknownKind is the error for a kind name the registry does not know.
func (r *Registry) UnknownKind(name string) error {
	return fmt.Errorf("unknown kind %q: known kinds are %s", name, r.Names())
}
