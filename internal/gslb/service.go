package gslb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/client-go/dynamic"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/store"
)

// Kind names of the GSLB kinds.
const (
	KindDNSZone      = rule.KindDNSZone
	KindDNSRecordSet = rule.KindDNSRecordSet
)

// Service loads the zones and record sets from the store, probes the entry
// points and serves the built-in authoritative DNS on a UDP and a TCP
// listener at one address.
type Service struct {
	st      store.Store
	log     *slog.Logger
	listen  string
	checker *Checker
	guard   *fleetGuard
	cfg     atomic.Pointer[Config]
	healthy *prometheus.GaugeVec
	changes *prometheus.CounterVec

	rfc2136 rfc2136Client
	loaded  int64 // store revision the config reflects; -1 before the first load
	extdns  externalDNS
	publish chan struct{} // capacity 1: publication wanted
	mu      sync.Mutex
	zoneErr map[string]string // RFC2136 zone → why its last publication failed
	hostErr map[string]string // hostname → why it could not be published
}

// Options are where the service publishes besides its own DNS server.
type Options struct {
	// TSIGKeys sign the updates of RFC2136 zones, by fully qualified name.
	TSIGKeys map[string]TSIGKey
	// Clusters are the clusters EXTERNAL_DNS zones write DNSEndpoints to,
	// by kubeconfig name.
	Clusters map[string]dynamic.Interface
	// Probes are the ranges health checks may always reach (flotilla
	// server --gslb-allow-cidr) and the server host's own addresses, which
	// they never reach unless a range covers them.
	Probes rule.Probes
}

// New returns a service that serves DNS on listen ("host:port"; none when
// empty) and keeps RFC2136 and EXTERNAL_DNS zones as opts allow.
func New(st store.Store, log *slog.Logger, listen string, opts Options) *Service {
	s := &Service{st: st, log: log, listen: listen, rfc2136: rfc2136Client{keys: opts.TSIGKeys}, extdns: externalDNS{clients: opts.Clusters},
		publish: make(chan struct{}, 1),
		zoneErr: map[string]string{}, hostErr: map[string]string{}, loaded: -1,
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flotilla_gslb_entry_point_healthy",
			Help: "1 when the entry point passes its health check (or has none), 0 when it is out of the DNS answers."}, []string{"record", "address"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_gslb_health_changes_total",
			Help: "Times an entry point turned healthy or unhealthy."}, []string{"record", "address", "healthy"}),
	}
	s.guard = newFleetGuard(opts.Probes)
	s.checker = NewChecker(s.guard.why, func(t Target, healthy bool) {
		v := 0.0
		if healthy {
			v = 1
		}
		s.healthy.WithLabelValues(t.Record, t.Address.String()).Set(v)
		s.changes.WithLabelValues(t.Record, t.Address.String(), fmt.Sprint(healthy)).Inc()
		s.log.Info("entry point health changed", "record", t.Record, "address", t.Address, "healthy", healthy)
		s.poke()
	})
	s.cfg.Store(&Config{Records: map[string]RecordSet{}})
	return s
}

// Register adds the service's metrics to r.
func (s *Service) Register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{s.healthy, s.changes} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Checker is the service's health checker.
func (s *Service) Checker() *Checker { return s.checker }

// UseFleet makes the addresses f reports for a cluster ones that health
// checks of its entry points may reach. Until it is called, only the
// ranges of Options.Probes may be probed.
func (s *Service) UseFleet(f Fleet) { s.guard.useFleet(f) }

func (s *Service) poke() {
	select {
	case s.publish <- struct{}{}:
	default:
	}
}

