package intent

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// world is intent as plain records, the model the index must agree with.
type world map[string]store.Record

func (w world) intent() Intent {
	var in Intent
	fqns := make([]string, 0, len(w))
	for f := range w {
		fqns = append(fqns, f)
	}
	sort.Strings(fqns)
	for _, f := range fqns {
		r := w[f]
		switch r.Kind {
		case resource.KindCluster:
			in.Clusters = append(in.Clusters, r)
		case resource.KindGroup:
			in.Groups = append(in.Groups, r)
		case resource.KindOrganization, resource.KindTenant, resource.KindWorkspace:
			in.Scopes = append(in.Scopes, r)
		default:
			in.Objects = append(in.Objects, r)
		}
	}
	return in
}

// randomChange returns a random intent change that keeps the world valid:
// clusters, groups (with random selectors) and objects in groups come and
// go, and specs change.
func randomChange(rnd *rand.Rand, w world) store.Event {
	const gp = "organizations/acme/tenants/t/workspaces/w/groups/"
	names := []string{"c1", "c2", "c3", "c4"}
	pick := func(kind string) (store.Record, bool) {
		var fqns []string
		for f, r := range w {
			if r.Kind == kind {
				fqns = append(fqns, f)
			}
		}
		if len(fqns) == 0 {
			return store.Record{}, false
		}
		sort.Strings(fqns)
		return w[fqns[rnd.IntN(len(fqns))]], true
	}
	for {
		switch rnd.IntN(10) {
		case 0: // a cluster appears, or its trust domain changes
			n := names[rnd.IntN(len(names))]
			spec := []string{`{}`, `{"trustDomain":"east.acme.io"}`, `{"trustDomain":"west.acme.io"}`}[rnd.IntN(3)]
			return store.Event{Type: store.EventPut, Record: rec("Cluster", "organizations/acme/clusters/"+n, spec)}
		case 7: // a scope appears, or a workspace's selector changes
			switch rnd.IntN(3) {
			case 0:
				return store.Event{Type: store.EventPut, Record: rec("Organization", "organizations/acme", `{}`)}
			case 1:
				return store.Event{Type: store.EventPut, Record: rec("Tenant", "organizations/acme/tenants/t", `{}`)}
			}
			ws := fmt.Sprintf("organizations/acme/tenants/t/workspaces/s%d", rnd.IntN(2))
			sel := []string{`"*/pay"`, `"c1/*"`, `"c2/pay","*/shop"`}[rnd.IntN(3)]
			return store.Event{Type: store.EventPut, Record: rec("Workspace", ws, `{"namespaceSelector":{"names":[`+sel+`]}}`)}
		case 8: // a workspace setting appears or changes
			if ws, ok := pick(resource.KindWorkspace); ok {
				mode := []string{"STRICT", "PERMISSIVE"}[rnd.IntN(2)]
				return store.Event{Type: store.EventPut, Record: rec("WorkspaceSetting", ws.FQN+fmt.Sprintf("/workspacesettings/d%d", rnd.IntN(2)),
					`{"defaultSecuritySetting":{"mtlsMode":"`+mode+`"}}`)}
			}
		case 9: // a workspace setting goes, or an empty workspace
			if o, ok := pick("WorkspaceSetting"); ok && rnd.IntN(2) == 0 {
				return store.Event{Type: store.EventDelete, Record: o}
			}
			if ws, ok := pick(resource.KindWorkspace); ok {
				empty := true
				for _, r := range w {
					if r.Parent == ws.FQN {
						empty = false
					}
				}
				if empty {
					return store.Event{Type: store.EventDelete, Record: ws}
				}
			}
		case 1: // a cluster goes
			if c, ok := pick(resource.KindCluster); ok {
				return store.Event{Type: store.EventDelete, Record: c}
			}
		case 2, 3: // a group appears or changes its selector
			g := fmt.Sprintf("g%d", rnd.IntN(3))
			sel := []string{`"*/pay"`, `"c1/pay"`, `"c2/*"`, `"c3/pay","c4/pay"`}[rnd.IntN(4)]
			return store.Event{Type: store.EventPut, Record: rec("Group", gp+g, `{"type":"traffic","configMode":"DIRECT","namespaceSelector":{"names":[`+sel+`]}}`)}
		case 4: // a group goes, once empty
			if g, ok := pick(resource.KindGroup); ok {
				empty := true
				for _, r := range w {
					if r.Parent == g.FQN {
						empty = false
					}
				}
				if empty {
					return store.Event{Type: store.EventDelete, Record: g}
				}
			}
		case 5: // an object appears or changes
			if g, ok := pick(resource.KindGroup); ok {
				o := rec("VirtualService", fmt.Sprintf("%s/virtualservices/vs%d", g.FQN, rnd.IntN(4)), fmt.Sprintf(`{"hosts":["h%d"]}`, rnd.IntN(5)))
				o.Namespace = "pay"
				return store.Event{Type: store.EventPut, Record: o}
			}
		case 6: // an object goes
			if o, ok := pick("VirtualService"); ok {
				return store.Event{Type: store.EventDelete, Record: o}
			}
		}
	}
}

