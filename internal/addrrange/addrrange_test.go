package addrrange

import (
	"strings"
	"testing"
)

func TestAllows(t *testing.T) {
	s, err := Parse([]string{"10.20.0.0/16", "192.0.2.7", "2001:db8::/32", "*.elb.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"10.20.3.4":              true,
		"10.21.0.1":              false,
		"192.0.2.7":              true,
		"192.0.2.8":              false,
		"::ffff:10.20.0.9":       true, // an IPv4-mapped address is the IPv4 one
		"2001:db8::1":            true,
		"2001:db9::1":            false,
		"a-1.elb.example.com":    true,
		"A-1.ELB.example.com.":   true,
		"elb.example.com":        false, // the suffix needs a label before it
		"evil-elb.example.com":   false,
		"a.elb.example.com.evil": false,
		"127.0.0.1":              false,
		"":                       false,
	} {
		if got := s.Allows(addr); got != want {
			t.Errorf("Allows(%q) = %v, want %v", addr, got, want)
		}
	}
	var none Set
	if !none.Allows("203.0.113.1") || none.Declared() {
		t.Error("a set that declares nothing must allow every address")
	}
}

func TestParseNamesTheBadEntry(t *testing.T) {
	for _, tc := range []struct {
		entries []string
		want    string
	}{
		{[]string{"10.0.0.0/8", "10.1.2.3/16"}, "[1]"},
		{[]string{"not-an-address"}, "[0]"},
		{[]string{"10.0.0.0/33"}, "[0]"},
		{[]string{"*.com"}, "two labels"},
		{[]string{"*.bad_domain.example"}, "[0]"},
	} {
		if _, err := Parse(tc.entries); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%v) = %v, want an error with %q", tc.entries, err, tc.want)
		}
	}
	a, _ := Parse([]string{"10.0.0.1", "*.Example.com"})
	b, _ := Parse([]string{"10.0.0.1/32", "*.example.com"})
	if !a.Equal(b) {
		t.Errorf("%s and %s should be equal", a, b)
	}
}
