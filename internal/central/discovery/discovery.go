// Package discovery joins the fleet service registry with the workspace
// settings and edge gateways into each cluster's multicluster slice: the
// east-west gateways to open there, the remote instances of the services
// exposed to it, and the targets of its edge servers.
//
// It keeps the slices incrementally, under a lock of its own:
//
//	registry.TakeChanges ─▶ changed services ─▶ their parts, one per exposing setting (shared by every importer)
//	                                              │ Δ digest per importer: O(1) (bundle.Sum)
//	                                              ▼
//	                                  change log (seq) ─▶ Next(cluster, mark): the remotes that moved since mark
//	settings, workspaces, clusters, gateways ─▶ rebuild (epoch+1): whole slices
//
// A part is one exposed service as one setting exposes it: its header
// (ports, failover priority, conflicts) and its exposed instances, by
// cluster. Every importing cluster sees the same part, less its own
// instance, with Local and Selector set where it runs the service too; so
// a changed instance costs its part's rebuild, one digest step per
// importer, and one remote instance per importer on the wire.
package discovery

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// Discovery keeps every cluster's multicluster slice. It is safe for
// concurrent use; it does no I/O but Load.
type Discovery struct {
	reg  *registry.Registry
	wake chan struct{} // capacity 1: an input moved

	mu    sync.Mutex
	in    inputs
	dirty bool // an input moved since the last rebuild

	// What the last rebuild derived from the inputs.
	ewIndex   eastWestIndex
	importers map[string][]string          // setting FQN → the clusters it exposes services to, sorted
	imports   map[string]map[string]bool   // cluster FQN → the settings exposing services to it
	bySetting map[string]map[string]*part  // setting FQN → service key → part
	eastWest  map[string][]bundle.EastWest // cluster FQN → its east-west gateways
	ewHash    map[string]bundle.Hash       // cluster FQN → bundle.EastWestHash of its entries

	edgesOut  map[string][]bundle.EdgeServer // edge cluster FQN → its servers
	edgesHash map[string]bundle.Hash         // cluster FQN → bundle.EdgesHash of its servers

	// Digests: a cluster's services sum is the total of its settings'
	// generic contributions, corrected where it runs the service or is
	// one of its instances (see part.contribution).
	totals      map[string]bundle.Sum // setting FQN → Σ generic contributions of its parts
	corrections map[string]bundle.Sum // cluster FQN → Σ (own − generic) contributions
	digests     map[string]bundle.Hash

	// The change log: what moved since a rebuild, for patches.
	epoch    int64
	seq      int64
	log      []change
	logStart int64 // seq of log[0]
}

// change is one part that moved: the instances (by cluster FQN) that did,
// besides its header, which a patch always carries.
type change struct {
	seq      int64
	setting  string
	key      string // registry.Key
	clusters []string
	// header says a patch must carry the service's header: it changed, or
	// some importer may not have held the service before.
	header bool
}

// The list hashes of a cluster without east-west entries or edge servers.
var noEastWest, noEdges = bundle.EastWestHash(nil), bundle.EdgesHash(nil)

// maxLog bounds the change log; a stream further behind gets its slice whole.
const maxLog = 1 << 16

// New returns a Discovery over the registry.
func New(reg *registry.Registry) *Discovery {
	d := &Discovery{reg: reg, wake: make(chan struct{}, 1), in: newInputs()}
	d.reset()
	return d
}

func (d *Discovery) reset() {
	d.importers, d.imports, d.bySetting, d.eastWest = map[string][]string{}, map[string]map[string]bool{}, map[string]map[string]*part{}, map[string][]bundle.EastWest{}
	d.edgesOut, d.totals, d.corrections = map[string][]bundle.EdgeServer{}, map[string]bundle.Sum{}, map[string]bundle.Sum{}
	d.ewHash, d.edgesHash = map[string]bundle.Hash{}, map[string]bundle.Hash{}
	if d.digests == nil {
		d.digests = map[string]bundle.Hash{}
	}
}

// Wake receives a value after an input moved; the registry's own Changed
// says when runtime state did.
func (d *Discovery) Wake() <-chan struct{} { return d.wake }

func (d *Discovery) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Apply takes one event of a Relevant kind. It reports whether the slices
// must be updated before the bundles of the event's revision are sent (see
// inputs.apply); otherwise the next Update takes it.
func (d *Discovery) Apply(ev store.Event) (now bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	moved, now, err := d.in.apply(ev)
	if moved {
		d.dirty = true
		d.poke()
	}
	return now, err
}