func TestTheIncrementalIndexAlwaysAgreesWithBundlesComputedFromScratch(t *testing.T) {
	reg := resource.Builtin()
	for seed := range uint64(20) {
		rnd := rand.New(rand.NewPCG(seed, 1))
		w := world{}
		idx := New(reg)
		for step := range 200 {
			ev := randomChange(rnd, w)
			before := map[string]string{}
			for f := range idx.clusters {
				before[f] = idx.Version(f)
			}
			affected := map[string]bool{}
			if err := idx.Apply(ev, affected); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			idx.Rehash()
			if ev.Type == store.EventDelete {
				delete(w, ev.Record.FQN)
			} else {
				w[ev.Record.FQN] = ev.Record
			}
			want, err := Bundles(reg, w.intent())
			if err != nil {
				t.Fatal(err)
			}
			if len(want) != len(idx.clusters) {
				t.Fatalf("seed %d step %d: index has %d clusters, want %d", seed, step, len(idx.clusters), len(want))
			}
			for f, b := range want {
				got := idx.Bundle(f)
				if diff := cmp.Diff(b, got); diff != "" {
					t.Fatalf("seed %d step %d (%v %s): bundle of %s differs (-scratch +index):\n%s", seed, step, ev.Type, ev.Record.FQN, f, diff)
				}
				if v := idx.Version(f); v != b.Version() {
					t.Fatalf("seed %d step %d: version of %s is %s, the bundle hashes to %s", seed, step, f, v, b.Version())
				}
				var decoded bundle.Bundle
				content, err := idx.Content(f)
				if err != nil || json.Unmarshal(content, &decoded) != nil {
					t.Fatalf("content of %s does not decode: %v", f, err)
				}
				if diff := cmp.Diff(b, &decoded); diff != "" {
					t.Fatalf("seed %d step %d: content of %s differs:\n%s", seed, step, f, diff)
				}
				if before[f] != idx.Version(f) && !affected[f] {
					t.Fatalf("seed %d step %d: %s changed version but was not reported affected", seed, step, f)
				}
			}
		}
	}
}

// A delta against what a stream delivered, at any distance, applied to the
// bundle it delivered (after a trip through JSON, as on the wire), gives
// the current bundle exactly: what a stream holds is never changed by
// later writes.
func TestADeltaAgainstAnyDeliveredBundleGivesTheCurrentOne(t *testing.T) {
	reg := resource.Builtin()
	type stream struct {
		sent    map[string]SentGroup
		bundle  *bundle.Bundle
		version string
	}
	for seed := range uint64(20) {
		rnd := rand.New(rand.NewPCG(seed, 2))
		w := world{}
		idx := New(reg)
		streams := map[string]*stream{}
		deltas := 0
		for step := range 300 {
			ev := randomChange(rnd, w)
			if err := idx.Apply(ev, map[string]bool{}); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			idx.Rehash()
			if ev.Type == store.EventDelete {
				delete(w, ev.Record.FQN)
			} else {
				w[ev.Record.FQN] = ev.Record
			}
			for f := range streams {
				if idx.clusters[f] == nil {
					delete(streams, f) // a deleted cluster's stream ends
				}
			}
			for f := range idx.clusters {
				want := idx.Bundle(f)
				if s := streams[f]; s != nil && s.version != idx.Version(f) {
					data, err := json.Marshal(idx.Delta(f, s.sent))
					if err != nil {
						t.Fatal(err)
					}
					var d bundle.Delta
					if err := json.Unmarshal(data, &d); err != nil {
						t.Fatal(err)
					}
					got := s.bundle.Apply(d)
					if diff := cmp.Diff(want, got); diff != "" {
						t.Fatalf("seed %d step %d: %s from its delta differs (-index +applied):\n%s", seed, step, f, diff)
					}
					if got.Version() != idx.Version(f) {
						t.Fatalf("seed %d step %d: %s from its delta hashes to %s, want %s", seed, step, f, got.Version(), idx.Version(f))
					}
					deltas++
				}
				// Streams deliver now and then, so deltas span several changes.
				if streams[f] == nil || rnd.IntN(3) == 0 {
					streams[f] = &stream{sent: idx.Sent(f), bundle: want, version: idx.Version(f)}
				}
			}
		}
		if deltas == 0 {
			t.Fatalf("seed %d: no delta was checked", seed)
		}
	}
}

