package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Server is the management plane's HTTP server.
type Server struct {
	reg      *resource.Registry
	st       store.Store
	log      *slog.Logger
	metrics  *prometheus.Registry
	stop     chan struct{}
	stopOnce sync.Once
	mux      *http.ServeMux // private: services get on it through Mount only

	retain       int64
	compactEvery time.Duration

	certFile, keyFile string // empty: cleartext

	readiness []func() error // more conditions of /readyz

	auth     *Auth
	authn    *authInterceptor
	hmetrics connect.Interceptor

	limits  Limits              // see WithLimits
	trusted []netip.Prefix      // see WithTrustedProxies
	procs   map[string]procKind // every mounted procedure
	edge    *edge

	notReadyLogged time.Time // when /readyz last logged why (readyMu)
	readyMu        sync.Mutex
}

// Option configures a Server.
type Option func(*Server)

// Event-log retention defaults: the newest DefaultRetainEvents events are
// kept for watchers to resume from; older ones are compacted every
// DefaultCompactInterval. Audit records are never compacted.
const (
	DefaultRetainEvents    = 100_000
	DefaultCompactInterval = 5 * time.Minute
)

// WithTLS serves HTTPS (HTTP/1.1 and HTTP/2, negotiated by ALPN) with the
// certificate and key in these PEM files, instead of cleartext.
func WithTLS(certFile, keyFile string) Option {
	return func(s *Server) { s.certFile, s.keyFile = certFile, keyFile }
}

// WithEventRetention sets how many events are kept and how often older ones
// are discarded.
func WithEventRetention(keep int64, every time.Duration) Option {
	return func(s *Server) { s.retain, s.compactEvery = keep, every }
}

// WithReadiness adds a condition to /readyz: while check fails, the server
// answers 503, and logs the check's error (/readyz answers anyone).
func WithReadiness(check func() error) Option {
	return func(s *Server) { s.readiness = append(s.readiness, check) }
}

// WithAuth sets how callers authenticate and what they may do. A server
// without it refuses every call but /healthz and /readyz.
func WithAuth(a *Auth) Option { return func(s *Server) { s.auth = a } }

// WithMetrics registers the server's metrics in reg instead of a private registry.
func WithMetrics(reg *prometheus.Registry) Option { return func(s *Server) { s.metrics = reg } }