// Load replaces every input with the store's.
func (d *Discovery) Load(ctx context.Context, st store.Reader) error {
	in, err := loadInputs(ctx, st)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.in, d.dirty = in, true
	return nil
}

// EdgeGroups are the groups whose reach the edge slices need (Update's
// reach is asked only of these).
func (d *Discovery) EdgeGroups() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.in.edges.gateways) == 0 {
		return nil
	}
	return d.in.edges.groups()
}

// Update brings the slices up to the inputs and the registry, and returns
// the clusters whose slice changed. reach gives the clusters a group
// reaches (for the groups EdgeGroups named). After an input moved the
// slices are rebuilt whole; otherwise only the parts of the services that
// changed are, and the east-west entries of the clusters whose gateway
// did (a moved gateway moves every instance behind it too).
func (d *Discovery) Update(reach func(group string) map[string]bool) map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := d.reg.TakeChanges()
	if d.dirty {
		return d.rebuild(reach)
	}
	keys := maps.Clone(ch.Services)
	if keys == nil {
		keys = map[string]bool{}
	}
	gateways := maps.Clone(ch.Gateways)
	if gateways == nil {
		gateways = map[string]bool{}
	}
	// A Service in a namespace that a setting's workload selector names may
	// be a cluster's east-west gateway: the index of those is read again,
	// and the clusters where it runs (or ran) count as moved gateways.
	var candidates []string
	for key := range keys {
		if d.ewIndex.namespaces[namespaceOf(key)] {
			candidates = append(candidates, key)
		}
	}
	if len(candidates) > 0 {
		before := d.ewIndex
		d.ewIndex = newEastWestIndex(d.settingsSorted(), d.ewServices())
		for _, x := range []eastWestIndex{before, d.ewIndex} {
			for cluster, cs := range x.byCluster {
				for _, c := range cs {
					if slices.Contains(candidates, registry.Key(c.namespace, c.name)) {
						gateways[cluster] = true
					}
				}
			}
		}
	}
	changed := map[string]bool{}
	for cluster := range gateways {
		for _, key := range d.reg.ServiceKeys(cluster) {
			keys[key] = true
		}
		d.updateEastWest(cluster, changed)
	}
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		d.updateService(key, changed)
	}
	if ingress := d.in.edges.ingressNamespaces(); len(ingress) > 0 {
		for key := range keys {
			if ingress[namespaceOf(key)] {
				d.updateEdges(reach, changed)
				break
			}
		}
	}
	return changed
}

// ewServices are the registry's services in the namespaces that settings'
// workload selectors name. Callers hold d.mu.
func (d *Discovery) ewServices() []registry.Service {
	var out []registry.Service
	for _, ns := range slices.Sorted(maps.Keys(d.ewIndex.namespaces)) {
		out = append(out, d.reg.Services(nil, registry.Filter{Namespace: ns})...)
	}
	return out
}

// updateEastWest recomputes the cluster's east-west entries. Callers hold
// d.mu.
func (d *Discovery) updateEastWest(fqn string, changed map[string]bool) {
	if d.imports[fqn] == nil {
		return
	}
	var next []bundle.EastWest
	for _, s := range d.settingsSorted() {
		if d.imports[fqn][s.fqn] && s.ew.GetWorkloadSelector() != nil {
			next = append(next, d.eastWestEntry(fqn, s))
		}
	}
	if h := bundle.EastWestHash(next); h != d.listHash(d.ewHash, fqn, noEastWest) {
		d.eastWest[fqn], d.ewHash[fqn] = next, h
		d.digests[fqn] = d.digestOf(fqn)
		changed[fqn] = true
	}
}

func namespaceOf(key string) string { return key[:strings.IndexByte(key, '/')] }

// settingsSorted are the settings that expose services, by FQN.
func (d *Discovery) settingsSorted() []setting {
	var out []setting
	for _, s := range d.in.settings {
		if d.in.workspaces[s.workspace] != nil && s.ew != nil {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b setting) int { return cmp.Compare(a.fqn, b.fqn) })
	return out
}

