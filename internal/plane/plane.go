// Package plane assembles the management plane as `flotilla server` runs it:
// the API server, the central control plane inside it (its agent stream
// and metrics) and the fleet service over the control plane's view, on one
// port. The command, the benchmarks and
// any test that wants the real server build it here, so no copy of the
// wiring can miss a piece.
//
//	store ──▶ apiserver (resources, audit, health, metrics)
//	      └─▶ central (agent stream, bundles, status) ──FleetView──▶ fleetapi (fleet service) ──▶ same port, through apiserver.Mount
package plane

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/central"
	"flotilla.io/flotilla/internal/central/fleetapi"
	"flotilla.io/flotilla/internal/gslb"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/ui"
)

// Config configures a Plane.
type Config struct {
	// Shared says that other server replicas share the store.
	Shared bool
	// API are options of the API server (TLS, retention, metrics, ...).
	API []apiserver.Option
	// Central are options of the central control plane.
	Central []central.Option
	// DNSListen, when set, is where the built-in authoritative DNS server
	// answers for the organizations' DNSZones ("host:port", UDP and TCP).
	DNSListen string
	// DNS are where DNSZones with provider RFC2136 or EXTERNAL_DNS are
	// published (TSIG keys, clusters for DNSEndpoints).
	DNS gslb.Options
	// GSLBAllow are the ranges that DNSRecordSets' health checks may reach
	// whatever the fleet reports, loopback and the server's own addresses
	// included when a range covers them (flotilla server --gslb-allow-cidr).
	GSLBAllow []netip.Prefix
}

// Plane is a management plane with its central control plane.
type Plane struct {
	API     *apiserver.Server
	Central *central.Central
	// GSLB is the built-in DNS, the RFC 2136 publisher and their health
	// checks; nil without Config.DNSListen or Config.DNS.
	GSLB *gslb.Service
}

// New builds the plane over st. It serves nothing until Run.
func New(reg *resource.Registry, st store.Store, log *slog.Logger, cfg Config) (*Plane, error) {
	copts := cfg.Central
	if cfg.Shared {
		copts = append(copts, central.Shared())
	}
	probes := rule.Probes{Allow: cfg.GSLBAllow, Own: rule.HostAddresses()}
	reg = reg.WithGSLBProbes(probes)
	cfg.DNS.Probes = probes
	var (
		dns      *gslb.Service
		fleetOpt []fleetapi.Option
	)
	if cfg.DNSListen != "" || len(cfg.DNS.TSIGKeys) > 0 || len(cfg.DNS.Clusters) > 0 {
		dns = gslb.New(st, log.With("component", "gslb"), cfg.DNSListen, cfg.DNS)
		fleetOpt = append(fleetOpt, fleetapi.WithHealth(gslb.KindDNSRecordSet, dns.Status))
	}
	cp := central.New(reg, st, log.With("component", "central"), copts...)
	if dns != nil {
		dns.UseFleet(cp.Services())
	}
	srv := apiserver.New(reg, st, log, append(cfg.API, apiserver.WithReadiness(cp.Health))...)
	if err := cp.Register(srv.Metrics()); err != nil {
		return nil, err
	}
	// Every service goes through the API's edge (limits, authentication,
	// scrubbed errors), the agent's included.
	cp.SetAudience(srv.Audience())
	srv.Mount(cp.Handler)
	fleet := fleetapi.New(cp.FleetView(), reg, st, srv.Auth().Policies, log.With("component", "fleetapi"), fleetOpt...)
	srv.Mount(apiserver.Service(flotillav1alpha1connect.NewFleetServiceHandler, flotillav1alpha1connect.FleetServiceHandler(fleet)))
	var uiOpts []ui.Option
	if o := srv.Auth().OIDC; o != nil {
		// The browser's OIDC login fetches from the issuer.
		uiOpts = append(uiOpts, ui.ConnectSources(o.BrowserOrigins))
	}
	srv.HandlePage("/", ui.Handler(uiOpts...))
	p := &Plane{API: srv, Central: cp, GSLB: dns}
	if dns != nil {
		if err := dns.Register(srv.Metrics()); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Run runs the central control plane and serves on ln until ctx ends, then
// shuts both down and returns the first error.
func (p *Plane) Run(ctx context.Context, ln net.Listener) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	cpDone := make(chan error, 1)
	go func() { cpDone <- p.Central.Run(ctx) }()
	dnsDone := make(chan error, 1)
	if p.GSLB != nil {
		go func() {
			err := p.GSLB.Run(ctx)
			if err != nil {
				stop() // a DNS server that cannot serve stops the process, visibly
			}
			dnsDone <- err
		}()
	} else {
		dnsDone <- nil
	}
	err := p.API.Serve(ctx, ln)
	stop()
	if cerr := <-cpDone; err == nil {
		err = cerr
	}
	if derr := <-dnsDone; err == nil {
		err = derr
	}
	return err
}
