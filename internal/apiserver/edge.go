package apiserver

import (
	"cmp"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
)

// The API's edge: everything on the server's port passes it.
//
//	request ─▶ HTTP edge: client address (--trusted-proxy), for procedures
//	           that take no token: rate per client and per procedure, a
//	           bound on those in flight; body size and time for unary calls
//	        ─▶ connect: per-message size, raw and decompressed (gzip capped
//	           while it inflates), by procedure
//	        ─▶ interceptor: authentication (failures limited per client),
//	           rate per principal (Plan), streams per principal; after the
//	           call: internal errors scrubbed, refusals counted and audited
//	        ─▶ handler
//
// Services get there only through Mount: the mux is private.

// Rate is a token bucket: PerSecond on average, Burst at once.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Limits are the edge's rate limits and caps.
type Limits struct {
	// PublicPerClient bounds each client address's calls of each procedure
	// that takes no token (Token, GetLoginConfig, Join).
	PublicPerClient Rate
	// JoinTotal and TokenTotal bound those calls from all clients together.
	JoinTotal, TokenTotal Rate
	// PublicInFlight bounds the calls that take no token being served at
	// once; more are refused before their body is read.
	PublicInFlight int
	// AuthFailuresPerClient bounds failed authentications per client
	// address; past it, the address is refused without a check.
	AuthFailuresPerClient Rate
	// PlanPerPrincipal bounds each principal's Plans (a Plan takes the
	// store's write lock).
	PlanPerPrincipal Rate
	// StreamsPerPrincipal bounds one principal's open streams (Watch,
	// WatchFleet, ExportAudit).
	StreamsPerPrincipal int
	// AuditPerClient and AuditTotal bound the refusals recorded in the
	// audit, and AuditTokenless those of callers without a token (Join,
	// Token, the agent's stream); the refusals metric counts every one.
	// Each record is a write under the store's lock: a flood's must not
	// queue in front of everyone's writes.
	AuditPerClient, AuditTotal, AuditTokenless Rate
}

// DefaultLimits are the limits of a server without WithLimits.
func DefaultLimits() Limits {
	return Limits{
		// An address may log in a few times a second; a burst covers a
		// script starting many clients at once.
		PublicPerClient: Rate{5, 50},
		// A join that checks out takes the store's write lock: a fleet
		// joins at a few hundred a second, a flood of bad tokens no faster.
		JoinTotal:             Rate{200, 400},
		TokenTotal:            Rate{200, 400},
		PublicInFlight:        8,
		AuthFailuresPerClient: Rate{10, 100},
		PlanPerPrincipal:      Rate{10, 100},
		StreamsPerPrincipal:   16,
		AuditPerClient:        Rate{10, 100},
		AuditTotal:            Rate{20, 100},
		AuditTokenless:        Rate{2, 2},
	}
}

// WithLimits sets the edge's limits (DefaultLimits otherwise).
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// WithTrustedProxies says which peers are proxies whose X-Forwarded-For
// names the client: rate limits and the audit key on that address then.
// From any other peer, X-Forwarded-For is ignored.
func WithTrustedProxies(p []netip.Prefix) Option { return func(s *Server) { s.trusted = p } }