func TestAPlanOnACloneLeavesTheLiveIndexAlone(t *testing.T) {
	reg := resource.Builtin()
	rnd := rand.New(rand.NewPCG(7, 7))
	w := world{}
	idx := New(reg)
	for range 100 {
		ev := randomChange(rnd, w)
		if err := idx.Apply(ev, map[string]bool{}); err != nil {
			t.Fatal(err)
		}
		idx.Rehash()
		if ev.Type == store.EventDelete {
			delete(w, ev.Record.FQN)
		} else {
			w[ev.Record.FQN] = ev.Record
		}
	}
	snapshot := func() map[string]string {
		out := map[string]string{}
		for f := range idx.clusters {
			c, _ := idx.Content(f)
			out[f] = idx.Version(f) + string(c)
		}
		return out
	}
	live := snapshot()
	for range 200 {
		c, wc := idx.Clone(), world{}
		for f, r := range w {
			wc[f] = r
		}
		for range 5 {
			ev := randomChange(rnd, wc)
			if err := c.Apply(ev, map[string]bool{}); err != nil {
				t.Fatal(err)
			}
			c.Rehash()
			if ev.Type == store.EventDelete {
				delete(wc, ev.Record.FQN)
			} else {
				wc[ev.Record.FQN] = ev.Record
			}
		}
	}
	if diff := cmp.Diff(live, snapshot()); diff != "" {
		t.Fatalf("changes to clones leaked into the live index:\n%s", diff)
	}
}

func rec(kind, fqn, spec string) store.Record {
	name := fqn[strings.LastIndex(fqn, "/")+1:]
	parent := ""
	if i := strings.LastIndex(fqn, "/"); i > 0 && strings.Count(fqn, "/") > 1 {
		parent = fqn[:strings.LastIndex(fqn[:i], "/")]
	}
	return store.Record{Kind: kind, FQN: fqn, Name: name, Parent: parent, Spec: json.RawMessage(spec), ETag: "e"}
}