// Run serves DNS (when it has an address), keeps the RFC2136 zones and
// follows the store until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	go s.publishLoop(ctx)
	if s.listen == "" {
		return s.follow(ctx, nil)
	}
	pc, err := net.ListenPacket("udp", s.listen)
	if err != nil {
		return fmt.Errorf("--dns-listen %s: %w", s.listen, err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("--dns-listen %s (tcp): %w", s.listen, err)
	}
	handler := dns.HandlerFunc(s.serveDNS)
	servers := []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errs <- srv.ActivateAndServe() }()
	}
	s.log.Info("built-in DNS serving", "addr", pc.LocalAddr().String())
	defer func() {
		for _, srv := range servers {
			_ = srv.Shutdown()
		}
	}()
	return s.follow(ctx, errs)
}

// follow reloads the intent on every commit (and every 10 s) until ctx ends
// or a DNS server fails.
func (s *Service) follow(ctx context.Context, errs <-chan error) error {
	for {
		changed := s.st.Changed()
		if err := s.load(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("GSLB intent cannot be read; the last is served", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return fmt.Errorf("built-in DNS: %w", err)
		case <-changed:
		case <-time.After(10 * time.Second):
		}
	}
}

// inputs are the kinds the config is made of.
var inputs = map[string]bool{KindDNSZone: true, KindDNSRecordSet: true, "Cluster": true}

// load reads the zones, record sets and clusters and syncs the health
// checks, unless no record of those kinds was written since the last load:
// most commits are of other kinds, and a fleet has many clusters.
func (s *Service) load(ctx context.Context) error {
	rev, err := s.st.Revision(ctx)
	if err != nil {
		return err
	}
	if s.loaded >= 0 {
		if rev == s.loaded {
			return nil
		}
		if changed, err := s.st.KindsChanged(ctx, s.loaded); err == nil && !slices.ContainsFunc(changed, func(k string) bool { return inputs[k] }) {
			s.loaded = rev
			return nil
		}
	}
	cfg := &Config{Records: map[string]RecordSet{}, Unpublished: map[string]string{}}
	zones, err := s.st.List(ctx, store.Query{Kind: KindDNSZone})
	if err != nil {
		return err
	}
	specs := map[string]*pb.DNSZoneSpec{} // by FQN
	var claims []rule.Claim
	for _, z := range zones {
		spec := &pb.DNSZoneSpec{}
		if err := protojson.Unmarshal(z.Spec, spec); err != nil {
			return fmt.Errorf("stored %s: %w", z.FQN, err)
		}
		specs[z.FQN] = spec
		claims = append(claims, rule.Claim{FQN: z.FQN, Org: z.Parent, Zone: rule.Fqdn(spec.GetZone()), Created: z.CreateTime})
	}
	// A name has one owning organization: a zone that overlaps an older
	// one of another organization (stored before apply refused it) is not
	// served, nor are the record sets in it.
	owned, lost := rule.Owners(claims)
	for _, c := range lost {
		s.log.Warn("DNS zone not served: another organization's older zone overlaps it", "zone", c.FQN)
	}
	for _, c := range owned {
		spec := specs[c.FQN]
		switch spec.GetProvider() {
		case "RFC2136":
			cfg.Remote = append(cfg.Remote, Zone{Name: c.Zone, Provider: "RFC2136",
				Server: spec.GetRfc2136().GetServer(), Key: rule.Fqdn(spec.GetRfc2136().GetTsigKey())})
		case "EXTERNAL_DNS":
			cfg.Remote = append(cfg.Remote, Zone{Name: c.Zone, Provider: "EXTERNAL_DNS",
				Kubeconfig: spec.GetExternalDns().GetKubeconfig(), Namespace: spec.GetExternalDns().GetNamespace()})
		default:
			cfg.Zones = append(cfg.Zones, c.Zone)
		}
	}
	sets, err := s.st.List(ctx, store.Query{Kind: KindDNSRecordSet})
	if err != nil {
		return err
	}
	clusters, err := s.st.List(ctx, store.Query{Kind: "Cluster"})
	if err != nil {
		return err
	}
	drained := map[string]bool{} // cluster FQN
	for _, c := range clusters {
		spec := &pb.ClusterSpec{}
		if err := protojson.Unmarshal(c.Spec, spec); err != nil {
			return fmt.Errorf("stored %s: %w", c.FQN, err)
		}
		drained[c.FQN] = spec.GetDrained()
	}
	for _, r := range sets { // in FQN order: of two record sets of a hostname, the first is served
		spec := &pb.DNSRecordSetSpec{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			return fmt.Errorf("stored %s: %w", r.FQN, err)
		}
		rs, err := NewRecordSet(r.FQN, spec)
		if err != nil {
			return err
		}
		if why := unpublished(rs, owned, lost, cfg.Records); why != "" {
			cfg.Unpublished[rs.FQN] = why
			continue
		}
		for i, e := range rs.EntryPoints {
			rs.EntryPoints[i].Drained = drained[ClusterFQN(r.FQN, e.Cluster)]
		}
		cfg.Records[rs.Hostname] = rs
	}
	s.cfg.Store(cfg)
	s.checker.Sync(ctx, *cfg)
	s.loaded = rev
	s.poke()
	return nil
}

// unpublished says why rs is not published, or "" when it is: its
// hostname must lie in a zone its organization owns, and no record set
// before it may publish the same hostname.
func unpublished(rs RecordSet, owned, lost []rule.Claim, published map[string]RecordSet) string {
	org := OrgOf(rs.FQN)
	mine := func(c rule.Claim) bool { return c.Org == org && rule.InZone(rs.Hostname, c.Zone) }
	host := strings.TrimSuffix(rs.Hostname, ".")
	switch {
	case slices.ContainsFunc(owned, mine):
	case slices.ContainsFunc(lost, mine):
		return fmt.Sprintf("not published: %s is in a zone another organization manages", host)
	default:
		return fmt.Sprintf("not published: %s is in no DNSZone of the organization", host)
	}
	if _, taken := published[rs.Hostname]; taken {
		return fmt.Sprintf("not published: another record set of the organization publishes %s", host)
	}
	return ""
}

// publishLoop keeps every RFC2136 zone as the intent and the health say:
// on every change, and every 30 s to repair what someone else changed.
func (s *Service) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.publish:
		case <-time.After(30 * time.Second):
		}
		s.publishAll(ctx)
	}
}