// ParseTrustedProxies reads --trusted-proxy values: CIDRs, or addresses.
func ParseTrustedProxies(vals []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vals {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither a CIDR (10.0.0.0/8) nor an address", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Size limits.
const (
	// MaxRequestBytes bounds a unary request body of the API.
	MaxRequestBytes = 8 << 20
	// MaxPublicRequestBytes bounds the body, and the decoded message, of
	// the requests that need no token.
	MaxPublicRequestBytes = 64 << 10
	// maxMessageBytes bounds one decoded (decompressed) message; above
	// MaxRequestBytes so that the body limit, which is audited, acts first
	// on uncompressed requests.
	maxMessageBytes = 2 * MaxRequestBytes
	// MaxAgentMessageBytes bounds one decoded message on an agent's
	// stream: a full runtime report of 10,000 services is about 4 MiB.
	MaxAgentMessageBytes = 16 << 20
)

// Time limits of unary calls: reading the request, and the whole call.
const (
	RequestReadTimeout = 30 * time.Second
	RequestTimeout     = 2 * time.Minute
)

// authClass is how a procedure's caller is authenticated.
type authClass int

const (
	byToken authClass = iota // an access token, checked by the edge
	public                   // nothing: rate limited per client and in total
	byAgent                  // the handler checks the agent's assertion
)

// policy is what the edge applies to one procedure.
type policy struct {
	auth      authClass
	maxMsg    int   // decoded bytes of one message
	audit     bool  // refusals are recorded in the audit
	total     *Rate // all clients together (public procedures)
	principal *Rate // per principal
	streaming bool  // client or server streaming (from the service's descriptor)
	server    bool  // server streaming only: one request, many answers
}

// policyOf is the edge's policy of procedure proc, mounted or not.
func (s *Server) policyOf(proc string) policy {
	p := policy{auth: byToken, maxMsg: maxMessageBytes}
	switch proc {
	case flotillav1alpha1connect.IdentityServiceTokenProcedure:
		p = policy{auth: public, maxMsg: MaxPublicRequestBytes, audit: true, total: &s.limits.TokenTotal}
	case flotillav1alpha1connect.IdentityServiceGetLoginConfigProcedure:
		p = policy{auth: public, maxMsg: MaxPublicRequestBytes}
	case agentv1connect.AgentServiceJoinProcedure:
		p = policy{auth: public, maxMsg: MaxPublicRequestBytes, audit: true, total: &s.limits.JoinTotal}
	case agentv1connect.AgentServiceConnectProcedure:
		p = policy{auth: byAgent, maxMsg: MaxAgentMessageBytes, audit: true}
	case flotillav1alpha1connect.FleetServicePlanProcedure:
		p.principal = &s.limits.PlanPerPrincipal
	case flotillav1alpha1connect.ResourceServiceApplyProcedure,
		flotillav1alpha1connect.ResourceServiceDeleteProcedure,
		flotillav1alpha1connect.FleetServiceOnboardProcedure,
		flotillav1alpha1connect.FleetServiceRevokeClusterProcedure,
		flotillav1alpha1connect.IdentityServiceCreateServiceAccountKeyProcedure,
		flotillav1alpha1connect.IdentityServiceRotateSigningKeyProcedure,
		flotillav1alpha1connect.IdentityServiceRemoveSigningKeyProcedure:
		p.audit = true
	}
	if kind, ok := s.procs[proc]; ok {
		p.streaming, p.server = kind.streaming, kind.server
	}
	return p
}

// procKind is how a mounted procedure streams.
type procKind struct{ streaming, server bool }

// Audience is the name agents' assertions give this server: the token
// issuer's, which replicas share.
func (s *Server) Audience() string {
	if s.auth.Issuer != nil && s.auth.Issuer.Name != "" {
		return s.auth.Issuer.Name
	}
	return "flotilla"
}

// Service binds a generated handler constructor to its implementation,
// for Mount: srv.Mount(apiserver.Service(flotillav1alpha1connect.NewFleetServiceHandler, fleet)).
func Service[T any](newHandler func(T, ...connect.HandlerOption) (string, http.Handler), impl T) func(...connect.HandlerOption) (string, http.Handler) {
	return func(opts ...connect.HandlerOption) (string, http.Handler) { return newHandler(impl, opts...) }
}

// Mount serves a connect service on the server's port, through the edge:
// build makes the service's handler with the edge's options (limits,
// interceptors), and gets none other. It is the only way onto the port for
// an API; it panics on a path that names no registered protobuf service,
// which is a wiring mistake.
func (s *Server) Mount(build func(...connect.HandlerOption) (string, http.Handler)) {
	path, h := build(s.handlerOptions()...)
	name := strings.Trim(path, "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if err != nil || !ok {
		panic(fmt.Sprintf("apiserver: mount %q: not a protobuf service", path))
	}
	for i := range sd.Methods().Len() {
		m := sd.Methods().Get(i)
		s.procs[path+string(m.Name())] = procKind{streaming: m.IsStreamingClient() || m.IsStreamingServer(), server: m.IsStreamingServer() && !m.IsStreamingClient()}
	}
	s.mux.Handle(path, h)
}

// HandlePage serves a page (GET and HEAD only) on the server's port, e.g.
// the UI at "/". It cannot take an API's path: POSTs never reach it.
func (s *Server) HandlePage(path string, h http.Handler) {
	s.mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: "+r.URL.Path+" is a page", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	}))
}

// handlerOptions are the options every service on the port is built with.
func (s *Server) handlerOptions() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithInterceptors(s.hmetrics, s.authn),
		connect.WithCompressMinBytes(compressMinBytes),
		connect.WithConditionalHandlerOptions(func(spec connect.Spec) []connect.HandlerOption {
			max := s.policyOf(spec.Procedure).maxMsg
			return []connect.HandlerOption{
				connect.WithReadMaxBytes(max),
				// Decompression stops one byte past the limit: connect's own
				// gzip would inflate a bomb whole to say how big it was.
				connect.WithCompression("gzip",
					func() connect.Decompressor { return &cappedGzip{limit: int64(max) + 1} },
					func() connect.Compressor { return gzip.NewWriter(io.Discard) }),
			}
		}),
	}
}

