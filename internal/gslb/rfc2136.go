package gslb

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// TSIGKey is a named TSIG key: its algorithm (a DNS name such as
// "hmac-sha256.") and base64 secret.
type TSIGKey struct {
	Name, Algorithm, Secret string
}

var keyStatement = regexp.MustCompile(`key\s+"?([^"\s{]+)"?\s*\{\s*algorithm\s+"?([A-Za-z0-9-]+)"?\s*;\s*secret\s+"([^"]+)"\s*;\s*\}\s*;`)

// ParseKeyFile reads TSIG keys in BIND's syntax, as `tsig-keygen` writes
// them: key "name" { algorithm hmac-sha256; secret "base64"; };
func ParseKeyFile(data []byte) (map[string]TSIGKey, error) {
	out := map[string]TSIGKey{}
	for _, m := range keyStatement.FindAllStringSubmatch(string(data), -1) {
		k := TSIGKey{Name: dns.Fqdn(strings.ToLower(m[1])), Algorithm: dns.Fqdn(strings.ToLower(m[2])), Secret: m[3]}
		out[k.Name] = k
	}
	if len(out) == 0 {
		return nil, fmt.Errorf(`no TSIG key found: write them as BIND does, key "name" { algorithm hmac-sha256; secret "..."; };`)
	}
	return out, nil
}

// Zone is a zone and where and how to publish it.
type Zone struct {
	Name       string // fully qualified
	Provider   string
	Server     string // RFC2136: host:port
	Key        string // RFC2136: TSIG key name, fully qualified
	Kubeconfig string // EXTERNAL_DNS: a --dns-kubeconfig name
	Namespace  string // EXTERNAL_DNS: where the DNSEndpoints go
}

// where says where a zone is published, for status.
func (z Zone) where() string {
	if z.Provider == "EXTERNAL_DNS" {
		return "external-dns " + z.Kubeconfig + "/" + z.Namespace
	}
	return "dns " + z.Server
}

// OwnerName is the name of the TXT record that marks a hostname's records
// as Flotilla's in a zone it updates; OwnerText is its text.
func OwnerName(host string) string { return "_flotilla-owner." + host }

// OwnerText marks the record set fqn as the owner.
func OwnerText(fqn string) string { return "heritage=flotilla,record=" + fqn }

// rfc2136Client updates zones by RFC 2136 and reads them by zone transfer.
type rfc2136Client struct {
	keys map[string]TSIGKey
}

// Publish makes zone z hold, for each hostname in want, exactly its
// addresses, with an ownership TXT record, and removes the records of
// hostnames Flotilla owns there (by TXT) but no longer wants. A hostname
// that has records not marked as Flotilla's is left alone and reported in
// conflicts. It reads the zone by AXFR and sends one signed update.
func (c rfc2136Client) Publish(z Zone, want map[string]published) (conflicts map[string]string, err error) {
	key, ok := c.keys[z.Key]
	if !ok {
		return nil, fmt.Errorf("TSIG key %s is not in --dns-tsig-keys", strings.TrimSuffix(z.Key, "."))
	}
	secrets := map[string]string{key.Name: key.Secret}
	// What the zone holds now.
	axfr := new(dns.Msg)
	axfr.SetAxfr(z.Name)
	axfr.SetTsig(key.Name, key.Algorithm, 300, time.Now().Unix())
	tr := &dns.Transfer{TsigSecret: secrets, DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second}
	env, err := tr.In(axfr, z.Server)
	if err != nil {
		return nil, fmt.Errorf("zone transfer of %s from %s: %w", z.Name, z.Server, err)
	}
	owned := map[string]string{}         // host → owner text
	current := map[string][]netip.Addr{} // host → A/AAAA
	ttls := map[string]uint32{}          // host → TTL of its A/AAAA
	for e := range env {
		if e.Error != nil {
			return nil, fmt.Errorf("zone transfer of %s from %s: %w", z.Name, z.Server, e.Error)
		}
		for _, rr := range e.RR {
			name := strings.ToLower(rr.Header().Name)
			switch r := rr.(type) {
			case *dns.TXT:
				if host, ok := strings.CutPrefix(name, "_flotilla-owner."); ok {
					owned[host] = strings.Join(r.Txt, "")
				}
			case *dns.A:
				a, _ := netip.AddrFromSlice(r.A.To4())
				current[name], ttls[name] = append(current[name], a), r.Hdr.Ttl
			case *dns.AAAA:
				a, _ := netip.AddrFromSlice(r.AAAA)
				current[name], ttls[name] = append(current[name], a), r.Hdr.Ttl
			}
		}
	}
	up := new(dns.Msg)
	up.SetUpdate(z.Name)
	changes := 0
	conflicts = map[string]string{}
	for host, text := range owned {
		if _, ok := want[host]; ok || !strings.HasPrefix(text, "heritage=flotilla,") {
			continue
		}
		up.RemoveRRset([]dns.RR{rrHeader(host, dns.TypeA), rrHeader(host, dns.TypeAAAA), rrHeader(OwnerName(host), dns.TypeTXT)})
		changes++
	}
	for host, p := range want {
		if _, mine := owned[host]; !mine && len(current[host]) > 0 {
			conflicts[host] = fmt.Sprintf("%s already has records in %s that are not Flotilla's (no %s TXT record): they are left alone", strings.TrimSuffix(host, "."), strings.TrimSuffix(z.Name, "."), OwnerName(strings.TrimSuffix(host, ".")))
			continue
		}
		have := slices.Clone(current[host])
		slices.SortFunc(have, func(a, b netip.Addr) int { return a.Compare(b) })
		if slices.Equal(have, p.addrs) && owned[host] == OwnerText(p.fqn) && ttls[host] == p.ttl {
			continue
		}
		up.RemoveRRset([]dns.RR{rrHeader(host, dns.TypeA), rrHeader(host, dns.TypeAAAA), rrHeader(OwnerName(host), dns.TypeTXT)})
		var rrs []dns.RR
		for _, a := range p.addrs {
			hdr := dns.RR_Header{Name: host, Class: dns.ClassINET, Ttl: p.ttl}
			if a.Is4() {
				hdr.Rrtype = dns.TypeA
				rrs = append(rrs, &dns.A{Hdr: hdr, A: a.AsSlice()})
			} else {
				hdr.Rrtype = dns.TypeAAAA
				rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
		rrs = append(rrs, &dns.TXT{Hdr: dns.RR_Header{Name: OwnerName(host), Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: p.ttl}, Txt: []string{OwnerText(p.fqn)}})
		up.Insert(rrs)
		changes++
	}
	if changes == 0 {
		return conflicts, nil
	}
	up.SetTsig(key.Name, key.Algorithm, 300, time.Now().Unix())
	cl := &dns.Client{TsigSecret: secrets, Net: "tcp", Timeout: 10 * time.Second}
	r, _, err := cl.Exchange(up, z.Server)
	if err != nil {
		return conflicts, fmt.Errorf("update of %s at %s: %w", z.Name, z.Server, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		why := dns.RcodeToString[r.Rcode]
		if t := r.IsTsig(); t != nil && t.Error != 0 {
			why += " (TSIG " + dns.RcodeToString[int(t.Error)] + ")"
		}
		return conflicts, fmt.Errorf("%s refused the update of %s: %s", z.Server, z.Name, why)
	}
	return conflicts, nil
}

func rrHeader(name string, t uint16) dns.RR {
	return &dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassANY}}
}

// published is what one hostname should hold.
type published struct {
	fqn   string
	ttl   uint32
	addrs []netip.Addr // sorted
}