// rebuild derives every slice from the inputs and the whole registry.
// Callers hold d.mu.
func (d *Discovery) rebuild(reach func(string) map[string]bool) map[string]bool {
	before := d.digests
	d.reset()
	d.digests = map[string]bundle.Hash{}
	d.dirty = false
	settings := d.settingsSorted()
	var services []registry.Service
	if len(settings) > 0 || len(d.in.edges.gateways) > 0 { // nothing exposed, no edge: skip merging the registry
		services = d.reg.Services(nil, registry.Filter{})
	}
	d.ewIndex = newEastWestIndex(settings, services)
	clusters := slices.Sorted(maps.Keys(d.in.clusters))
	for _, s := range settings {
		sel := d.in.workspaces[s.workspace]
		for _, fqn := range clusters {
			ce := d.in.clusters[fqn]
			if ce.org != s.org || !sel.MatchCluster(ce.name) {
				continue
			}
			d.importers[s.fqn] = append(d.importers[s.fqn], fqn)
			if d.imports[fqn] == nil {
				d.imports[fqn] = map[string]bool{}
			}
			d.imports[fqn][s.fqn] = true
			if ws := s.ew.GetWorkloadSelector(); ws != nil {
				d.eastWest[fqn] = append(d.eastWest[fqn], d.eastWestEntry(fqn, s))
			}
		}
		d.bySetting[s.fqn] = map[string]*part{}
		for _, svc := range services {
			if p := d.buildPart(s, svc, nil); p != nil {
				d.bySetting[s.fqn][registry.Key(svc.Namespace, svc.Name)] = p
				d.addPart(p, 1)
			}
		}
	}
	if len(d.in.edges.gateways) > 0 {
		d.edgesOut = d.in.edges.compute(d.in.clusters, reach, services)
	}
	for fqn, l := range d.eastWest {
		d.ewHash[fqn] = bundle.EastWestHash(l)
	}
	for fqn, l := range d.edgesOut {
		d.edgesHash[fqn] = bundle.EdgesHash(l)
	}
	d.epoch++
	d.log, d.logStart = nil, d.seq+1
	changed := map[string]bool{}
	for fqn := range d.sliced() {
		d.digests[fqn] = d.digestOf(fqn)
		if old, ok := before[fqn]; !ok || old != d.digests[fqn] {
			changed[fqn] = true
		}
	}
	for fqn := range before {
		if _, ok := d.digests[fqn]; !ok {
			changed[fqn] = true
		}
	}
	return changed
}

// sliced are the clusters that have a slice: those a setting exposes
// services to, and the edge clusters.
func (d *Discovery) sliced() map[string]bool {
	out := make(map[string]bool, len(d.imports)+len(d.edgesOut))
	for fqn := range d.imports {
		out[fqn] = true
	}
	for fqn := range d.edgesOut {
		out[fqn] = true
	}
	return out
}

// digestOf computes a cluster's slice digest from the totals. Callers hold d.mu.
func (d *Discovery) digestOf(fqn string) bundle.Hash {
	sum := d.corrections[fqn]
	for s := range d.imports[fqn] {
		sum = sum.Plus(d.totals[s])
	}
	return bundle.MulticlusterDigest(d.listHash(d.ewHash, fqn, noEastWest), d.listHash(d.edgesHash, fqn, noEdges), sum)
}

// listHash is a cluster's list hash from m, or none's.
func (d *Discovery) listHash(m map[string]bundle.Hash, fqn string, none bundle.Hash) bundle.Hash {
	if h, ok := m[fqn]; ok {
		return h
	}
	return none
}

// addPart adds (sign 1) or takes away (sign -1) a part's contributions to
// the digests of its setting's importers. Callers hold d.mu.
func (d *Discovery) addPart(p *part, sign int) {
	add := func(s bundle.Sum, t bundle.Sum) bundle.Sum {
		if sign > 0 {
			return s.Plus(t)
		}
		return s.Minus(t)
	}
	generic := p.contribution("")
	d.totals[p.setting] = add(d.totals[p.setting], generic)
	for fqn := range p.special() {
		if !d.imports[fqn][p.setting] {
			continue
		}
		d.corrections[fqn] = add(d.corrections[fqn], p.contribution(fqn).Minus(generic))
	}
}

