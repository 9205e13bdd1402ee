// Package rule holds the GSLB rules that the intent's checks (package
// resource, at apply time) and the server's DNS publication (package gslb)
// must agree on: DNS names and who owns them, and which entry points the
// server may send health checks to. It is pure and imports nothing of
// Flotilla, so that the kind registry need not import the DNS server.
//
//	DNSZones of every organization ──Owners──▶ owned zones (one organization per name)
//	entry point address ──Probes.Refused──▶ "" or the class the server never probes
package rule

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Kind names of the GSLB kinds.
const (
	KindDNSZone      = "DNSZone"
	KindDNSRecordSet = "DNSRecordSet"
)

// Fqdn makes a name fully qualified and lowercase.
func Fqdn(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// InZone reports whether name is zone or below it (both fully qualified).
func InZone(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// Overlap reports whether two zones (fully qualified) share a name: they
// are equal, or one lies inside the other.
func Overlap(a, b string) bool { return InZone(a, b) || InZone(b, a) }

// Claim is one DNSZone as stored: an organization's claim on a zone.
type Claim struct {
	FQN     string // the DNSZone's
	Org     string // its organization's FQN
	Zone    string // fully qualified, lowercase
	Created time.Time
}

// Owners decides which claims own their names, so that a name has one
// owning organization: in order of creation (then FQN), a claim that
// overlaps an earlier owning claim of another organization loses. Apply
// refuses such a claim; one can exist only from before that rule, and
// then the older organization keeps its names. It returns the owning
// claims and the losing ones, each in that order.
func Owners(claims []Claim) (owned, lost []Claim) {
	claims = slices.Clone(claims)
	slices.SortFunc(claims, func(a, b Claim) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.FQN, b.FQN))
	})
	for _, c := range claims {
		if slices.ContainsFunc(owned, func(o Claim) bool { return o.Org != c.Org && Overlap(o.Zone, c.Zone) }) {
			lost = append(lost, c)
			continue
		}
		owned = append(owned, c)
	}
	return owned, lost
}

// Probes says which entry points the server may send health checks to. An
// address inside an Allow range may always be probed. Otherwise the
// loopback, link-local (cloud metadata services among them), unspecified,
// multicast and broadcast addresses, and the server host's own addresses,
// may never be; any other address may be when the fleet knows it for the
// entry point's cluster (the caller judges that: it is runtime state).
// The zero value allows no range and knows no address of its own host.
type Probes struct {
	// Allow are the ranges of flotilla server --gslb-allow-cidr.
	Allow []netip.Prefix
	// Own are the addresses of the server's host (HostAddresses).
	Own []netip.Addr
}

// Allowed reports whether an Allow range covers addr.
func (p Probes) Allowed(addr netip.Addr) bool {
	addr = addr.Unmap()
	return slices.ContainsFunc(p.Allow, func(r netip.Prefix) bool { return r.Contains(addr) })
}

// Refused says why addr may never be probed, as a class ("a loopback
// address"), or "" when it may be as far as the address alone tells: an
// Allow range covers it, or it is of no refused class.
func (p Probes) Refused(addr netip.Addr) string {
	if p.Allowed(addr) {
		return ""
	}
	a := addr.Unmap()
	switch {
	case a.IsUnspecified() || a.Is4() && a.As4()[0] == 0:
		return "an unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	case slices.Contains(p.Own, a):
		return "an address of the Flotilla server's own host"
	}
	return ""
}

// ParseCIDRs parses the values of --gslb-allow-cidr: each a range such as
// 10.20.0.0/16, or a single address (a /32 or /128).
func ParseCIDRs(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		v = strings.TrimSpace(v)
		if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR range: write it as 10.20.0.0/16 (or one address)", v)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// HostAddresses returns the addresses of this host's network interfaces:
// every address the server can listen on; nil when they cannot be read.
func HostAddresses() []netip.Addr {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
