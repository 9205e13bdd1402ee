package compile

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBothValuesIsTheConjunctionOfTwoStringMatches(t *testing.T) {
	exact := func(v string) *stringMatch { return &stringMatch{kind: "exact", value: v} }
	prefix := func(v string) *stringMatch { return &stringMatch{kind: "prefix", value: v} }
	regex := func(v string) *stringMatch { return &stringMatch{kind: "regex", value: v} }
	for _, tc := range []struct {
		name      string
		a, b      *stringMatch
		want      *stringMatch
		ok, exact bool
	}{
		{"nothing and a prefix", nil, prefix("/a"), prefix("/a"), true, true},
		{"a prefix and nothing", prefix("/a"), nil, prefix("/a"), true, true},
		{"equal", exact("x"), exact("x"), exact("x"), true, true},
		{"two exact values", exact("x"), exact("y"), nil, false, true},
		{"exact inside a prefix", prefix("/a"), exact("/a/b"), exact("/a/b"), true, true},
		{"exact outside a prefix", exact("/b"), prefix("/a"), nil, false, true},
		{"exact a regex matches whole", regex("v[0-9]+"), exact("v2"), exact("v2"), true, true},
		{"exact a regex matches in part only", exact("xv2"), regex("v[0-9]+"), nil, false, true},
		{"the longer prefix", prefix("/a"), prefix("/a/b"), prefix("/a/b"), true, true},
		{"the longer prefix, other order", prefix("/a/b"), prefix("/a"), prefix("/a/b"), true, true},
		{"disjoint prefixes", prefix("/a"), prefix("/b"), nil, false, true},
		{"a prefix and a regex", prefix("/a"), regex("/a.*"), nil, true, false},
		{"a regex and a prefix", regex("/a.*"), prefix("/a"), nil, true, false},
		{"two regexes", regex("a.*"), regex(".*b"), nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, exact := bothValues(tc.a, tc.b)
			if ok != tc.ok || exact != tc.exact {
				t.Fatalf("ok, exact = %v, %v; want %v, %v", ok, exact, tc.ok, tc.exact)
			}
			if ok && exact && *got != *tc.want {
				t.Fatalf("got %+v, want %+v", *got, *tc.want)
			}
		})
	}
}

func TestIntersectKeepsThePairsThatCanBothHold(t *testing.T) {
	h := func(name, v string) headerMatch {
		return headerMatch{name: name, match: stringMatch{kind: "exact", value: v}}
	}
	prefix := func(v string) *stringMatch { return &stringMatch{kind: "prefix", value: v} }
	gateway := []httpMatch{
		{uri: prefix("/cart"), headers: []headerMatch{h("a", "1")}},
		{headers: []headerMatch{h("end-user", "bob")}},
	}
	route := []httpMatch{
		{headers: []headerMatch{h("end-user", "jason")}},
		{uri: prefix("/cart/beta"), headers: []headerMatch{h("z", "2")}},
	}
	got, inexpressible := intersect(gateway, route)
	want := []httpMatch{
		{uri: prefix("/cart"), headers: []headerMatch{h("a", "1"), h("end-user", "jason")}},
		{uri: prefix("/cart/beta"), headers: []headerMatch{h("a", "1"), h("z", "2")}},
		// bob and jason: no request is both.
		{uri: prefix("/cart/beta"), headers: []headerMatch{h("end-user", "bob"), h("z", "2")}},
	}
	if inexpressible {
		t.Error("inexpressible, want every pair expressible")
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(httpMatch{}, headerMatch{}, stringMatch{})); d != "" {
		t.Fatalf("intersect (-want +got):\n%s", d)
	}

	// A rule that matches every request takes the route's matches, and the
	// other way round.
	if got, _ := intersect(nil, route); len(got) != len(route) {
		t.Fatalf("every request ∧ route = %v, want the route's matches", got)
	}
	// No pair can hold: nil, which callers read as "no route", never "all".
	if got, _ := intersect(gateway[1:], route[:1]); got != nil {
		t.Fatalf("bob ∧ jason = %v, want nil", got)
	}
}