// cappedGzip inflates at most limit bytes of one message.
type cappedGzip struct {
	zr       *gzip.Reader
	limit, n int64
}

var errInflatedTooLarge = connect.NewError(connect.CodeResourceExhausted, errors.New("the compressed message inflates past the limit"))

func (d *cappedGzip) Read(p []byte) (int, error) {
	if d.n >= d.limit {
		return 0, errInflatedTooLarge
	}
	if int64(len(p)) > d.limit-d.n {
		p = p[:d.limit-d.n]
	}
	n, err := d.zr.Read(p)
	d.n += int64(n)
	return n, err
}

func (d *cappedGzip) Reset(r io.Reader) error {
	d.n = 0
	if d.zr == nil {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		d.zr = zr
		return nil
	}
	return d.zr.Reset(r)
}

func (d *cappedGzip) Close() error {
	if d.zr == nil {
		return nil
	}
	return d.zr.Close()
}

// edge holds the edge's limiters and metrics.
type edge struct {
	limits Limits

	perClient    *keyLimiter // public procedures: procedure + client
	total        *keyLimiter // public procedures: procedure
	authFailures *keyLimiter // client
	perPrincipal *keyLimiter // procedure + subject
	audits       *keyLimiter // client
	auditsTotal  *rate.Limiter
	auditsQueued *rate.Limiter
	inFlight     chan struct{} // public calls being served
	// auditQ carries the refusals of callers that presented no token (or
	// an agent's assertion) to auditLoop: they are answered without
	// waiting for the store's write lock.
	auditQ    chan store.AuditRecord
	unaudited prometheus.Counter

	streamsMu sync.Mutex
	streams   map[string]int // open streams by principal

	refusals *prometheus.CounterVec
}

func newEdge(l Limits, reg prometheus.Registerer) *edge {
	e := &edge{
		limits:       l,
		perClient:    newKeyLimiter(),
		total:        newKeyLimiter(),
		authFailures: newKeyLimiter(),
		perPrincipal: newKeyLimiter(),
		audits:       newKeyLimiter(),
		auditsTotal:  rate.NewLimiter(rate.Limit(l.AuditTotal.PerSecond), l.AuditTotal.Burst),
		auditsQueued: rate.NewLimiter(rate.Limit(l.AuditTokenless.PerSecond), l.AuditTokenless.Burst),
		inFlight:     make(chan struct{}, max(1, l.PublicInFlight)),
		streams:      map[string]int{},
		auditQ:       make(chan store.AuditRecord, auditQueue),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_api_refusals_total",
			Help: "Requests the API refused, by procedure and code: limits, failed authentication, denied or invalid requests.",
		}, []string{"procedure", "code"}),
		unaudited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_api_refusals_unaudited_total",
			Help: "Refusals counted but not recorded in the audit: past its rate limits, or its queue full.",
		}),
	}
	reg.MustRegister(e.refusals, e.unaudited)
	return e
}