func (s *Service) publishAll(ctx context.Context) {
	cfg := s.cfg.Load()
	zoneErr, hostErr := map[string]string{}, map[string]string{}
	for _, z := range cfg.Remote {
		want := map[string]published{}
		for host, rs := range cfg.Records {
			if rule.InZone(host, z.Name) {
				want[host] = published{fqn: rs.FQN, ttl: rs.TTL, addrs: rs.Addresses(s.checker.Healthy)}
			}
		}
		var conflicts map[string]string
		var err error
		if z.Provider == "EXTERNAL_DNS" {
			conflicts, err = s.extdns.Publish(ctx, z, want)
		} else {
			conflicts, err = s.rfc2136.Publish(z, want)
		}
		if err != nil {
			zoneErr[z.Name] = err.Error()
			s.log.Error("DNS publication failed", "zone", z.Name, "provider", z.Provider, "err", err)
		}
		for host, why := range conflicts {
			hostErr[host] = why
		}
	}
	s.mu.Lock()
	s.zoneErr, s.hostErr = zoneErr, hostErr
	s.mu.Unlock()
}

// serveDNS answers A and AAAA questions from the current config.
func (s *Service) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	cfg := s.cfg.Load()
	addrs, ttl, authoritative, found := cfg.Answer(q.Name, s.checker.Healthy)
	switch {
	case !authoritative:
		m.Rcode = dns.RcodeRefused
	case !found:
		m.Authoritative, m.Rcode = true, dns.RcodeNameError
	default:
		m.Authoritative = true
		addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool {
			return !(a.Is4() && q.Qtype == dns.TypeA || a.Is6() && q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY)
		})
		if rs, _ := cfg.Record(q.Name); rs.Weighted() && len(addrs) > 1 {
			addrs = []netip.Addr{rs.Pick(addrs, rand.Float64())}
		}
		for _, a := range addrs {
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
			switch {
			case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IP(a.AsSlice())})
			case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IP(a.AsSlice())})
			}
		}
	}
	if err := w.WriteMsg(m); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("DNS reply not sent", "err", err)
	}
}