// updateService rebuilds the parts of one service, logs what moved, and
// adds the clusters whose digest moved to changed. Callers hold d.mu.
func (d *Discovery) updateService(key string, changed map[string]bool) {
	ns, name, _ := strings.Cut(key, "/")
	var svc *registry.Service
	if found := d.reg.Services(nil, registry.Filter{Namespace: ns, Name: name}); len(found) == 1 {
		svc = &found[0]
	}
	for _, s := range d.settingsSorted() {
		parts := d.bySetting[s.fqn]
		if parts == nil {
			continue
		}
		old := parts[key]
		var next *part
		if svc != nil {
			next = d.buildPart(s, *svc, old)
		}
		moved := old.diff(next)
		if moved == nil {
			continue
		}
		// With two instances or more before, every importer held the
		// service (at most its own instance is left out of its view).
		header := old == nil || next == nil || len(old.remotes) <= 1 || old.headerHash != next.headerHash ||
			!maps.EqualFunc(old.hosts, next.hosts, func(a, b map[string]string) bool { return maps.Equal(a, b) })
		if old != nil {
			d.addPart(old, -1)
			delete(parts, key)
		}
		if next != nil {
			d.addPart(next, 1)
			parts[key] = next
		}
		d.seq++
		d.log = append(d.log, change{seq: d.seq, setting: s.fqn, key: key, clusters: moved, header: header})
		for _, fqn := range d.importers[s.fqn] {
			if dg := d.digestOf(fqn); dg != d.digests[fqn] {
				d.digests[fqn] = dg
				changed[fqn] = true
			}
		}
	}
	if len(d.log) > maxLog {
		drop := len(d.log) - maxLog/2
		d.log = slices.Delete(d.log, 0, drop)
		d.logStart = d.log[0].seq
	}
}

// updateEdges recomputes the edge slices. Callers hold d.mu.
func (d *Discovery) updateEdges(reach func(string) map[string]bool, changed map[string]bool) {
	next := d.in.edges.compute(d.in.clusters, reach, d.reg.Services(nil, registry.Filter{}))
	for fqn := range next {
		if _, had := d.edgesOut[fqn]; !had || bundle.EdgesHash(next[fqn]) != bundle.EdgesHash(d.edgesOut[fqn]) {
			changed[fqn] = true
		}
	}
	for fqn := range d.edgesOut {
		if _, ok := next[fqn]; !ok {
			changed[fqn] = true
		}
	}
	d.edgesOut = next
	d.edgesHash = map[string]bundle.Hash{}
	for fqn, l := range next {
		d.edgesHash[fqn] = bundle.EdgesHash(l)
	}
	sliced := d.sliced()
	for fqn := range changed {
		if sliced[fqn] {
			d.digests[fqn] = d.digestOf(fqn)
		} else {
			delete(d.digests, fqn)
		}
	}
}

// Digest is the cluster's slice digest; false when it has no slice.
func (d *Discovery) Digest(fqn string) (bundle.Hash, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h, ok := d.digests[fqn]
	return h, ok
}

// Version is the version of the cluster's bundle whose intent has version
// intent: intent alone when the cluster has no slice.
func (d *Discovery) Version(intent, fqn string) string {
	if intent == "" {
		return ""
	}
	if h, ok := d.Digest(fqn); ok {
		return bundle.WithMulticlusterDigest(intent, h)
	}
	return intent
}

// Slice is the cluster's slice, nil when it has none.
func (d *Discovery) Slice(fqn string) *bundle.Multicluster {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.slice(fqn)
}

func (d *Discovery) slice(fqn string) *bundle.Multicluster {
	if _, ok := d.digests[fqn]; !ok {
		return nil
	}
	mc := &bundle.Multicluster{EastWest: d.eastWest[fqn], Edges: d.edgesOut[fqn]}
	for _, s := range slices.Sorted(maps.Keys(d.imports[fqn])) {
		for _, key := range slices.Sorted(maps.Keys(d.bySetting[s])) {
			if rs := d.bySetting[s][key].view(fqn); rs != nil {
				mc.Services = append(mc.Services, *rs)
			}
		}
	}
	return mc
}

// Mark is what a stream delivered of a cluster's slice: the point in the
// change log, and the lists' hashes.
type Mark struct {
	has        bool
	digest     bundle.Hash
	epoch, seq int64
	eastWest   bundle.Hash
	edges      bundle.Hash
}

// Send is what a stream sends of a cluster's slice now.
type Send struct {
	Has    bool        // the cluster has a slice
	Digest bundle.Hash // its digest, when it has
	// Whole is set when the slice goes whole (SetWhole, nil when the
	// cluster no longer has one); Patch otherwise, when it changed.
	SetWhole bool
	Whole    *bundle.Multicluster
	Patch    *bundle.MulticlusterPatch
	Mark     *Mark // what the stream will have delivered
}