// auditQueue bounds the refusals waiting for auditLoop.
const auditQueue = 256

// auditLoop records queued refusals until ctx ends, then what is queued.
func (e *edge) auditLoop(ctx context.Context, st store.Store, log *slog.Logger) {
	write := func(r store.AuditRecord) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := st.Refuse(wctx, r); err != nil {
			log.Warn("record a refused request", "err", err)
		}
	}
	// States: wait for a refusal or the end; at the end, write the queue.
	for {
		select {
		case r := <-e.auditQ:
			write(r)
		case <-ctx.Done():
			for {
				select {
				case r := <-e.auditQ:
					write(r)
				default:
					return
				}
			}
		}
	}
}

// clientOf is the address a request comes from: the peer's, or, when the
// peer is a trusted proxy, the nearest address in X-Forwarded-For that is
// not one of the trusted proxies (the header's left part is the client's
// word, which anyone may write).
func (s *Server) clientOf(remoteAddr string, h http.Header) string {
	host := hostOf(remoteAddr)
	peer, err := netip.ParseAddr(host)
	if err != nil || !s.isTrusted(peer.Unmap()) {
		return host
	}
	var hops []string
	for _, v := range h.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	client := peer.Unmap()
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // not written by a proxy we trust: stop at the last good hop
		}
		client = a.Unmap()
		if !s.isTrusted(client) {
			break
		}
	}
	return client.String()
}

func (s *Server) isTrusted(a netip.Addr) bool {
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// callState travels in a request's context from the HTTP edge to the
// interceptor: the client's address, and whether the refusal was counted.
type callState struct {
	client  string
	counted bool
}

type callStateKey struct{}

func stateOf(ctx context.Context) *callState {
	st, _ := ctx.Value(callStateKey{}).(*callState)
	return st
}

// refuse counts a refusal (once per request), and records it in the audit
// when audit says so.
func (s *Server) refuse(ctx context.Context, proc, client string, audit bool, kind, fqn string, err error) {
	if st := stateOf(ctx); st != nil {
		if st.counted {
			return
		}
		st.counted = true
	}
	s.edge.refusals.WithLabelValues(proc, connect.CodeOf(err).String()).Inc()
	if audit {
		s.authn.refused(ctx, client, proc, kind, fqn, err, s.policyOf(proc).auth != byToken)
	}
}

// edgeHTTP bounds every request at the HTTP layer.
func (s *Server) edgeHTTP(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proc := r.URL.Path
		if _, mounted := s.procs[proc]; !mounted {
			next.ServeHTTP(w, r) // pages, health, metrics
			return
		}
		pol := s.policyOf(proc)
		st := &callState{client: s.clientOf(r.RemoteAddr, r.Header)}
		ctx := context.WithValue(r.Context(), callStateKey{}, st)
		r = r.WithContext(ctx)
		answer := func(err error, status int) {
			s.refuse(ctx, proc, st.client, true, "", "", err)
			if r.ProtoMajor == 1 {
				// The body goes unread, and the connection with it: a
				// refused flood costs no reading (the server lingers so
				// that the client sees the answer).
				w.Header().Set("Connection", "close")
			}
			if errw.IsSupported(r) {
				errw.Write(w, r, err)
			} else {
				http.Error(w, err.Error(), status)
			}
		}
		if pol.auth == public {
			if !s.edge.perClient.allow(proc+" "+clientKey(st.client), s.edge.limits.PublicPerClient) {
				answer(connect.NewError(connect.CodeResourceExhausted, errors.New("too many requests from this address: wait a few seconds and retry")), http.StatusTooManyRequests)
				return
			}
			if pol.total != nil && !s.edge.total.allow(proc, *pol.total) {
				answer(connect.NewError(connect.CodeResourceExhausted, errors.New("too many requests of this kind right now: wait a few seconds and retry")), http.StatusTooManyRequests)
				return
			}
			select {
			case s.edge.inFlight <- struct{}{}:
				defer func() { <-s.edge.inFlight }()
			default:
				answer(connect.NewError(connect.CodeResourceExhausted, errors.New("the server is busy with requests that need no token: retry in a few seconds")), http.StatusTooManyRequests)
				return
			}
		}
		rec := &outcome{ResponseWriter: w}
		defer func() {
			if !st.counted {
				if code, refused := rec.refusal(); refused {
					s.refuse(ctx, proc, st.client, pol.audit, "", "", connect.NewError(code, errors.New("refused before the handler: "+code.String())))
				}
			}
		}()
		if pol.streaming {
			next.ServeHTTP(rec, r) // connect bounds each message
			return
		}
		limit := int64(MaxRequestBytes)
		if pol.auth == public {
			limit = MaxPublicRequestBytes
		}
		tooLarge := func(size string) error {
			err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("the request body is %s bytes; this server takes at most %d: split the request (e.g. apply fewer files at once)", size, limit))
			if pol.auth == byToken {
				// The refusal is the caller's when its token is good.
				if actx, aerr := s.auth.authenticate(ctx, r.Header); aerr == nil {
					ctx = actx
				}
			}
			return err
		}
		if r.ContentLength > limit {
			answer(tooLarge(strconv.FormatInt(r.ContentLength, 10)), http.StatusRequestEntityTooLarge)
			return
		}
		// A body of no declared length is cut at the limit as it is read
		// (connect then answers ResourceExhausted); it is counted after.
		body := &cappedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit)}
		r.Body = body
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(RequestReadTimeout))
		tctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		defer cancel()
		next.ServeHTTP(rec, r.WithContext(tctx))
		if body.over && !st.counted {
			err := tooLarge("more than " + strconv.FormatInt(limit, 10)) // first: it may name the caller in ctx
			s.refuse(ctx, proc, st.client, true, "", "", err)
		}
	})
}

