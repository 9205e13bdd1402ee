package intent

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// Index is the intent that bundles are computed from, kept current from
// the store's event log: clusters, groups and the objects inside groups,
// with each object's and each group's digest cached (package bundle's hash
// tree). A change rehashes the objects and groups it touched and then only
// the versions of the clusters those groups select, so the cost of a change
// grows with the change, not with the fleet.
//
// An index is not safe for concurrent use (Central.mu guards the live one).
// A copy made with clone shares unchanged entries with its original and
// copies an entry before changing it, so Plan can apply a hypothetical
// change to a clone without a store transaction and without touching the
// live index.
type Index struct {
	reg *resource.Registry
	// inBundle holds the kinds that live in groups and travel in bundles.
	inBundle map[string]bool

	clusters map[string]*clusterEntry // by FQN
	byOrg    map[string]map[string]bool
	groups   map[string]*groupEntry // by FQN
	cow      bool                   // a clone: copy entries before changing them
}

// clusterEntry is one Cluster resource and the groups that select it.
type clusterEntry struct {
	fqn, name, org string
	trustDomain    string   // "cluster.local" when its spec names none
	groups         []string // FQNs, sorted
}

// groupEntry is one group, its objects and the clusters it selects.
type groupEntry struct {
	group    bundle.Group
	sel      selector.Set
	org      string
	objects  map[string]*objectEntry // by FQN
	hash     bundle.Hash
	stale    bool            // hash not yet recomputed after a change
	clusters map[string]bool // FQNs of the clusters it selects
	// frozen says streams hold objects as what they delivered (see sent):
	// the next change copies the map first, so a batch of changes copies
	// it once.
	frozen bool
}

// objectEntry is one object of a group with its digest and JSON, computed
// once per write and shared by every bundle that carries it.
type objectEntry struct {
	obj  bundle.Object
	hash bundle.Hash
	json []byte
}

// ErrNoCluster is returned for a cluster the index does not hold.
var ErrNoCluster = errors.New("cluster not registered")

// Cluster returns a cluster's name and organization; false when the
// index does not hold it.
func (x *Index) Cluster(fqn string) (name, org string, ok bool) {
	if ce := x.clusters[fqn]; ce != nil {
		return ce.name, ce.org, true
	}
	return "", "", false
}

// ClusterSet returns the FQNs of every cluster, as a new set.
func (x *Index) ClusterSet() map[string]bool {
	out := make(map[string]bool, len(x.clusters))
	for fqn := range x.clusters {
		out[fqn] = true
	}
	return out
}

// New returns an empty index of the registry's kinds.
func New(reg *resource.Registry) *Index {
	in := map[string]bool{}
	for _, k := range reg.BundleKinds() {
		in[k] = true
	}
	return &Index{reg: reg, inBundle: in, clusters: map[string]*clusterEntry{}, byOrg: map[string]map[string]bool{}, groups: map[string]*groupEntry{}}
}

// clone returns a copy-on-write copy of x.
func (x *Index) Clone() *Index {
	c := &Index{reg: x.reg, inBundle: x.inBundle, cow: true,
		clusters: make(map[string]*clusterEntry, len(x.clusters)),
		byOrg:    make(map[string]map[string]bool, len(x.byOrg)),
		groups:   make(map[string]*groupEntry, len(x.groups))}
	for k, v := range x.clusters {
		c.clusters[k] = v
	}
	for k, v := range x.byOrg {
		c.byOrg[k] = v
	}
	for k, v := range x.groups {
		c.groups[k] = v
	}
	return c
}

// reach returns the FQNs of the clusters the group selects; read only.
func (x *Index) Reach(group string) map[string]bool {
	if g := x.groups[group]; g != nil {
		return g.clusters
	}
	return nil
}

// relevant reports whether a record of this kind can change a bundle.
func (x *Index) Relevant(kind string) bool {
	return kind == resource.KindCluster || kind == resource.KindGroup || isScope(kind) || x.inBundle[kind]
}