// New returns a server over st. It does not listen until Serve.
func New(reg *resource.Registry, st store.Store, log *slog.Logger, opts ...Option) *Server {
	s := &Server{reg: reg, st: st, log: log, stop: make(chan struct{}), mux: http.NewServeMux(), retain: DefaultRetainEvents, compactEvery: DefaultCompactInterval,
		limits: DefaultLimits(), procs: map[string]procKind{}}
	for _, o := range opts {
		o(s)
	}
	if s.metrics == nil {
		s.metrics = prometheus.NewRegistry()
		s.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if s.auth == nil {
		// Secure by default: with no way to authenticate, nobody gets in.
		s.auth = &Auth{Policies: authz.NewCache()}
	}
	if s.auth.st == nil {
		s.auth.st = st
	}
	s.edge = newEdge(s.limits, s.metrics)
	s.authn = &authInterceptor{srv: s, auth: s.auth, st: st, log: log}
	s.hmetrics = newMetricsInterceptor(s.metrics)
	s.Mount(Service(flotillav1alpha1connect.NewResourceServiceHandler, flotillav1alpha1connect.ResourceServiceHandler(&Resources{reg: reg, st: st, log: log, stop: s.stop, auth: s.auth})))
	s.Mount(Service(flotillav1alpha1connect.NewAuditServiceHandler, flotillav1alpha1connect.AuditServiceHandler(&Audit{reg: reg, st: st, log: log, auth: s.auth})))
	s.Mount(Service(flotillav1alpha1connect.NewIdentityServiceHandler, flotillav1alpha1connect.IdentityServiceHandler(&Identity{auth: s.auth, reg: reg, st: st, log: log})))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", s.auth.requireFleetReader(st, promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{})))
	return s
}

// compressMinBytes: smaller responses go uncompressed. Compressing a small
// message costs more (a compressor's reset) than it saves on the wire.
const compressMinBytes = 1024

// Auth is the server's authentication and authorization.
func (s *Server) Auth() *Auth { return s.auth }

// Metrics is the registry served on /metrics, for the planes that share
// the server to add theirs.
func (s *Server) Metrics() prometheus.Registerer { return s.metrics }

// Handler is the server's root handler: the mux behind the edge.
func (s *Server) Handler() http.Handler { return s.edgeHTTP(s.mux) }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.st.Ping(ctx); err != nil {
		// The reason goes to the log: /readyz answers anyone.
		s.log.Warn("not ready: the store does not answer", "err", err)
		http.Error(w, "not ready: the store is unavailable (see the server log)", http.StatusServiceUnavailable)
		return
	}
	for _, check := range s.readiness {
		if err := check(); err != nil {
			// /readyz answers anyone: why goes to the log, at most every
			// ten seconds however often it is asked.
			s.readyMu.Lock()
			if time.Since(s.notReadyLogged) > 10*time.Second {
				s.notReadyLogged = time.Now()
				s.log.Warn("not ready", "why", err)
			}
			s.readyMu.Unlock()
			http.Error(w, "not ready: the central control plane cannot serve every cluster its current intent (see the server log)", http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

// ShutdownGrace bounds how long requests in flight may take after SIGTERM.
const ShutdownGrace = 30 * time.Second

// Serve serves on ln until ctx is cancelled, then stops accepting, ends
// watch streams (clients resume elsewhere), lets requests in flight finish
// within ShutdownGrace, and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	if s.certFile != "" {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true) // gRPC without TLS on loopback and behind a TLS-terminating proxy
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		// Pings find dead agent streams; agents ping too.
		HTTP2:    &http.HTTP2Config{SendPingTimeout: 20 * time.Second, PingTimeout: 10 * time.Second},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(func() { s.stopOnce.Do(func() { close(s.stop) }) })
	errc := make(chan error, 1)
	go func() {
		if s.certFile != "" {
			errc <- srv.ServeTLS(ln, s.certFile, s.keyFile)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	compactCtx, stopCompacting := context.WithCancel(ctx)
	compacted := make(chan struct{})
	go func() { s.compactLoop(compactCtx); close(compacted) }()
	go s.reloadKeys(compactCtx)
	// Queued refusals are written until the last request in flight is done.
	auditCtx, stopAudit := context.WithCancel(context.WithoutCancel(ctx))
	audited := make(chan struct{})
	go func() { s.edge.auditLoop(auditCtx, s.st, s.log); close(audited) }()
	defer func() { stopAudit(); <-audited }()
	defer func() { stopCompacting(); <-compacted }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing requests in flight", "grace", ShutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}

func newMetricsInterceptor(reg prometheus.Registerer) connect.Interceptor {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_api_requests_total",
		Help: "API requests by procedure and result code.",
	}, []string{"procedure", "code"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flotilla_api_request_duration_seconds",
		Help:    "Latency of unary API requests by procedure.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"procedure"})
	reg.MustRegister(requests, latency)
	return &metricsInterceptor{requests: requests, latency: latency}
}

type metricsInterceptor struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func (m *metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		p := req.Spec().Procedure
		m.latency.WithLabelValues(p).Observe(time.Since(start).Seconds())
		m.requests.WithLabelValues(p, codeOf(err)).Inc()
		return res, err
	}
}

func (m *metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (m *metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		m.requests.WithLabelValues(conn.Spec().Procedure, codeOf(err)).Inc()
		return err
	}
}

// KeyReloadInterval is how often the server looks for a signing-key file
// that another replica or an operator changed.
const KeyReloadInterval = 2 * time.Second

func (s *Server) reloadKeys(ctx context.Context) {
	if s.auth.Issuer == nil {
		return
	}
	tick := time.NewTicker(KeyReloadInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if changed, err := s.auth.Issuer.Keys.Reload(); err != nil {
				s.log.Warn("reload the signing keys; keeping the ones loaded", "err", err)
			} else if changed {
				s.log.Info("signing keys reloaded from disk")
			}
		case <-ctx.Done():
			return
		}
	}
}

// compactLoop discards events beyond the retention, so the event log stays
// bounded while watchers can still resume from any recent revision.
func (s *Server) compactLoop(ctx context.Context) {
	tick := time.NewTicker(s.compactEvery)
	defer tick.Stop()
	// States: sleep until the next tick or the end; on a tick, compact.
	for {
		select {
		case <-tick.C:
			rev, err := s.st.Revision(ctx)
			if err != nil || rev <= s.retain {
				continue
			}
			if err := s.st.Compact(ctx, rev-s.retain); err != nil && ctx.Err() == nil {
				s.log.Warn("compact the event log", "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}