// outcome notes how connect answered a call that the interceptor never saw
// (a message too large, or one that does not decode).
type outcome struct {
	http.ResponseWriter
	status int
}

func (o *outcome) WriteHeader(code int) {
	if o.status == 0 {
		o.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *outcome) Write(p []byte) (int, error) {
	if o.status == 0 {
		o.status = http.StatusOK
	}
	return o.ResponseWriter.Write(p)
}

func (o *outcome) Flush() {
	if f, ok := o.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (o *outcome) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// refusal reads the call's code from gRPC's status (a trailer, or a header
// in gRPC-Web's trailers-only answer) or the Connect protocol's HTTP status.
func (o *outcome) refusal() (connect.Code, bool) {
	h := o.Header()
	if v := cmp.Or(h.Get(http.TrailerPrefix+"Grpc-Status"), h.Get("Grpc-Status")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 {
			return 0, false
		}
		return connect.Code(n), refusalCode(connect.Code(n))
	}
	code, ok := map[int]connect.Code{
		http.StatusBadRequest: connect.CodeInvalidArgument, http.StatusUnauthorized: connect.CodeUnauthenticated,
		http.StatusForbidden: connect.CodePermissionDenied, http.StatusNotFound: connect.CodeNotFound,
		http.StatusConflict: connect.CodeAborted, http.StatusTooManyRequests: connect.CodeResourceExhausted,
		http.StatusRequestEntityTooLarge: connect.CodeResourceExhausted, http.StatusUnsupportedMediaType: connect.CodeInvalidArgument,
	}[o.status]
	return code, ok
}

// cappedBody notes that a request body hit its size limit.
type cappedBody struct {
	io.ReadCloser
	over bool
}

func (b *cappedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		b.over = true
	}
	return n, err
}

// authInterceptor authenticates every call but the public ones and the
// agent's stream (its handler checks the agent's assertion), applies the
// limits per principal, scrubs internal errors, and counts and audits
// refusals.
type authInterceptor struct {
	srv  *Server
	auth *Auth
	st   store.Store
	log  *slog.Logger
}

// admit runs the checks before a call: it returns the caller's context, a
// release to run after the call, or the refusal.
func (i *authInterceptor) admit(ctx context.Context, proc, client string, h http.Header, pol policy) (context.Context, func(), error) {
	e := i.srv.edge
	if pol.auth == public {
		return ctx, func() {}, nil
	}
	if !e.authFailures.peek(clientKey(client), e.limits.AuthFailuresPerClient) {
		return ctx, nil, connect.NewError(connect.CodeResourceExhausted, errors.New("too many failed authentications from this address: wait a minute, and check the credential"))
	}
	if pol.auth == byAgent {
		return ctx, func() {}, nil // the handler checks the assertion
	}
	actx, err := i.auth.authenticate(ctx, h)
	if err != nil {
		e.authFailures.allow(clientKey(client), e.limits.AuthFailuresPerClient)
		return ctx, nil, err
	}
	p, _ := authn.FromContext(actx)
	who := p.Subject
	if p.Method == authn.MethodInsecure {
		who = "insecure@" + client // everyone is the administrator: count per address
	}
	if pol.principal != nil && !e.perPrincipal.allow(proc+" "+who, *pol.principal) {
		return actx, nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("too many calls of %s by %s: wait a few seconds and retry", proc[strings.LastIndex(proc, "/")+1:], p.Subject))
	}
	if pol.server {
		e.streamsMu.Lock()
		defer e.streamsMu.Unlock()
		if e.streams[who] >= e.limits.StreamsPerPrincipal {
			return actx, nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s has %d streams open, the most one principal may: close one (another browser tab, watch or export) and retry", p.Subject, e.streams[who]))
		}
		e.streams[who]++
		return actx, func() {
			e.streamsMu.Lock()
			defer e.streamsMu.Unlock()
			if e.streams[who]--; e.streams[who] <= 0 {
				delete(e.streams, who)
			}
		}, nil
	}
	return actx, func() {}, nil
}

