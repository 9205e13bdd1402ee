package compile

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/istio"
	"flotilla.io/flotilla/internal/schema"
	"flotilla.io/flotilla/internal/selector"
)

// The label and annotation on every emitted object. The applier lists objects
// by the label and prunes only those whose owner is no longer compiled.
const (
	LabelManagedBy  = "app.kubernetes.io/managed-by"
	ManagedBy       = "flotilla"
	AnnotationOwner = "flotilla.io/owner"
)

// Group config modes (bundle.Group.ConfigMode).
const (
	ConfigModeDirect  = "DIRECT"
	ConfigModeBridged = "BRIDGED"
)

// Diagnostic is one reason some intent was not (fully) compiled.
type Diagnostic struct {
	// FQN is the intent object's fully qualified name.
	FQN string `json:"fqn"`
	// Field is the path of the field at fault, e.g.
	// "spec.http[0].routing.rules[1].route.host", or "" for the whole object.
	Field string `json:"field,omitempty"`
	// Message says what is wrong and how to fix it.
	Message string `json:"message"`
}

// String returns "fqn: field: message".
func (d Diagnostic) String() string {
	if d.Field == "" {
		return d.FQN + ": " + d.Message
	}
	return d.FQN + ": " + d.Field + ": " + d.Message
}

// Result is the compiled output for one cluster.
type Result struct {
	// Objects are sorted by (apiVersion, kind, namespace, name) and unique by
	// that key. Each object is the caller's.
	Objects []*unstructured.Unstructured
	// Diagnostics are sorted by (FQN, field, message) and unique.
	Diagnostics []Diagnostic
}

// Compile compiles b for its cluster, b.Cluster, whose existing namespaces
// are namespaces. It never fails: intent that cannot be compiled yields
// diagnostics, and everything else is still emitted. A nil bundle compiles
// to nothing.
func Compile(b *bundle.Bundle, namespaces []string) Result {
	return CompileIn(b, Cluster{Namespaces: namespaces})
}

// Cluster is what the compiler knows of the cluster it compiles for.
type Cluster struct {
	// Namespaces are the cluster's existing namespaces.
	Namespaces []string
	// DestinationRules maps a host to the DestinationRule ("<ns>/<name>")
	// that someone other than Flotilla keeps for it in the cluster. Flotilla
	// writes no DestinationRule of its own for such a host: two for one host
	// conflict in Istio.
	DestinationRules map[string]string
	// Cache, when set, remembers the objects the last compilations found
	// valid, so a recompile validates only what changed. It never changes
	// the output. A Cache is for one caller at a time.
	Cache *Cache
	// NamespaceWide maps "<Kind>/<namespace>" to the "<ns>/<name>" of a
	// namespace-wide PeerAuthentication or Sidecar (no selector) that someone
	// other than Flotilla keeps there. Istio takes one of each per
	// namespace, so the settings pass writes none beside it.
	NamespaceWide map[string]string
}

// CompileIn is Compile with everything known of the cluster.
func CompileIn(b *bundle.Bundle, in Cluster) Result {
	if b == nil {
		return Result{Objects: []*unstructured.Unstructured{}}
	}
	c := newCompilation(b, in)
	for _, o := range c.objects {
		c.object(o)
	}
	c.prepareSettings()
	c.settingsPass()
	if b.Multicluster != nil {
		c.multicluster(b.Multicluster)
	}
	c.serviceRoutes()
	c.gatewayServices()
	c.istioPass()
	return c.result()
}

// compilation is the state of one Compile call.
type compilation struct {
	cluster    string
	namespaces map[string]bool
	userDRs    map[string]string // host → "<ns>/<name>" of a DestinationRule not Flotilla's
	userWide   map[string]string // "<Kind>/<ns>" → "<ns>/<name>" of a namespace-wide policy not Flotilla's
	directWide map[string]string // "<Kind>/<ns>" → FQN of the DIRECT object that is one
	cache      *Cache
	groups     map[string]bundle.Group
	objects    []bundle.Object // sorted
	out        []emitted
	diags      []Diagnostic

	// The settings pass (effective.go).
	settingObjs   map[string][]settingObject // by group FQN
	settingGroups []string                   // real groups holding settings, sorted
	workspaces    []scope                    // workspace scope groups, sorted
	trustDomains  []string
	nsSettings    map[string]*namespaceSettings
	nsSorted      []string
	routes        []serviceRoute          // ServiceRoutes, compiled after the settings
	routeOf       map[string]serviceRoute // the ServiceRoutes written, by host
	gateways      []gatewayService        // IngressGateways' VirtualServices, emitted after the ServiceRoutes
	hostsOf       map[string][]string
	// failoverLB is the localityLbSetting of exposed services whose
	// DestinationRule a ServiceRoute writes, by host.
	failoverLB map[string]map[string]any
	// edges are the edge slice's servers, by edgeKey.
	edges map[string]bundle.EdgeServer
	// installs are the bundle's valid IstioInstallations, in FQN order.
	installs []istioInstallation
}

