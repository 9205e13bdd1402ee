// Package ack makes an agent's acknowledgements compact on the wire: after
// the first one on a stream, an agent sends only the resources whose status
// changed (Diff), and the central control plane rebuilds the whole
// acknowledgement from the previous one (Merge). A one-object change then
// costs one status, not one per resource of the bundle.
//
//	agent: full ack ──Diff(previous on this stream)──▶ partial ──▶ central: Merge(previous, partial) ──▶ full ack
package ack

import (
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

// Diff returns cur as a partial acknowledgement against prev: the
// resources that are new or differ, and the FQNs of those gone. cur and
// prev are full acknowledgements; neither is changed.
func Diff(prev, cur *agentv1.Ack) *agentv1.Ack {
	out := &agentv1.Ack{BundleVersion: cur.GetBundleVersion(), Revision: cur.GetRevision(), Partial: true}
	before := make(map[string]*agentv1.ResourceStatus, len(prev.GetResources()))
	for _, r := range prev.GetResources() {
		before[r.GetFqn()] = r
	}
	for _, r := range cur.GetResources() {
		if old, ok := before[r.GetFqn()]; !ok || !proto.Equal(old, r) {
			out.Resources = append(out.Resources, r)
		}
		delete(before, r.GetFqn())
	}
	for fqn := range before {
		out.Removed = append(out.Removed, fqn)
	}
	slices.Sort(out.Removed)
	return out
}

// Merge returns the full acknowledgement that partial amends base to, its
// resources in FQN order. base is not changed; the result shares its
// unchanged statuses.
func Merge(base, partial *agentv1.Ack) *agentv1.Ack {
	out := &agentv1.Ack{BundleVersion: partial.GetBundleVersion(), Revision: partial.GetRevision()}
	changed := make(map[string]*agentv1.ResourceStatus, len(partial.GetResources()))
	for _, r := range partial.GetResources() {
		changed[r.GetFqn()] = r
	}
	for _, f := range partial.GetRemoved() {
		changed[f] = nil
	}
	out.Resources = make([]*agentv1.ResourceStatus, 0, len(base.GetResources())+len(partial.GetResources()))
	for _, r := range base.GetResources() {
		if _, ok := changed[r.GetFqn()]; !ok {
			out.Resources = append(out.Resources, r)
		}
	}
	for _, r := range partial.GetResources() {
		out.Resources = append(out.Resources, r)
	}
	slices.SortFunc(out.Resources, func(a, b *agentv1.ResourceStatus) int { return strings.Compare(a.GetFqn(), b.GetFqn()) })
	return out
}