// after scrubs a call's error and counts and audits it when it is a
// refusal.
func (i *authInterceptor) after(ctx context.Context, proc, client string, pol policy, msg any, err error) error {
	if err == nil {
		return nil
	}
	err = i.scrub(proc, err)
	if refusal(err) {
		kind, fqn := subjectOf(msg)
		audit := pol.audit && (connect.CodeOf(err) != connect.CodeNotFound || pol.auth == public)
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			audit = true
			if pol.auth == byAgent {
				i.srv.edge.authFailures.allow(clientKey(client), i.srv.edge.limits.AuthFailuresPerClient)
			}
		}
		i.srv.refuse(ctx, proc, client, audit, kind, fqn, err)
	}
	return err
}

// scrub replaces an internal error's text with an id that the server log
// holds with the error itself: callers never see store errors or internal
// text.
func (i *authInterceptor) scrub(proc string, err error) error {
	switch code := connect.CodeOf(err); code {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		var b [6]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		i.log.Error("internal error", "id", id, "procedure", proc, "err", err)
		return connect.NewError(code, fmt.Errorf("internal error (id %s): the server log has its details", id))
	}
	return err
}

func (i *authInterceptor) clientOf(ctx context.Context, peer connect.Peer, h http.Header) string {
	if st := stateOf(ctx); st != nil {
		return st.client
	}
	return i.srv.clientOf(peer.Addr, h)
}

func (i *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		proc := req.Spec().Procedure
		pol := i.srv.policyOf(proc)
		client := i.clientOf(ctx, req.Peer(), req.Header())
		ctx, release, err := i.admit(ctx, proc, client, req.Header(), pol)
		if err != nil {
			return nil, i.after(ctx, proc, client, pol, req.Any(), err)
		}
		defer release()
		res, err := next(ctx, req)
		return res, i.after(ctx, proc, client, pol, req.Any(), err)
	}
}

func (i *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		proc := conn.Spec().Procedure
		pol := i.srv.policyOf(proc)
		client := i.clientOf(ctx, conn.Peer(), conn.RequestHeader())
		ctx, release, err := i.admit(ctx, proc, client, conn.RequestHeader(), pol)
		if err != nil {
			return i.after(ctx, proc, client, pol, nil, err)
		}
		defer release()
		return i.after(ctx, proc, client, pol, nil, next(ctx, conn))
	}
}