func TestBundlesCarryTheGroupsWhoseSelectorsReachTheCluster(t *testing.T) {
	reg := resource.Builtin()
	g := "organizations/acme/tenants/t/workspaces/w/groups/"
	in := Intent{
		Clusters: []store.Record{rec("Cluster", "organizations/acme/clusters/c1", `{}`), rec("Cluster", "organizations/acme/clusters/c2", `{}`), rec("Cluster", "organizations/other/clusters/c1", `{}`)},
		Groups: []store.Record{
			rec("Group", g+"all", `{"type":"gateway","configMode":"BRIDGED","namespaceSelector":{"names":["*/pay"]}}`),
			rec("Group", g+"one", `{"type":"traffic","configMode":"DIRECT","namespaceSelector":{"names":["c2/pay"]}}`),
		},
		Objects: []store.Record{rec("IngressGateway", g+"all/ingressgateways/shop", `{"a":1}`), rec("VirtualService", g+"one/virtualservices/vs", `{}`)},
	}
	got, err := Bundles(reg, in)
	if err != nil {
		t.Fatal(err)
	}
	summary := func(fqn string) string {
		b := got[fqn]
		var parts []string
		for _, o := range b.Objects {
			parts = append(parts, o.Kind+":"+o.Name)
		}
		return fmt.Sprintf("%s %d groups %v", b.Cluster, len(b.Groups), parts)
	}
	for fqn, want := range map[string]string{
		"organizations/acme/clusters/c1":  "c1 2 groups [IngressGateway:shop]",
		"organizations/acme/clusters/c2":  "c2 3 groups [IngressGateway:shop VirtualService:vs]",
		"organizations/other/clusters/c1": "c1 1 groups []",
	} {
		if s := summary(fqn); s != want {
			t.Errorf("bundle of %s = %s, want %s", fqn, s, want)
		}
		// Every bundle carries its own cluster group, and no other's.
		var own []string
		for _, gr := range got[fqn].Groups {
			if gr.Type == compile.GroupTypeCluster {
				own = append(own, gr.FQN)
			}
		}
		if !slices.Equal(own, []string{fqn}) {
			t.Errorf("bundle of %s carries the cluster groups %v, want its own alone", fqn, own)
		}
	}
	if got["organizations/acme/clusters/c1"].Objects[0].APIVersion != resource.APIVersion || got["organizations/acme/clusters/c2"].Objects[1].APIVersion != "networking.istio.io/v1" {
		t.Error("bundle objects lack their kinds' apiVersions")
	}
	again, _ := Bundles(reg, in)
	if again["organizations/acme/clusters/c2"].Version() != got["organizations/acme/clusters/c2"].Version() {
		t.Error("the same intent gave another version")
	}
}

func TestAClusterSpecChangeMovesItsOwnBundleAlone(t *testing.T) {
	reg := resource.Builtin()
	idx, broken := Build(reg, Intent{
		Clusters: []store.Record{rec("Cluster", "organizations/acme/clusters/c1", `{"network":"n1"}`), rec("Cluster", "organizations/acme/clusters/c2", `{}`)},
		Scopes:   []store.Record{rec("Organization", "organizations/acme", `{}`)},
	})
	if len(broken) > 0 {
		t.Fatal(broken)
	}
	c1, c2 := idx.Version("organizations/acme/clusters/c1"), idx.Version("organizations/acme/clusters/c2")
	for _, tc := range []struct {
		spec  string
		moves bool
	}{
		{`{"network":"n1","description":"the first"}`, false}, // not carried
		{`{"network":"n1","labels":{"env":"prod"}}`, true},
		{`{"network":"n2","labels":{"env":"prod"}}`, true},
		{`{"network":"n2","labels":{"env":"prod"},"region":"eu"}`, true},
	} {
		affected := map[string]bool{}
		if err := idx.Apply(store.Event{Type: store.EventPut, Record: rec("Cluster", "organizations/acme/clusters/c1", tc.spec)}, affected); err != nil {
			t.Fatal(err)
		}
		idx.Rehash()
		now := idx.Version("organizations/acme/clusters/c1")
		if moved := now != c1; moved != tc.moves || affected["organizations/acme/clusters/c1"] != tc.moves {
			t.Errorf("spec %s: version moved %v, affected %v; want %v", tc.spec, moved, affected, tc.moves)
		}
		if idx.Version("organizations/acme/clusters/c2") != c2 || affected["organizations/acme/clusters/c2"] {
			t.Errorf("spec %s of c1 moved c2's bundle", tc.spec)
		}
		c1 = now
		var facts *bundle.ClusterFacts
		for _, g := range idx.Bundle("organizations/acme/clusters/c1").Groups {
			if g.Type == compile.GroupTypeCluster {
				facts = g.Cluster
			}
		}
		want := &bundle.ClusterFacts{}
		_ = json.Unmarshal([]byte(tc.spec), want)
		if !facts.Equal(want) {
			t.Errorf("spec %s: the cluster group says %+v", tc.spec, facts)
		}
	}
	affected := map[string]bool{}
	if err := idx.Apply(store.Event{Type: store.EventDelete, Record: rec("Cluster", "organizations/acme/clusters/c1", `{}`)}, affected); err != nil {
		t.Fatal(err)
	}
	if b := idx.Bundle("organizations/acme/clusters/c2"); len(b.Groups) != 2 {
		t.Errorf("after c1's removal, c2 has the groups %+v", b.Groups)
	}
	if _, ok := idx.groups["organizations/acme/clusters/c1"]; ok {
		t.Error("c1's cluster group outlived it")
	}
}
