package selector

import "testing"

func mustParse(t *testing.T, s string) Pattern {
	t.Helper()
	p, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return p
}

func TestParseRejectsMalformedPatterns(t *testing.T) {
	for _, s := range []string{"", "c1", "c1/", "/ns", "c1/ns/x", "C1/ns", "c1/n_s", "c1/*x", "-a/ns", "c1/ns-"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) succeeded; want an error", s)
		}
	}
	for _, s := range []string{"c1/ns", "*/ns", "c1/*", "*/*", "prod-*/pay-*", "c*/n"} {
		if _, err := Parse(s); err != nil {
			t.Errorf("Parse(%q): %v", s, err)
		}
	}
}

func TestMatchSelectsByExactNamePrefixAndStar(t *testing.T) {
	cases := []struct {
		pattern, cluster, ns string
		want                 bool
	}{
		{"c1/payments", "c1", "payments", true},
		{"c1/payments", "c2", "payments", false},
		{"*/payments", "c9", "payments", true},
		{"c1/*", "c1", "anything", true},
		{"prod-*/pay-*", "prod-eu", "pay-api", true},
		{"prod-*/pay-*", "dev-eu", "pay-api", false},
		{"prod-*/pay-*", "prod-eu", "web", false},
	}
	for _, c := range cases {
		if got := mustParse(t, c.pattern).Match(c.cluster, c.ns); got != c.want {
			t.Errorf("%s matches %s/%s = %v, want %v", c.pattern, c.cluster, c.ns, got, c.want)
		}
	}
}

func TestOverlapsFindsAnyCommonNamespace(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"c1/ns1", "c1/ns1", true},
		{"c1/ns1", "c1/ns2", false},
		{"*/ns1", "c1/*", true},
		{"c1/*", "c2/*", false},
		{"pro*/a", "prod-*/a", true},
		{"prod-*/a", "dev-*/a", false},
		{"*/*", "c1/x", true},
		{"c1/pay-*", "c1/web", false},
	}
	for _, c := range cases {
		a, b := mustParse(t, c.a), mustParse(t, c.b)
		if got := a.Overlaps(b); got != c.want {
			t.Errorf("%s overlaps %s = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := b.Overlaps(a); got != c.want {
			t.Errorf("overlap is not symmetric for %s and %s", c.b, c.a)
		}
	}
}

func TestCoversRequiresEveryNamespaceInside(t *testing.T) {
	cases := []struct {
		outer, inner string
		want         bool
	}{
		{"*/*", "c1/ns", true},
		{"c1/*", "c1/ns", true},
		{"c1/*", "*/ns", false},
		{"prod-*/pay-*", "prod-eu/pay-api", true},
		{"prod-*/pay-*", "prod-eu/pay*", false},
		{"prod-*/pay-*", "prod-eu-*/pay-x*", true},
		{"c1/ns", "c1/ns", true},
		{"c1/ns", "c1/*", false},
	}
	for _, c := range cases {
		if got := mustParse(t, c.outer).Covers(mustParse(t, c.inner)); got != c.want {
			t.Errorf("%s covers %s = %v, want %v", c.outer, c.inner, got, c.want)
		}
	}
}

func TestSetMatchAndCoverUseAnyPattern(t *testing.T) {
	s, err := ParseSet([]string{"c1/a", "c2/*"})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Match("c2", "zzz") || s.Match("c1", "b") {
		t.Error("set matching is wrong")
	}
	if !s.MatchCluster("c1") || s.MatchCluster("c3") {
		t.Error("set cluster matching is wrong")
	}
	if !s.Covers(mustParse(t, "c2/x*")) || s.Covers(mustParse(t, "*/a")) {
		t.Error("set covering is wrong")
	}
	if _, err := ParseSet([]string{"c1/a", "bad"}); err == nil || err.Error()[:3] != "[1]" {
		t.Errorf("ParseSet error should name index 1, got %v", err)
	}
}

func TestNoPatternSelectsASystemNamespace(t *testing.T) {
	all, _ := ParseSet([]string{"*/*", "*/istio-*", "*/kube-*"})
	for _, ns := range []string{"istio-system", "flotilla-system", "flotilla-multicluster", "kube-system", "kube-public"} {
		if !System(ns) || all.Match("c1", ns) {
			t.Errorf("%s: System = %v, matched by %v = %v", ns, System(ns), all, all.Match("c1", ns))
		}
	}
	for _, ns := range []string{"istio-ingress", "shop", "kubernetes-dashboard-x"} {
		if System(ns) || !all.Match("c1", ns) {
			t.Errorf("%s: System = %v, matched = %v", ns, System(ns), all.Match("c1", ns))
		}
	}
	for s, want := range map[string]bool{"*/istio-system": true, "c1/kube-*": true, "*/kube-sys*": true, "*/flotilla-system": true,
		"*/*": false, "*/istio-*": false, "*/kube*": false, "*/shop": false} {
		p, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		if p.OnlySystem() != want {
			t.Errorf("%s: OnlySystem = %v, want %v", s, p.OnlySystem(), want)
		}
	}
}
