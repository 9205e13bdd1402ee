package bundle

import (
	"encoding/json"
	"testing"
)

func TestVersionDependsOnContentNotOrder(t *testing.T) {
	a := Bundle{Cluster: "c1",
		Groups:  []Group{{FQN: "g2", Type: "gateway"}, {FQN: "g1", Type: "traffic"}},
		Objects: []Object{{FQN: "o2", Spec: json.RawMessage(`{}`)}, {FQN: "o1", Spec: json.RawMessage(`{"a":1}`)}},
	}
	b := Bundle{Cluster: "c1",
		Groups:  []Group{a.Groups[1], a.Groups[0]},
		Objects: []Object{a.Objects[1], a.Objects[0]},
	}
	if a.Version() != b.Version() {
		t.Fatal("the same content in another order has another version")
	}
	b.Objects[0].Spec = json.RawMessage(`{"a":2}`)
	if a.Version() == b.Version() {
		t.Fatal("a changed spec kept the version")
	}
	if (&Bundle{Cluster: "c1"}).Version() == (&Bundle{Cluster: "c2"}).Version() {
		t.Fatal("bundles of two clusters share a version")
	}
}

func TestGroupFindsByFQN(t *testing.T) {
	b := Bundle{Groups: []Group{{FQN: "b"}, {FQN: "a"}}}
	if g, ok := b.Group("a"); !ok || g.FQN != "a" {
		t.Fatal("unnormalized lookup failed")
	}
	b.Normalize()
	if _, ok := b.Group("c"); ok {
		t.Fatal("found a missing group")
	}
}
