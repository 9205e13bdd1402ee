package rule

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Of overlapping zones of several organizations, the oldest claim owns
// the names; an organization's own zones may nest.
func TestTheOldestClaimOwnsAName(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(int64(s), 0) }
	claims := []Claim{
		{FQN: "organizations/zzz/dnszones/a", Org: "organizations/zzz", Zone: "example.com.", Created: at(1)},
		{FQN: "organizations/acme/dnszones/a", Org: "organizations/acme", Zone: "example.com.", Created: at(3)},
		{FQN: "organizations/acme/dnszones/b", Org: "organizations/acme", Zone: "shop.example.com.", Created: at(0)},
		{FQN: "organizations/other/dnszones/a", Org: "organizations/other", Zone: "www.example.com.", Created: at(2)},
		{FQN: "organizations/acme/dnszones/d", Org: "organizations/acme", Zone: "example.org.", Created: at(4)},
		{FQN: "organizations/zzz/dnszones/c", Org: "organizations/zzz", Zone: "xexample.org.", Created: at(5)},
		{FQN: "organizations/acme/dnszones/e", Org: "organizations/acme", Zone: "a.example.org.", Created: at(6)},
	}
	owned, lost := Owners(claims)
	names := func(cs []Claim) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.FQN[len("organizations/"):])
		}
		return strings.Join(out, " ")
	}
	// acme's shop.example.com is the oldest, so zzz's example.com, which
	// holds it, loses; a losing claim blocks nothing, so other's
	// www.example.com owns its name, and acme's example.com, which holds
	// it, loses too. Names compare by whole labels; an organization's own
	// zones may nest.
	if got, want := names(owned), "acme/dnszones/b other/dnszones/a acme/dnszones/d zzz/dnszones/c acme/dnszones/e"; got != want {
		t.Errorf("owned %s, want %s", got, want)
	}
	if got, want := names(lost), "zzz/dnszones/a acme/dnszones/a"; got != want {
		t.Errorf("lost %s, want %s", got, want)
	}
	// Equal times fall back to the FQN.
	tie := []Claim{{FQN: "organizations/zzz/dnszones/a", Org: "organizations/zzz", Zone: "example.com."}, {FQN: "organizations/acme/dnszones/a", Org: "organizations/acme", Zone: "example.com."}}
	if owned, _ := Owners(tie); len(owned) != 1 || owned[0].Org != "organizations/acme" {
		t.Errorf("a tie owned by %v", owned)
	}
}

func TestNamesAreComparedFullyQualifiedAndWhole(t *testing.T) {
	if Fqdn(" Shop.Example.COM ") != "shop.example.com." || Fqdn("a.b.") != "a.b." {
		t.Fatal("Fqdn")
	}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"example.com.", "example.com.", true},
		{"shop.example.com.", "example.com.", true},
		{"example.com.", "shop.example.com.", true},
		{"xexample.com.", "example.com.", false},
		{"example.org.", "example.com.", false},
	} {
		if got := Overlap(tc.a, tc.b); got != tc.want {
			t.Errorf("Overlap(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// The address classes a health check never reaches, unless an allowed
// range covers them.
func TestProbesRefuseLoopbackLinkLocalAndTheServersOwnAddresses(t *testing.T) {
	own := netip.MustParseAddr("192.0.2.10")
	p := Probes{Own: []netip.Addr{own}}
	for addr, want := range map[string]string{
		"127.0.0.1":        "a loopback address",
		"127.3.4.5":        "a loopback address",
		"::1":              "a loopback address",
		"::ffff:127.0.0.1": "a loopback address",
		"169.254.169.254":  "a link-local address",
		"fe80::1":          "a link-local address",
		"0.0.0.0":          "an unspecified address",
		"0.1.2.3":          "an unspecified address",
		"::":               "an unspecified address",
		"224.0.0.1":        "a multicast address",
		"ff02::1":          "a multicast address",
		"255.255.255.255":  "the broadcast address",
		"192.0.2.10":       "an address of the Flotilla server's own host",
		"10.0.0.1":         "",
		"203.0.113.5":      "",
		"2001:db8::1":      "",
	} {
		if got := p.Refused(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
	allow, err := ParseCIDRs([]string{"127.0.0.0/8", "169.254.169.254", "::ffff:192.0.2.0/120"})
	if err != nil {
		t.Fatal(err)
	}
	p.Allow = allow
	for _, addr := range []string{"127.0.0.1", "::ffff:127.0.0.1", "169.254.169.254", "192.0.2.10"} {
		if got := p.Refused(netip.MustParseAddr(addr)); got != "" || !p.Allowed(netip.MustParseAddr(addr)) {
			t.Errorf("%s in an allowed range: %q", addr, got)
		}
	}
	if got := p.Refused(netip.MustParseAddr("169.254.169.253")); got != "a link-local address" {
		t.Errorf("next to an allowed address: %q", got)
	}
	if _, err := ParseCIDRs([]string{"10.0.0.0/33"}); err == nil || !strings.Contains(err.Error(), `"10.0.0.0/33" is not a CIDR range`) {
		t.Errorf("a bad range: %v", err)
	}
}
