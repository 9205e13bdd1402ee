package ack

import (
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

func status(fqn, state, msg string) *agentv1.ResourceStatus {
	return &agentv1.ResourceStatus{Fqn: fqn, State: state, Message: msg, Objects: []string{"VirtualService ns/" + fqn}}
}

// A partial acknowledgement carries only what changed, and merging it into
// the previous one gives back the full one.
func TestAPartialAcknowledgementCarriesTheChangeAndMergesBackToTheWhole(t *testing.T) {
	prev := &agentv1.Ack{BundleVersion: "v1", Revision: 4, Resources: []*agentv1.ResourceStatus{
		status("a", "Applied", "1 object(s)"), status("b", "Applied", "1 object(s)"), status("c", "Applied", "1 object(s)")}}
	cur := &agentv1.Ack{BundleVersion: "v2", Revision: 7, Resources: []*agentv1.ResourceStatus{
		status("a", "Applied", "1 object(s)"), status("b", "Failed", "denied"), status("d", "Applied", "1 object(s)")}}
	p := Diff(prev, cur)
	if !p.GetPartial() || p.GetBundleVersion() != "v2" || p.GetRevision() != 7 {
		t.Fatalf("partial header: %v", p)
	}
	var fqns []string
	for _, r := range p.GetResources() {
		fqns = append(fqns, r.GetFqn())
	}
	if len(fqns) != 2 || fqns[0] != "b" || fqns[1] != "d" || len(p.GetRemoved()) != 1 || p.GetRemoved()[0] != "c" {
		t.Fatalf("partial carries %v, removes %v; want [b d], [c]", fqns, p.GetRemoved())
	}
	if got := Merge(prev, p); !proto.Equal(got, cur) {
		t.Fatalf("merged:\n%v\nwant:\n%v", got, cur)
	}
	if len(prev.GetResources()) != 3 || prev.GetResources()[2].GetFqn() != "c" {
		t.Fatal("Merge changed its base")
	}
	// Nothing changed: an empty partial, and the merge is the same.
	same := Diff(cur, cur)
	if len(same.GetResources())+len(same.GetRemoved()) != 0 {
		t.Fatalf("diff of equal acks: %v", same)
	}
	if got := Merge(cur, same); !proto.Equal(got, cur) {
		t.Fatalf("merge of an empty partial: %v", got)
	}
}