// newCompilation prepares a compilation of b: groups and objects sorted, so
// that the first of duplicates (and the order of everything below) does not
// depend on the bundle's order.
func newCompilation(b *bundle.Bundle, in Cluster) *compilation {
	c := &compilation{
		cluster:     b.Cluster,
		namespaces:  make(map[string]bool, len(in.Namespaces)),
		groups:      make(map[string]bundle.Group, len(b.Groups)),
		userDRs:     in.DestinationRules,
		userWide:    in.NamespaceWide,
		cache:       in.Cache,
		settingObjs: map[string][]settingObject{},
		failoverLB:  map[string]map[string]any{},
		routeOf:     map[string]serviceRoute{},
		nsSettings:  map[string]*namespaceSettings{},
	}
	for _, ns := range in.Namespaces {
		c.namespaces[ns] = true
	}
	if b.Multicluster != nil {
		c.edges = make(map[string]bundle.EdgeServer, len(b.Multicluster.Edges))
		for _, e := range b.Multicluster.Edges {
			c.edges[edgeKey(e.Owner, e.Server)] = e
		}
	}
	groups := slices.Clone(b.Groups)
	slices.SortStableFunc(groups, compareGroups)
	for _, g := range groups {
		if _, dup := c.groups[g.FQN]; !dup {
			c.groups[g.FQN] = g
		}
	}
	c.objects = slices.Clone(b.Objects)
	slices.SortStableFunc(c.objects, compareObjects)
	return c
}

// emitted is an object, its sort key and the FQN of the intent it came
// from.
type emitted struct {
	owner                             string
	apiVersion, kind, namespace, name string
	obj                               *unstructured.Unstructured
}

// diag records a diagnostic for the object fqn.
func (c *compilation) diag(fqn, field, format string, args ...any) {
	c.diags = append(c.diags, Diagnostic{FQN: fqn, Field: field, Message: fmt.Sprintf(format, args...)})
}

// object runs the pass of o's kind.
func (c *compilation) object(o bundle.Object) {
	g, ok := c.groups[o.Group]
	if !ok {
		c.diag(o.FQN, "group", "group %q is not in the bundle for cluster %q", o.Group, c.cluster)
		return
	}
	sel, err := selector.ParseSet(g.Namespaces)
	if err != nil {
		c.diag(o.FQN, "group", "group %q has an invalid namespace selector: namespaces%v", g.FQN, err)
		return
	}
	t := target{cluster: c.cluster, selector: sel, namespaces: c.namespaces}
	switch {
	case o.APIVersion == IngressGatewayAPIVersion && o.Kind == IngressGatewayKind:
		c.ingressGateway(o, t)
	case o.APIVersion == IngressGatewayAPIVersion && o.Kind == EdgeGatewayKind:
		c.edgeGateway(o, t)
	case o.APIVersion == IngressGatewayAPIVersion && isSettingKind(o.Kind):
		c.setting(o, g, sel)
	case o.APIVersion == IngressGatewayAPIVersion && o.Kind == KindServiceRoute:
		c.serviceRoute(o, g, t)
	case o.APIVersion == IngressGatewayAPIVersion && o.Kind == KindIstioInstallation:
		c.istioInstallation(o)
	case g.ConfigMode == ConfigModeDirect:
		c.direct(o, t)
	default:
		c.diag(o.FQN, "kind", "%s %s is not a kind Flotilla compiles in a %s group: use one of %s (%s), or put Istio kinds in a DIRECT group",
			cmp.Or(o.APIVersion, `""`), cmp.Or(o.Kind, `""`), cmp.Or(g.ConfigMode, ConfigModeBridged),
			strings.Join([]string{IngressGatewayKind, EdgeGatewayKind, KindServiceRoute, KindTrafficSetting, KindSecuritySetting}, ", "), IngressGatewayAPIVersion)
	}
}

// target decides where an object's output may go.
type target struct {
	cluster    string
	selector   selector.Set
	namespaces map[string]bool
}

// reaches reports whether output may be written into namespace ns: the
// group's selector matches (cluster, ns) and ns exists in the cluster.
func (t target) reaches(ns string) bool {
	return t.namespaces[ns] && t.selector.Match(t.cluster, ns)
}