// isScope reports whether records of kind become scope groups: every
// organization, tenant and workspace is a group in the bundles of its
// organization's clusters, holding its settings (a workspace's with its
// namespace patterns), so the compiler can merge a namespace's settings
// and name the callers that authorization rules allow.
func isScope(kind string) bool {
	return kind == resource.KindOrganization || kind == resource.KindTenant || kind == resource.KindWorkspace
}

// apply applies one event and adds the FQNs of the clusters whose bundle it
// may have changed to affected. It fails only on a stored record it cannot
// decode, and then changes nothing.
func (x *Index) Apply(ev store.Event, affected map[string]bool) error {
	r := ev.Record
	del := ev.Type == store.EventDelete
	switch {
	case r.Kind == resource.KindCluster:
		td := trustDomainOf(r)
		if del {
			x.removeCluster(r.FQN)
			if err := x.removeGroup(r.FQN, affected); err != nil {
				return err
			}
		} else if c, ok := x.clusters[r.FQN]; !ok {
			x.addCluster(r, td)
			x.putClusterGroup(r, affected)
		} else if c.trustDomain != td {
			x.mutCluster(r.FQN).trustDomain = td
			x.putClusterGroup(r, affected)
		} else {
			x.putClusterGroup(r, affected)
			return nil // the rest of a cluster's spec is in its cluster group
		}
		affected[r.FQN] = true
		x.syncTrustDomains(resource.OrganizationOf(r.FQN), affected)
	case isScope(r.Kind):
		if del {
			return x.removeGroup(r.FQN, affected)
		}
		return x.putScope(r, affected)
	case r.Kind == resource.KindGroup:
		if del {
			return x.removeGroup(r.FQN, affected)
		}
		return x.putGroup(r, affected)
	case x.inBundle[r.Kind]:
		g := x.groups[r.Parent]
		if g == nil {
			if del {
				return nil
			}
			return fmt.Errorf("%s: its group %s is unknown", r.FQN, r.Parent)
		}
		g = x.mutGroup(r.Parent)
		if del {
			delete(g.objects, r.FQN)
		} else {
			e, err := x.newObject(r)
			if err != nil {
				return err
			}
			g.objects[r.FQN] = e
		}
		g.stale = true
		for c := range g.clusters {
			affected[c] = true
		}
	}
	return nil
}

func (x *Index) newObject(r store.Record) (*objectEntry, error) {
	apiVersion := resource.APIVersion
	if k, ok := x.reg.Kind(r.Kind); ok {
		apiVersion = k.APIVersion()
	}
	o := bundle.Object{APIVersion: apiVersion, Kind: r.Kind, FQN: r.FQN, Name: r.Name, Group: r.Parent, Namespace: r.Namespace, Spec: r.Spec}
	data, err := json.Marshal(&o)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", r.FQN, err)
	}
	return &objectEntry{obj: o, hash: bundle.ObjectHash(o), json: data}, nil
}

// putClusterGroup keeps the cluster's own group, which only its bundle
// carries: what its spec says of it, for the IstioInstallations that
// select and render by it.
func (x *Index) putClusterGroup(r store.Record, affected map[string]bool) {
	facts := &bundle.ClusterFacts{}
	_ = json.Unmarshal(r.Spec, facts) // the store holds validated specs; the other fields are not facts
	if len(facts.Labels) == 0 {
		facts.Labels = nil
	}
	if old := x.groups[r.FQN]; old != nil && old.group.Cluster.Equal(facts) {
		return
	}
	sel, err := selector.ParseSet([]string{r.Name + "/*"})
	if err != nil {
		return // cluster names are DNS labels, which always parse
	}
	x.setGroup(bundle.Group{FQN: r.FQN, Type: compile.GroupTypeCluster, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}, Cluster: facts}, sel, affected)
}

// trustDomainOf is a stored cluster's trust domain.
func trustDomainOf(r store.Record) string {
	var spec struct {
		TrustDomain string `json:"trustDomain"`
	}
	if json.Unmarshal(r.Spec, &spec) != nil || spec.TrustDomain == "" {
		return "cluster.local"
	}
	return spec.TrustDomain
}