// Status reports a record set's entry points, one row each: Applied when it
// is in the DNS answers because it is healthy (or unchecked), Failed with
// the last probe's error when its check took it out.
func (s *Service) Status(fqn string) []*pb.ClusterState {
	var rs *RecordSet
	for _, r := range s.cfg.Load().Records {
		if r.FQN == fqn {
			rs = &r
			break
		}
	}
	if rs == nil {
		if why, ok := s.cfg.Load().Unpublished[fqn]; ok {
			return []*pb.ClusterState{{State: "Failed", Message: why}}
		}
		return nil
	}
	var out []*pb.ClusterState
	for _, z := range s.cfg.Load().Remote {
		if !rule.InZone(rs.Hostname, z.Name) {
			continue
		}
		s.mu.Lock()
		zerr, herr := s.zoneErr[z.Name], s.hostErr[rs.Hostname]
		s.mu.Unlock()
		row := &pb.ClusterState{Cluster: z.where(), State: "Applied", Connected: zerr == "",
			Message: fmt.Sprintf("published in %s at %s (RFC 2136)", strings.TrimSuffix(z.Name, "."), z.Server)}
		if z.Provider == "EXTERNAL_DNS" {
			row.Message = fmt.Sprintf("DNSEndpoint %s/%s written for external-dns in %s", z.Namespace, EndpointName(rs.Hostname), z.Kubeconfig)
		}
		if zerr != "" || herr != "" {
			var why []string
			for _, w := range []string{zerr, herr} {
				if w != "" {
					why = append(why, w)
				}
			}
			row.State, row.Message = "Failed", strings.Join(why, "; ")
		}
		out = append(out, row)
	}
	for _, e := range rs.EntryPoints {
		row := &pb.ClusterState{Cluster: e.Cluster, State: "Applied", Connected: true, Message: e.Address.String() + ": not checked (no health check)"}
		if e.Drained {
			row.Message = fmt.Sprintf("%s: drained (cluster %s): out of the answers", e.Address, e.Cluster)
			out = append(out, row)
			continue
		}
		if rs.Check != nil {
			st, ok := s.checker.State(Target{Record: fqn, Address: e.Address})
			switch {
			case ok && st.Refused != "":
				// Never a probe's error: what the server would have found
				// there is none of the record set's business.
				row.State = "Failed"
				row.Message = fmt.Sprintf("%s: not probed: %s; in the answers unchecked; allow it with flotilla server --gslb-allow-cidr", e.Address, st.Refused)
			case !ok || st.Last.IsZero():
				row.Message = e.Address.String() + ": not probed yet"
			case st.Healthy && st.Error == "":
				row.Message = fmt.Sprintf("%s: healthy (probed %s ago)", e.Address, time.Since(st.Last).Round(time.Second))
			case st.Healthy:
				row.Message = fmt.Sprintf("%s: still in the answers, last probe failed: %s", e.Address, st.Error)
			default:
				row.State = "Failed"
				row.Message = fmt.Sprintf("%s: out of the DNS answers: %s", e.Address, st.Error)
			}
			if len(st.History) > 0 {
				var hist []string
				for _, c := range st.History {
					word := "healthy"
					if !c.Healthy {
						word = "unhealthy (" + c.Error + ")"
					}
					hist = append(hist, c.At.UTC().Format("15:04:05")+" "+word)
				}
				row.Message += "; changes: " + strings.Join(hist, ", ")
			}
		}
		out = append(out, row)
	}
	return out
}
