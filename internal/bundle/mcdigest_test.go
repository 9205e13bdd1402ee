package bundle

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestSumsAddAndSubtractInAnyOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var hs []Hash
	for range 50 {
		var h Hash
		for i := range h {
			h[i] = byte(r.Uint32())
		}
		hs = append(hs, h)
	}
	hs = append(hs, Hash{0: 0xff, 1: 0xff, 31: 0xff}) // carries across every limb
	var fwd, back Sum
	for i := range hs {
		fwd = fwd.Add(hs[i])
		back = back.Add(hs[len(hs)-1-i])
	}
	if fwd != back {
		t.Fatal("the sum depends on the order")
	}
	for _, h := range hs {
		fwd = fwd.Sub(h)
	}
	if fwd != (Sum{}) {
		t.Fatalf("adding then subtracting every hash leaves %v", fwd)
	}
}

// randomSlice is a slice with services s0..s(n-1), each with some of the
// clusters c0..c5 as remotes.
func randomSlice(r *rand.Rand, n int) *Multicluster {
	mc := &Multicluster{}
	if r.IntN(2) == 0 {
		mc.EastWest = []EastWest{{Owner: "o/s", Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}, Address: fmt.Sprint("10.0.0.", r.IntN(3))}}
	}
	for i := range n {
		s := RemoteService{Owner: "o/s", Namespace: "shop", Name: fmt.Sprint("s", i), Ports: []ServicePort{{Name: "http", Number: 8080, Protocol: "HTTP"}}, Local: r.IntN(2) == 0}
		for c := range 6 {
			if r.IntN(2) == 0 {
				s.Remotes = append(s.Remotes, RemoteInstance{Cluster: fmt.Sprint("c", c), Address: "10.1.0.1", Port: 15443, Ready: uint32(r.IntN(3))})
			}
		}
		if len(s.Remotes) > 0 {
			mc.Services = append(mc.Services, s)
		}
	}
	mc.SortServices()
	return mc
}

// diff is the patch from a to b that a central control plane would send:
// every service of either, each remote of b set and each of a only removed.
func diff(a, b *Multicluster) *MulticlusterPatch {
	p := &MulticlusterPatch{SetEastWest: true, EastWest: b.EastWest}
	byKey := map[ServiceKey]RemoteService{}
	for _, s := range b.Services {
		byKey[s.Key()] = s
	}
	for _, s := range a.Services {
		if _, ok := byKey[s.Key()]; !ok {
			p.Services = append(p.Services, ServicePatch{Key: s.Key(), Removed: true})
		}
	}
	old := map[ServiceKey]map[string]bool{}
	for _, s := range a.Services {
		old[s.Key()] = map[string]bool{}
		for _, rm := range s.Remotes {
			old[s.Key()][rm.Cluster] = true
		}
	}
	for _, s := range b.Services {
		h := s
		h.Remotes = nil
		sp := ServicePatch{Key: s.Key(), Header: &h, Remotes: s.Remotes}
		for c := range old[s.Key()] {
			if !containsCluster(s.Remotes, c) {
				sp.RemovedRemotes = append(sp.RemovedRemotes, c)
			}
		}
		p.Services = append(p.Services, sp)
	}
	return p
}

func containsCluster(rs []RemoteInstance, c string) bool {
	for _, r := range rs {
		if r.Cluster == c {
			return true
		}
	}
	return false
}

func TestAPatchedSliceEqualsTheTargetAndSoDoesItsDigestAfterTheWire(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		a, b := randomSlice(r, 1+r.IntN(6)), randomSlice(r, 1+r.IntN(6))
		// Over the wire, as an agent gets it.
		data, err := json.Marshal(Delta{MulticlusterPatch: diff(a, b)})
		if err != nil {
			t.Fatal(err)
		}
		var d Delta
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		got := (&Bundle{Multicluster: a}).Apply(d).Multicluster
		if got.Digest() != b.Digest() {
			t.Fatalf("case %d: the patched slice's digest differs from the target's", i)
		}
		if len(got.Services) == 0 {
			got.Services = nil
		}
		if len(b.Services) == 0 {
			b.Services = nil
		}
		if !reflect.DeepEqual(got.Services, b.Services) {
			t.Fatalf("case %d: patched to\n%+v\nwant\n%+v", i, got.Services, b.Services)
		}
	}
}

func TestTheDigestMovesWithEveryFieldAndOnlyThenAndIgnoresOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	mc := randomSlice(r, 5)
	for len(mc.Services) < 2 {
		mc = randomSlice(r, 5)
	}
	base := mc.Digest()
	// The same slice in another order, and after a JSON round trip.
	shuffled := *mc
	shuffled.Services = append([]RemoteService(nil), mc.Services...)
	shuffled.Services[0], shuffled.Services[1] = shuffled.Services[1], shuffled.Services[0]
	if shuffled.Digest() != base {
		t.Fatal("the digest depends on the services' order")
	}
	data, _ := json.Marshal(mc)
	var back Multicluster
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Digest() != base {
		t.Fatal("the digest changes through JSON")
	}
	for name, change := range map[string]func(m *Multicluster){
		"a remote's ready count": func(m *Multicluster) { m.Services[0].Remotes[0].Ready += 7 },
		"a remote's address":     func(m *Multicluster) { m.Services[0].Remotes[0].Address = "10.9.9.9" },
		"a port":                 func(m *Multicluster) { m.Services[1].Ports[0].Number++ },
		"local":                  func(m *Multicluster) { m.Services[1].Local = !m.Services[1].Local },
		"the east-west list":     func(m *Multicluster) { m.EastWest = append(m.EastWest, EastWest{Owner: "x"}) },
		"the edges":              func(m *Multicluster) { m.Edges = []EdgeServer{{Owner: "e"}} },
		// A remote moved from one service to another is a change too.
		"a remote moved": func(m *Multicluster) {
			rm := m.Services[0].Remotes[0]
			m.Services[0].Remotes = m.Services[0].Remotes[1:]
			m.Services[1].Remotes = append(m.Services[1].Remotes, rm)
		},
	} {
		data, _ := json.Marshal(mc)
		var c Multicluster
		_ = json.Unmarshal(data, &c)
		change(&c)
		if c.Digest() == base {
			t.Errorf("changing %s leaves the digest", name)
		}
	}
}