// refusal reports whether err turns down the request itself (as opposed to
// failing to serve it).
func refusal(err error) bool { return refusalCode(connect.CodeOf(err)) }

func refusalCode(code connect.Code) bool {
	switch code {
	case connect.CodeInvalidArgument, connect.CodeUnauthenticated, connect.CodePermissionDenied,
		connect.CodeFailedPrecondition, connect.CodeNotFound, connect.CodeResourceExhausted, connect.CodeAborted:
		return true
	}
	return false
}

// subjectOf names what a refused request was about, where it says.
func subjectOf(msg any) (kind, fqn string) {
	type named interface {
		GetKind() string
		GetFqn() string
	}
	if m, ok := msg.(named); ok {
		return m.GetKind(), m.GetFqn()
	}
	if m, ok := msg.(interface{ GetFqn() string }); ok {
		return "", m.GetFqn()
	}
	return "", ""
}

// refused records a refused request, at most a few per second per client
// and in all, so that a flood of bad requests cannot flood the audit (or
// hold the store's write lock with it).
// Those of tokenless callers (queued) are written by auditLoop: a flood of
// bad joins never waits for the store's write lock.
func (i *authInterceptor) refused(ctx context.Context, client, proc, kind, fqn string, err error, queued bool) {
	e := i.srv.edge
	if !e.audits.allow(clientKey(client), e.limits.AuditPerClient) || !e.auditsTotal.Allow() || queued && !e.auditsQueued.Allow() {
		e.unaudited.Inc()
		return
	}
	actor := "anonymous@" + client
	if p, ok := authn.FromContext(ctx); ok {
		actor = store.Actor(p.Subject, p.Method)
	}
	op := proc[strings.LastIndex(proc, "/")+1:]
	msg := err.Error()
	if ce := new(connect.Error); errors.As(err, &ce) {
		msg = ce.Message()
	}
	if len(msg) > 1000 {
		msg = msg[:1000] + "…"
	}
	rec := store.AuditRecord{Actor: actor, Operation: op, Kind: kind, FQN: fqn, Reason: msg}
	if queued {
		select {
		case e.auditQ <- rec:
		default:
			e.unaudited.Inc()
		}
		return
	}
	// The request's own context may be ending; the record must still land.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := i.st.Refuse(actx, rec); err != nil {
		i.log.Warn("record a refused request", "err", err)
	}
}

// maxBuckets bounds a limiter's keys (a few hundred bytes each): past it,
// idle keys are forgotten at once, and a new key is refused while it stays
// full, so that a flood from countless addresses cannot grow it.
const maxBuckets = 100_000

// clientKey is what limits key a client on: its address, or for IPv6 its
// /64 (one host holds a whole /64).
func clientKey(client string) string {
	a, err := netip.ParseAddr(client)
	if err != nil || !a.Is6() {
		return client
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

// keyLimiter is a token bucket per key.
type keyLimiter struct {
	mu      sync.Mutex
	buckets map[string]*rate.Limiter
	swept   time.Time
}

func newKeyLimiter() *keyLimiter {
	return &keyLimiter{buckets: map[string]*rate.Limiter{}, swept: time.Now()}
}

// bucket returns key's bucket of rate r; callers hold l.mu.
func (l *keyLimiter) bucket(key string, r Rate) *rate.Limiter {
	if time.Since(l.swept) > time.Minute || len(l.buckets) >= maxBuckets { // forget idle keys
		for k, b := range l.buckets {
			if b.Tokens() >= float64(b.Burst()) {
				delete(l.buckets, k)
			}
		}
		l.swept = time.Now()
	}
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			return nil
		}
		b = rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
		l.buckets[key] = b
	}
	return b
}

// allow takes a token from key's bucket; false also when the limiter is
// full of busy keys.
func (l *keyLimiter) allow(key string, r Rate) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, r)
	return b != nil && b.Allow()
}

// peek reports whether key's bucket has a token, without taking it.
func (l *keyLimiter) peek(key string, r Rate) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, r)
	return b != nil && b.Tokens() >= 1
}
