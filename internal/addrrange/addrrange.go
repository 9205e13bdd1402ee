// Package addrrange says whether an address that a cluster's agent reports
// (its east-west gateway's, an ingress gateway's external address) lies
// where the cluster's owner declared its addresses to be: CIDR ranges, or,
// for load balancers named by host, DNS suffixes written "*.<domain>".
//
// The agent is trusted for what runs in its cluster, not for where other
// clusters send traffic: with ranges declared, a compromised agent cannot
// point other clusters' failover or the edge at an address of its choice.
package addrrange

import (
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Set is a parsed list of ranges. The zero Set declares none and allows
// every address.
type Set struct {
	prefixes []netip.Prefix
	suffixes []string // ".elb.example.com", lower case
	text     string   // the entries, canonical, to compare sets
}

// Parse reads entries, each a CIDR ("10.20.0.0/16", "2001:db8::/32"), a
// single address, or "*.<domain>". The error names the entry by index.
func Parse(entries []string) (Set, error) {
	var s Set
	var canon []string
	for i, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case strings.HasPrefix(e, "*."):
			d := strings.ToLower(strings.TrimSuffix(e[2:], "."))
			if errs := validation.IsDNS1123Subdomain(d); len(errs) > 0 || !strings.Contains(d, ".") {
				return Set{}, fmt.Errorf("[%d] %q: a domain suffix is written *.<domain> with a domain of two labels or more, e.g. *.elb.amazonaws.com", i, e)
			}
			s.suffixes = append(s.suffixes, "."+d)
			canon = append(canon, "*."+d)
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return Set{}, fmt.Errorf("[%d] %q: not a CIDR (%v), e.g. 10.20.0.0/16", i, e, err)
			}
			if p.Masked() != p {
				return Set{}, fmt.Errorf("[%d] %q has host bits set: write %s", i, e, p.Masked())
			}
			s.prefixes = append(s.prefixes, p)
			canon = append(canon, p.String())
		default:
			a, err := netip.ParseAddr(e)
			if err != nil {
				return Set{}, fmt.Errorf("[%d] %q: write a CIDR (10.20.0.0/16), an address or *.<domain>", i, e)
			}
			p := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			s.prefixes = append(s.prefixes, p)
			canon = append(canon, p.String())
		}
	}
	s.text = strings.Join(canon, ",")
	return s, nil
}

// None is a set that allows no address.
func None() Set { return Set{text: "none"} }

// Declared reports whether the set has any range.
func (s Set) Declared() bool { return s.text != "" }

// Equal reports whether two sets hold the same entries in the same order.
func (s Set) Equal(o Set) bool { return s.text == o.text }

// String lists the entries.
func (s Set) String() string { return s.text }

// Allows reports whether addr (an IP address or a host name) lies in the
// set; a set that declares nothing allows everything. A host name is
// allowed by a suffix only, an address by a range only: a name is not
// resolved here, since what it resolves to may change.
func (s Set) Allows(addr string) bool {
	if !s.Declared() {
		return true
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		a = a.Unmap()
		for _, p := range s.prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	host := strings.ToLower(strings.TrimSuffix(addr, "."))
	for _, suf := range s.suffixes {
		if strings.HasSuffix(host, suf) && len(host) > len(suf) {
			return true
		}
	}
	return false
}