// emit adds an object owned by the intent object owner, once Istio's own
// validation accepts it.
func (c *compilation) emit(owner, apiVersion, kind, namespace, name string, spec map[string]any) {
	k, ok := istio.Lookup(apiVersion, kind)
	if !ok {
		c.diag(owner, "", "compiled a %s %s, which is not an Istio kind Flotilla delivers; this is a bug in Flotilla", apiVersion, kind)
		return
	}
	// What the compiler produces passes Istio's own validation, or is not
	// delivered: istiod would reject it in the cluster anyway. An object
	// equal to one the cache saw valid is not validated again.
	var key [32]byte
	if c.cache != nil {
		key = c.cache.objectKey(kind, namespace, name, spec)
	}
	if !c.cache.valid(key) {
		if errs := istio.ValidateBuilt(k, name, namespace, spec); len(errs) > 0 {
			for _, e := range errs {
				c.diag(owner, "", "the %s %s/%s compiled from it is invalid, so it is not delivered: %s: %s", kind, namespace, name, e.Path, e.Message)
			}
			return
		}
	}
	c.cache.keep(key)
	c.add(owner, apiVersion, kind, namespace, name, spec)
}

// add appends an object known to be valid to the output.
func (c *compilation) add(owner, apiVersion, kind, namespace, name string, spec map[string]any) {
	c.out = append(c.out, emitted{owner: owner, apiVersion: apiVersion, kind: kind, namespace: namespace, name: name, obj: &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": apiVersion,
		"kind":       kind,
		"metadata": map[string]any{
			"name":        name,
			"namespace":   namespace,
			"labels":      map[string]any{LabelManagedBy: ManagedBy},
			"annotations": map[string]any{AnnotationOwner: owner},
		},
		"spec": spec,
	}}})
}

// result sorts the output, drops objects that collide with an earlier one
// (reporting the collision on the later owner) and sorts the diagnostics.
func (c *compilation) result() Result {
	c.cache.rotate()
	slices.SortStableFunc(c.out, func(a, b emitted) int {
		return cmp.Or(compareEmitted(a, b), cmp.Compare(a.owner, b.owner))
	})
	r := Result{Objects: make([]*unstructured.Unstructured, 0, len(c.out))}
	for i, e := range c.out {
		if i > 0 && compareEmitted(c.out[i-1], e) == 0 {
			kept := r.Objects[len(r.Objects)-1]
			c.diag(e.owner, "", "%s %s %s/%s is also produced by %s, whose object is kept: rename one of them",
				e.obj.GetAPIVersion(), e.obj.GetKind(), e.obj.GetNamespace(), e.obj.GetName(),
				kept.GetAnnotations()[AnnotationOwner])
			continue
		}
		r.Objects = append(r.Objects, e.obj)
	}
	slices.SortFunc(c.diags, func(a, b Diagnostic) int {
		return cmp.Or(cmp.Compare(a.FQN, b.FQN), schema.ComparePaths(a.Field, b.Field),
			cmp.Compare(a.Field, b.Field), cmp.Compare(a.Message, b.Message))
	})
	r.Diagnostics = slices.Compact(c.diags)
	return r
}

func compareEmitted(a, b emitted) int {
	return cmp.Or(
		cmp.Compare(a.apiVersion, b.apiVersion),
		cmp.Compare(a.kind, b.kind),
		cmp.Compare(a.namespace, b.namespace),
		cmp.Compare(a.name, b.name),
	)
}

func compareKeys(a, b *unstructured.Unstructured) int {
	return cmp.Or(
		cmp.Compare(a.GetAPIVersion(), b.GetAPIVersion()),
		cmp.Compare(a.GetKind(), b.GetKind()),
		cmp.Compare(a.GetNamespace(), b.GetNamespace()),
		cmp.Compare(a.GetName(), b.GetName()),
	)
}

func compareGroups(a, b bundle.Group) int {
	return cmp.Or(
		cmp.Compare(a.FQN, b.FQN),
		cmp.Compare(a.ConfigMode, b.ConfigMode),
		cmp.Compare(a.Type, b.Type),
		slices.Compare(a.Namespaces, b.Namespaces),
		slices.Compare(a.TrustDomains, b.TrustDomains),
	)
}

func compareObjects(a, b bundle.Object) int {
	return cmp.Or(
		cmp.Compare(a.FQN, b.FQN),
		cmp.Compare(a.APIVersion, b.APIVersion),
		cmp.Compare(a.Kind, b.Kind),
		cmp.Compare(a.Group, b.Group),
		cmp.Compare(a.Namespace, b.Namespace),
		cmp.Compare(a.Name, b.Name),
		slices.Compare(a.Spec, b.Spec),
	)
}

// Field path helpers, in the style of package schema: .name, [i], ["key"].

func field(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func key(path, k string) string { return path + "[" + strconv.Quote(k) + "]" }

// stringMap is m as the map type unstructured objects hold.
func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
