package bundle

// Delta is the difference between two bundles of one cluster: what a
// central control plane sends an agent that holds the older one, instead of
// the whole newer one. A one-object change then costs one object on the
// wire, whatever the bundle's size.
//
//	old ──Apply(delta)──▶ new, checked by new.Version() == the version sent
type Delta struct {
	// Groups are the groups added or changed; RemovedGroups are the FQNs of
	// those gone, with every object in them.
	Groups        []Group  `json:"groups,omitempty"`
	RemovedGroups []string `json:"removedGroups,omitempty"`
	// Objects are the objects added or changed; Removed are the FQNs of
	// those gone.
	Objects []Object `json:"objects,omitempty"`
	Removed []string `json:"removed,omitempty"`
	// SetMulticluster says Multicluster replaces the bundle's slice (nil:
	// the cluster has none any more).
	SetMulticluster bool          `json:"setMulticluster,omitempty"`
	Multicluster    *Multicluster `json:"multicluster,omitempty"`
	// MulticlusterPatch, when set, changes the bundle's slice part by part
	// instead (the slice is never both replaced and patched).
	MulticlusterPatch *MulticlusterPatch `json:"multiclusterPatch,omitempty"`
}

// Apply returns the bundle that d makes of b. b is left as it is; the
// result shares b's unchanged objects.
func (b *Bundle) Apply(d Delta) *Bundle {
	gone := map[string]bool{}
	for _, g := range d.RemovedGroups {
		gone[g] = true
	}
	for _, g := range d.Groups {
		gone[g.FQN] = true // replaced below
	}
	out := &Bundle{Cluster: b.Cluster, Multicluster: b.Multicluster}
	for _, g := range b.Groups {
		if !gone[g.FQN] {
			out.Groups = append(out.Groups, g)
		}
	}
	out.Groups = append(out.Groups, d.Groups...)

	removedGroups := map[string]bool{}
	for _, g := range d.RemovedGroups {
		removedGroups[g] = true
	}
	drop := map[string]bool{}
	for _, f := range d.Removed {
		drop[f] = true
	}
	for _, o := range d.Objects {
		drop[o.FQN] = true // replaced below
	}
	out.Objects = make([]Object, 0, len(b.Objects)+len(d.Objects))
	for _, o := range b.Objects {
		if !drop[o.FQN] && !removedGroups[o.Group] {
			out.Objects = append(out.Objects, o)
		}
	}
	out.Objects = append(out.Objects, d.Objects...)
	switch {
	case d.SetMulticluster:
		out.Multicluster = d.Multicluster
	case !d.MulticlusterPatch.Empty():
		out.Multicluster = b.Multicluster.Patch(d.MulticlusterPatch)
	}
	out.Normalize()
	return out
}

// Empty reports whether d changes nothing.
func (d Delta) Empty() bool {
	return len(d.Groups)+len(d.RemovedGroups)+len(d.Objects)+len(d.Removed) == 0 && !d.SetMulticluster && d.MulticlusterPatch.Empty()
}