// syncTrustDomains keeps the organization's scope group listing its
// clusters' trust domains.
func (x *Index) syncTrustDomains(org string, affected map[string]bool) {
	g := x.groups[org]
	if g == nil {
		return
	}
	tds := x.trustDomains(org)
	if slices.Equal(tds, g.group.TrustDomains) {
		return
	}
	g = x.mutGroup(org)
	g.group.TrustDomains = tds
	g.stale = true
	for c := range g.clusters {
		affected[c] = true
	}
}

// trustDomains are the sorted trust domains of an organization's clusters.
func (x *Index) trustDomains(org string) []string {
	var out []string
	for c := range x.byOrg[org] {
		out = append(out, x.clusters[c].trustDomain)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (x *Index) addCluster(r store.Record, td string) {
	c := &clusterEntry{fqn: r.FQN, name: r.Name, org: resource.OrganizationOf(r.FQN), trustDomain: td}
	x.clusters[r.FQN] = c
	orgs := x.byOrg[c.org]
	if x.cow || orgs == nil {
		orgs = cloneSet(orgs)
		x.byOrg[c.org] = orgs
	}
	orgs[r.FQN] = true
	for fqn, g := range x.groups {
		if g.org == c.org && g.sel.MatchCluster(c.name) {
			g = x.mutGroup(fqn)
			g.clusters[c.fqn] = true
			c.groups = append(c.groups, fqn)
		}
	}
	sort.Strings(c.groups)
}

func (x *Index) removeCluster(fqn string) {
	c := x.clusters[fqn]
	if c == nil {
		return
	}
	delete(x.clusters, fqn)
	if x.cow {
		x.byOrg[c.org] = cloneSet(x.byOrg[c.org])
	}
	delete(x.byOrg[c.org], fqn)
	for _, g := range c.groups {
		delete(x.mutGroup(g).clusters, fqn)
	}
}

func (x *Index) putGroup(r store.Record, affected map[string]bool) error {
	spec, sel, err := resource.StoredGroup(r)
	if err != nil {
		return err
	}
	x.setGroup(bundle.Group{FQN: r.FQN, Type: spec.GetType(), ConfigMode: spec.GetConfigMode(), Namespaces: spec.GetNamespaceSelector().GetNames()}, sel, affected)
	return nil
}

// everyCluster selects every cluster of an organization: scope groups
// reach them all.
var everyCluster, _ = selector.ParseSet([]string{"*/*"})

// putScope puts an organization, tenant or workspace as its scope group.
func (x *Index) putScope(r store.Record, affected map[string]bool) error {
	g := bundle.Group{FQN: r.FQN, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}}
	switch r.Kind {
	case resource.KindOrganization:
		g.Type, g.TrustDomains = compile.GroupTypeOrganization, x.trustDomains(r.FQN)
	case resource.KindTenant:
		g.Type = compile.GroupTypeTenant
	case resource.KindWorkspace:
		sel, err := resource.StoredWorkspaceSelector(r)
		if err != nil {
			return err
		}
		g.Type = compile.GroupTypeWorkspace
		for _, p := range sel {
			g.Namespaces = append(g.Namespaces, p.String())
		}
	}
	if old := x.groups[r.FQN]; old != nil && sameGroup(old.group, g) {
		return nil
	}
	x.setGroup(g, everyCluster, affected)
	return nil
}

// setGroup puts a group with the clusters of its organization it selects.
func (x *Index) setGroup(def bundle.Group, sel selector.Set, affected map[string]bool) {
	g := x.mutGroup(def.FQN)
	if g == nil {
		g = &groupEntry{org: resource.OrganizationOf(def.FQN), objects: map[string]*objectEntry{}, clusters: map[string]bool{}}
		x.groups[def.FQN] = g
	}
	g.group = def
	if g.group.Namespaces == nil {
		g.group.Namespaces = []string{}
	}
	g.sel = sel
	g.stale = true
	for c := range g.clusters {
		affected[c] = true // the group's content changed, or it left them
	}
	for c := range x.byOrg[g.org] {
		now := g.sel.MatchCluster(x.clusters[c].name)
		if now == g.clusters[c] {
			continue
		}
		affected[c] = true
		ce := x.mutCluster(c)
		if now {
			g.clusters[c] = true
			ce.groups = insertSorted(ce.groups, def.FQN)
		} else {
			delete(g.clusters, c)
			ce.groups = removeSorted(ce.groups, def.FQN)
		}
	}
}

func (x *Index) removeGroup(fqn string, affected map[string]bool) error {
	g := x.groups[fqn]
	if g == nil {
		return nil
	}
	delete(x.groups, fqn)
	for c := range g.clusters {
		affected[c] = true
		ce := x.mutCluster(c)
		ce.groups = removeSorted(ce.groups, fqn)
	}
	return nil
}

// mutGroup returns the group to change: in a clone, a private copy; in
// the live index, the group with a private objects map if streams may
// hold the current one.
func (x *Index) mutGroup(fqn string) *groupEntry {
	g := x.groups[fqn]
	if g == nil {
		return nil
	}
	if !x.cow {
		if g.frozen {
			g.objects, g.frozen = maps.Clone(g.objects), false
		}
		return g
	}
	c := *g
	c.objects = make(map[string]*objectEntry, len(g.objects))
	for k, v := range g.objects {
		c.objects[k] = v
	}
	c.clusters = cloneSet(g.clusters)
	x.groups[fqn] = &c
	return &c
}

// mutCluster returns the cluster to change: in a clone, a private copy.
func (x *Index) mutCluster(fqn string) *clusterEntry {
	c := x.clusters[fqn]
	if c == nil || !x.cow {
		return c
	}
	cp := *c
	cp.groups = slices.Clone(c.groups)
	x.clusters[fqn] = &cp
	return &cp
}

// rehash recomputes the digests of the groups changed since the last call.
// Changes only mark a group stale, so a batch of events (one transaction
// can put ten thousand objects in one group) rehashes each group once.
func (x *Index) Rehash() {
	for fqn, g := range x.groups {
		if g.stale {
			g = x.mutGroup(fqn)
			g.rehash()
		}
	}
}

// rehash recomputes the group's digest from its objects' cached digests.
func (g *groupEntry) rehash() {
	fqns := make([]string, 0, len(g.objects))
	for f := range g.objects {
		fqns = append(fqns, f)
	}
	sort.Strings(fqns)
	hashes := make([]bundle.Hash, len(fqns))
	for i, f := range fqns {
		hashes[i] = g.objects[f].hash
	}
	g.hash, g.stale = bundle.GroupHash(g.group, hashes), false
}

// SentGroup is a group as a stream delivered it: its digest, definition
// and objects (a frozen map, never changed after).
type SentGroup struct {
	hash    bundle.Hash
	group   bundle.Group
	objects map[string]*objectEntry
}

// sent returns what a stream that delivers the cluster's bundle now has
// delivered, by group FQN, and freezes it. Call rehash first after changes.
func (x *Index) Sent(fqn string) map[string]SentGroup {
	c := x.clusters[fqn]
	if c == nil {
		return nil
	}
	out := make(map[string]SentGroup, len(c.groups))
	for _, gf := range c.groups {
		g := x.groups[gf]
		g.frozen = true
		out[gf] = SentGroup{hash: g.hash, group: g.group, objects: g.objects}
	}
	return out
}

// delta returns what changed in the cluster's bundle since a stream
// delivered sent: groups and objects added, changed (objects are compared
// by entry: every write makes a new one) and removed, each sorted by FQN.
func (x *Index) Delta(fqn string, sent map[string]SentGroup) bundle.Delta {
	var d bundle.Delta
	c := x.clusters[fqn]
	if c == nil {
		return d
	}
	for _, gf := range c.groups {
		g := x.groups[gf]
		old, had := sent[gf]
		if had && old.hash == g.hash {
			continue
		}
		if !had || !sameGroup(old.group, g.group) {
			d.Groups = append(d.Groups, g.group)
		}
		for f, o := range g.objects {
			if !had || old.objects[f] != o {
				d.Objects = append(d.Objects, o.obj)
			}
		}
		if had {
			for f := range old.objects {
				if g.objects[f] == nil {
					d.Removed = append(d.Removed, f)
				}
			}
		}
	}
	for gf := range sent {
		if _, ok := slices.BinarySearch(c.groups, gf); !ok {
			d.RemovedGroups = append(d.RemovedGroups, gf)
		}
	}
	slices.SortFunc(d.Groups, func(a, b bundle.Group) int { return strings.Compare(a.FQN, b.FQN) })
	slices.SortFunc(d.Objects, func(a, b bundle.Object) int { return strings.Compare(a.FQN, b.FQN) })
	slices.Sort(d.Removed)
	slices.Sort(d.RemovedGroups)
	return d
}

func sameGroup(a, b bundle.Group) bool {
	return a.FQN == b.FQN && a.Type == b.Type && a.ConfigMode == b.ConfigMode && slices.Equal(a.Namespaces, b.Namespaces) &&
		slices.Equal(a.TrustDomains, b.TrustDomains) && a.Cluster.Equal(b.Cluster)
}

// version is the cluster's bundle version, from cached group digests:
// call rehash first after changes.
func (x *Index) Version(fqn string) string {
	c := x.clusters[fqn]
	if c == nil {
		return ""
	}
	hashes := make([]bundle.Hash, len(c.groups))
	for i, g := range c.groups {
		hashes[i] = x.groups[g].hash
	}
	return bundle.VersionOf(c.name, hashes)
}

// bundle assembles the cluster's bundle. The objects are shared with the
// index: callers must not change them.
func (x *Index) Bundle(fqn string) *bundle.Bundle {
	c := x.clusters[fqn]
	if c == nil {
		return nil
	}
	b := &bundle.Bundle{Cluster: c.name, Groups: []bundle.Group{}, Objects: []bundle.Object{}}
	for _, gf := range c.groups {
		g := x.groups[gf]
		b.Groups = append(b.Groups, g.group)
		for _, o := range g.objects {
			b.Objects = append(b.Objects, o.obj)
		}
	}
	sort.Slice(b.Objects, func(i, j int) bool { return b.Objects[i].FQN < b.Objects[j].FQN })
	return b
}

// content is the cluster's bundle as JSON, assembled from the objects'
// cached JSON; it decodes to bundle(fqn).
func (x *Index) Content(fqn string) ([]byte, error) {
	c := x.clusters[fqn]
	if c == nil {
		return nil, fmt.Errorf("cluster %s: %w", fqn, ErrNoCluster)
	}
	var objs []*objectEntry
	groups := make([]bundle.Group, 0, len(c.groups))
	for _, gf := range c.groups {
		g := x.groups[gf]
		groups = append(groups, g.group)
		for _, o := range g.objects {
			objs = append(objs, o)
		}
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].obj.FQN < objs[j].obj.FQN })
	head, err := json.Marshal(struct {
		Cluster string         `json:"cluster"`
		Groups  []bundle.Group `json:"groups"`
	}{c.name, groups})
	if err != nil {
		return nil, err
	}
	size := len(head) + 16
	for _, o := range objs {
		size += len(o.json) + 1
	}
	out := make([]byte, 0, size)
	out = append(out, head[:len(head)-1]...)
	out = append(out, `,"objects":[`...)
	for i, o := range objs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, o.json...)
	}
	return append(out, "]}"...), nil
}

// carries reports whether the cluster's bundle holds the object.
func (x *Index) Carries(cluster, group, object string) bool {
	g := x.groups[group]
	if g == nil || !g.clusters[cluster] {
		return false
	}
	_, ok := g.objects[object]
	return ok
}

// targets lists the clusters whose bundle holds the object, sorted.
func (x *Index) Targets(group, object string) []string {
	g := x.groups[group]
	if g == nil {
		return nil
	}
	if _, ok := g.objects[object]; !ok {
		return nil
	}
	out := make([]string, 0, len(g.clusters))
	for c := range g.clusters {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

func cloneSet(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func insertSorted(s []string, v string) []string {
	i, found := slices.BinarySearch(s, v)
	if found {
		return s
	}
	return slices.Insert(s, i, v)
}

func removeSorted(s []string, v string) []string {
	i, found := slices.BinarySearch(s, v)
	if !found {
		return s
	}
	return slices.Delete(s, i, i+1)
}
