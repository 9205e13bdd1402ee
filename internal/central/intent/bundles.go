package intent

import (
	"context"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Intent is what bundles are computed from: the stored clusters, groups and
// the resources that live in groups.
type Intent struct {
	Clusters []store.Record
	// Scopes are the organizations, tenants and workspaces.
	Scopes  []store.Record
	Groups  []store.Record
	Objects []store.Record
}

// buildIndex indexes intent read whole. Records that cannot be used are
// left out and returned in broken, by FQN, with the reason.
func Build(reg *resource.Registry, in Intent) (*Index, map[string]string) {
	idx := New(reg)
	broken := map[string]string{}
	affected := map[string]bool{}
	for _, list := range [][]store.Record{in.Clusters, in.Scopes, in.Groups, in.Objects} {
		for _, r := range list {
			if err := idx.Apply(store.Event{Type: store.EventPut, Record: r}, affected); err != nil {
				broken[r.FQN] = err.Error()
			}
		}
	}
	idx.Rehash()
	return idx, broken
}

// Bundles computes every cluster's bundle, by cluster FQN. A group reaches
// a cluster of its organization when one of its patterns selects the
// cluster's name; the agent narrows to namespaces when it compiles, so a new
// namespace gets its policy without a round trip. It is pure, and it is
// what the central control plane's incremental index must always agree with.
func Bundles(reg *resource.Registry, in Intent) (map[string]*bundle.Bundle, error) {
	idx, broken := Build(reg, in)
	for fqn, why := range broken {
		return nil, &brokenError{fqn: fqn, why: why}
	}
	out := make(map[string]*bundle.Bundle, len(idx.clusters))
	for fqn := range idx.clusters {
		out[fqn] = idx.Bundle(fqn)
	}
	return out, nil
}

type brokenError struct{ fqn, why string }

func (e *brokenError) Error() string { return e.why }

// readIntent reads what bundles are computed from.
func Read(ctx context.Context, reg *resource.Registry, r store.Reader) (Intent, error) {
	var (
		in  Intent
		err error
	)
	if in.Clusters, err = r.List(ctx, store.Query{Kind: resource.KindCluster}); err != nil {
		return in, err
	}
	for _, k := range []string{resource.KindOrganization, resource.KindTenant, resource.KindWorkspace} {
		recs, err := r.List(ctx, store.Query{Kind: k})
		if err != nil {
			return in, err
		}
		in.Scopes = append(in.Scopes, recs...)
	}
	if in.Groups, err = r.List(ctx, store.Query{Kind: resource.KindGroup}); err != nil {
		return in, err
	}
	for _, k := range reg.BundleKinds() {
		objs, err := r.List(ctx, store.Query{Kind: k})
		if err != nil {
			return in, err
		}
		in.Objects = append(in.Objects, objs...)
	}
	return in, nil
}
