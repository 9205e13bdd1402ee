// Package gslb publishes hostnames in DNS with their healthy entry points:
// the DNSZone and DNSRecordSet intent, HTTP health checks of every entry
// point, and Flotilla's own authoritative DNS server.
//
//	store (DNSZone, DNSRecordSet) ──load──▶ Config (pure, this file)
//	                                           │
//	  Checker: one probe loop per entry point ─┴─▶ health ──▶ Answers ──▶ DNS server (miekg/dns)
//
// The model and the answers are pure; probes and the DNS server are the I/O
// at the edges.
package gslb

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb/rule"
)

// Defaults of a health check.
const (
	DefaultInterval           = 2 * time.Second
	DefaultTimeout            = time.Second
	DefaultUnhealthyThreshold = 2
	DefaultHealthyThreshold   = 1
)

// Config is what is published: the zones the built-in server answers for,
// the zones kept in other servers, and the record sets.
type Config struct {
	Zones   []string             // BUILTIN zones: fully qualified, lowercase, with the final dot
	Remote  []Zone               // RFC2136 zones
	Records map[string]RecordSet // by hostname
	// Unpublished are the record sets not published, by FQN, with why: a
	// hostname in no zone its organization owns, or taken by another.
	Unpublished map[string]string
}

// Addresses is what hostname should resolve to: its healthy entry points
// in clusters not drained; all of those when none is healthy (a failing
// check must not take the name down); every entry point when all their
// clusters are drained.
func (rs RecordSet) Addresses(healthy Healthy) []netip.Addr {
	var addrs, live, all []netip.Addr
	for _, e := range rs.EntryPoints {
		all = append(all, e.Address)
		if e.Drained {
			continue
		}
		live = append(live, e.Address)
		if rs.Check == nil || healthy(Target{Record: rs.FQN, Address: e.Address}) {
			addrs = append(addrs, e.Address)
		}
	}
	switch {
	case len(addrs) > 0:
	case len(live) > 0:
		addrs = live
	default:
		addrs = all
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(addrs)
}

// RecordSet is a published hostname.
type RecordSet struct {
	FQN         string // the DNSRecordSet's
	Hostname    string // fully qualified, lowercase, with the final dot
	TTL         uint32
	EntryPoints []EntryPoint
	Check       *Check
}

// EntryPoint is one address that serves a hostname.
type EntryPoint struct {
	Cluster string
	Address netip.Addr
	// Drained is set when its cluster is drained: it leaves the answers
	// whatever its health.
	Drained bool
	// Weight is its share in a weighted record set (1 when unset).
	Weight uint32
}

// Weighted reports whether the entry points' weights differ: the built-in
// server then answers each query with one address, picked by weight.
func (rs RecordSet) Weighted() bool {
	for _, e := range rs.EntryPoints {
		if e.Weight != rs.EntryPoints[0].Weight {
			return true
		}
	}
	return false
}

// Pick returns one of addrs (a non-empty answer of this record set), with
// a probability proportional to its weight; x is uniform in [0, 1). An
// address of several entry points weighs as the heaviest of them.
func (rs RecordSet) Pick(addrs []netip.Addr, x float64) netip.Addr {
	weights := make([]float64, len(addrs))
	total := 0.0
	for i, a := range addrs {
		for _, e := range rs.EntryPoints {
			if e.Address == a && float64(e.Weight) > weights[i] {
				weights[i] = float64(e.Weight)
			}
		}
		total += weights[i]
	}
	x *= total
	for i, w := range weights {
		if x < w {
			return addrs[i]
		}
		x -= w
	}
	return addrs[len(addrs)-1]
}

// Check is a resolved health check.
type Check struct {
	Path                                 string
	Port                                 uint32
	Interval, Timeout                    time.Duration
	UnhealthyThreshold, HealthyThreshold int
}

// NewRecordSet resolves a stored spec; it fails only on what validation
// refuses at apply time.
func NewRecordSet(fqn string, s *pb.DNSRecordSetSpec) (RecordSet, error) {
	rs := RecordSet{FQN: fqn, Hostname: rule.Fqdn(s.GetHostname()), TTL: s.GetTtl()}
	for _, e := range s.GetEntryPoints() {
		addr, err := netip.ParseAddr(e.GetAddress())
		if err != nil {
			return rs, fmt.Errorf("%s: entry point %q: %w", fqn, e.GetAddress(), err)
		}
		rs.EntryPoints = append(rs.EntryPoints, EntryPoint{Cluster: e.GetCluster(), Address: addr, Weight: max(e.GetWeight(), 1)})
	}
	if hc := s.GetHealthCheck(); hc != nil {
		c := &Check{Path: hc.GetPath(), Port: hc.GetPort(), Interval: DefaultInterval, Timeout: DefaultTimeout,
			UnhealthyThreshold: DefaultUnhealthyThreshold, HealthyThreshold: DefaultHealthyThreshold}
		var err error
		if hc.GetInterval() != "" {
			if c.Interval, err = time.ParseDuration(hc.GetInterval()); err != nil {
				return rs, fmt.Errorf("%s: interval: %w", fqn, err)
			}
		}
		if hc.GetTimeout() != "" {
			if c.Timeout, err = time.ParseDuration(hc.GetTimeout()); err != nil {
				return rs, fmt.Errorf("%s: timeout: %w", fqn, err)
			}
		}
		if hc.GetUnhealthyThreshold() > 0 {
			c.UnhealthyThreshold = int(hc.GetUnhealthyThreshold())
		}
		if hc.GetHealthyThreshold() > 0 {
			c.HealthyThreshold = int(hc.GetHealthyThreshold())
		}
		rs.Check = c
	}
	return rs, nil
}

// OrgOf is the FQN of the organization an object's FQN lies in
// ("organizations/acme/tenants/t/..." → "organizations/acme").
func OrgOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 3)
	if len(parts) < 2 {
		return fqn
	}
	return parts[0] + "/" + parts[1]
}

// ClusterFQN is the FQN of cluster (a name, as entry points give it) in
// the organization of the record set recordFQN.
func ClusterFQN(recordFQN, cluster string) string {
	return OrgOf(recordFQN) + "/clusters/" + cluster
}

// Target names one probed entry point of one record set.
type Target struct {
	Record  string // the DNSRecordSet's FQN
	Address netip.Addr
}

// Healthy reports an entry point's health; an entry point never probed
// (no check, or not yet probed) counts as healthy.
type Healthy func(Target) bool

// Record returns the record set published as name.
func (c Config) Record(name string) (RecordSet, bool) {
	rs, ok := c.Records[rule.Fqdn(name)]
	return rs, ok
}

// Answer is the addresses to answer for name, the TTL, and whether the name
// is in a zone at all (false: the server is not authoritative for it).
// When some entry points are healthy, only they are answered; when none is,
// all are (a failing check must not take the name down).
func (c Config) Answer(name string, healthy Healthy) (addrs []netip.Addr, ttl uint32, authoritative, found bool) {
	name = rule.Fqdn(name)
	for _, z := range c.Zones {
		if rule.InZone(name, z) {
			authoritative = true
		}
	}
	rs, ok := c.Records[name]
	if !authoritative || !ok {
		return nil, 0, authoritative, false
	}
	return rs.Addresses(healthy), rs.TTL, true, true
}