// Next is what a stream that delivered since (nil: nothing yet, or not a
// delta-taking agent) sends of the cluster's slice now: the slice whole, or
// a patch of what moved since.
func (d *Discovery) Next(fqn string, since *Mark) Send {
	d.mu.Lock()
	defer d.mu.Unlock()
	dg, has := d.digests[fqn]
	out := Send{Has: has, Digest: dg, Mark: &Mark{has: has, digest: dg, epoch: d.epoch, seq: d.seq,
		eastWest: d.listHash(d.ewHash, fqn, noEastWest), edges: d.listHash(d.edgesHash, fqn, noEdges)}}
	switch {
	case since == nil:
		out.SetWhole, out.Whole = true, d.slice(fqn)
		return out
	case since.has == has && since.digest == dg: // the slice the agent holds
		return out
	case since.has != has || since.epoch != d.epoch || since.seq+1 < d.logStart:
		out.SetWhole, out.Whole = true, d.slice(fqn)
		return out
	}
	p := &bundle.MulticlusterPatch{}
	if out.Mark.eastWest != since.eastWest {
		p.SetEastWest, p.EastWest = true, d.eastWest[fqn]
	}
	if out.Mark.edges != since.edges {
		p.SetEdges, p.Edges = true, d.edgesOut[fqn]
	}
	type partKey struct{ setting, key string }
	moved := map[partKey]map[string]bool{}
	header := map[partKey]bool{}
	first, _ := slices.BinarySearchFunc(d.log, since.seq+1, func(c change, seq int64) int { return cmp.Compare(c.seq, seq) })
	for _, c := range d.log[first:] {
		if !d.imports[fqn][c.setting] {
			continue
		}
		k := partKey{c.setting, c.key}
		header[k] = header[k] || c.header
		if moved[k] == nil {
			moved[k] = map[string]bool{}
		}
		for _, cl := range c.clusters {
			moved[k][cl] = true
		}
	}
	// In no particular order: a patch's services, and their instances, may
	// come in any (sorting them cost more than the rest, per stream).
	for k := range moved {
		ns, name, _ := strings.Cut(k.key, "/")
		sk := bundle.ServiceKey{Owner: k.setting, Namespace: ns, Name: name}
		part := d.bySetting[k.setting][k.key]
		if !part.visible(fqn) {
			p.Services = append(p.Services, bundle.ServicePatch{Key: sk, Removed: true})
			continue
		}
		// Only the moved instances, looked up: a view of the whole part
		// would cost every instance, for every stream.
		sp := bundle.ServicePatch{Key: sk}
		if header[k] {
			head := part.headerFor(fqn)
			sp.Header = &head
		}
		for cl := range moved[k] {
			if r, ok := part.remotes[cl]; ok && cl != fqn {
				sp.Remotes = append(sp.Remotes, r)
				continue
			}
			name := cl[strings.LastIndexByte(cl, '/')+1:]
			if ref, ok := d.in.clusters[cl]; ok {
				name = ref.name
			}
			sp.RemovedRemotes = append(sp.RemovedRemotes, name)
		}
		p.Services = append(p.Services, sp)
	}
	if !p.Empty() {
		out.Patch = p
	}
	return out
}

// ExposedBy returns the settings that expose the service (in any of its
// instances' clusters), sorted.
func (d *Discovery) ExposedBy(svc registry.Service) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, s := range d.in.settings {
		sel := d.in.workspaces[s.workspace]
		if sel == nil || s.ew == nil {
			continue
		}
		for _, in := range svc.Instances {
			ce, ok := d.in.clusters[in.Cluster]
			if ok && ce.org == s.org && sel.Match(ce.name, svc.Namespace) && exposes(s.ew, in.Labels) {
				out = append(out, s.fqn)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// Workspaces returns the workspaces' namespace selectors, by FQN.
func (d *Discovery) Workspaces() map[string]selector.Set {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.in.workspaces) // the selectors are replaced, never changed
}

// ClusterInfo is what a Cluster's spec says of its place.
type ClusterInfo struct {
	Region, Zone string
	Drained      bool
}

// Cluster returns what the cluster's spec says of its place.
func (d *Discovery) Cluster(fqn string) ClusterInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	info := d.in.edges.clusters[fqn]
	return ClusterInfo{Region: info.region, Zone: info.zone, Drained: info.drained}
}

// SliceJSON is the cluster's slice as JSON, nil when it has none.
func (d *Discovery) SliceJSON(fqn string) ([]byte, error) {
	mc := d.Slice(fqn)
	if mc == nil {
		return nil, nil
	}
	return json.Marshal(mc)
}
