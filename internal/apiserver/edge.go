package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
)

// authInterceptor authenticates every call except the public ones, rate
// limits the public ones per address, and records refused writes and
// refused credentials in the audit.
type authInterceptor struct {
	auth *Auth
	st   store.Store
	log  *slog.Logger
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func (i *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		proc := req.Spec().Procedure
		host := hostOf(req.Peer().Addr)
		var err error
		if public[proc] {
			if !i.auth.limiter().allow(host) {
				return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("too many requests from this address: wait a few seconds and retry"))
			}
		} else if ctx, err = i.auth.authenticate(ctx, req.Header()); err != nil {
			i.refused(ctx, host, proc, "", "", err)
			return nil, err
		}
		res, err := next(ctx, req)
		if err != nil && writes[proc] && refusal(err) {
			kind, fqn := subjectOf(req.Any())
			i.refused(ctx, host, proc, kind, fqn, err)
		}
		return res, err
	}
}

func (i *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.auth.authenticate(ctx, conn.RequestHeader())
		if err != nil {
			i.refused(ctx, hostOf(conn.Peer().Addr), conn.Spec().Procedure, "", "", err)
			return err
		}
		return next(ctx, conn)
	}
}

// refusal reports whether err turns down the request itself (as opposed to
// failing to serve it).
func refusal(err error) bool {
	switch connect.CodeOf(err) {
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

// refused records a refused request, at most a few per second per address
// so that a flood of bad requests cannot flood the audit.
func (i *authInterceptor) refused(ctx context.Context, host, proc, kind, fqn string, err error) {
	if !i.auth.auditLimiter().allow(host) {
		return
	}
	actor := "anonymous@" + host
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
	// The request's own context may be ending; the record must still land.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := i.st.Refuse(actx, store.AuditRecord{Actor: actor, Operation: op, Kind: kind, FQN: fqn, Reason: msg}); err != nil {
		i.log.Warn("record a refused request", "err", err)
	}
}

func (a *Auth) limiter() *ipLimiter      { return a.public }
func (a *Auth) auditLimiter() *ipLimiter { return a.audits }

// ipLimiter is a token bucket per client address.
type ipLimiter struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
	swept   time.Time
}

func newIPLimiter(r rate.Limit, burst int) *ipLimiter {
	return &ipLimiter{rate: r, burst: burst, buckets: map[string]*rate.Limiter{}, swept: time.Now()}
}

func (l *ipLimiter) allow(host string) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.swept) > time.Minute { // forget idle addresses
		for h, b := range l.buckets {
			if b.Tokens() >= float64(l.burst) {
				delete(l.buckets, h)
			}
		}
		l.swept = time.Now()
	}
	b := l.buckets[host]
	if b == nil {
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[host] = b
	}
	return b.Allow()
}

// Request size limits.
const (
	// MaxRequestBytes bounds a request body of the API.
	MaxRequestBytes = 8 << 20
	// MaxPublicRequestBytes bounds the requests that need no token.
	MaxPublicRequestBytes = 64 << 10
	// maxMessageBytes bounds one decoded (decompressed) message; above
	// MaxRequestBytes so that the body limit, which is audited, acts first
	// on uncompressed requests.
	maxMessageBytes = 2 * MaxRequestBytes
)

// Time limits of unary calls: reading the request, and the whole call.
const (
	RequestReadTimeout = 30 * time.Second
	RequestTimeout     = 2 * time.Minute
)

// streaming procedures run for as long as the client stays.
var streaming = map[string]bool{
	flotillav1alpha1connect.ResourceServiceWatchProcedure:   true,
	flotillav1alpha1connect.FleetServiceWatchFleetProcedure: true,
	agentv1connect.AgentServiceConnectProcedure:             true,
}

// edge bounds every request at the HTTP layer: body size (a larger one is
// refused before it is read, and audited), and for unary calls the time to
// read the request and to answer.
func (s *Server) edge(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proc := r.URL.Path
		if streaming[proc] {
			next.ServeHTTP(w, r)
			return
		}
		limit := int64(MaxRequestBytes)
		if public[proc] {
			limit = MaxPublicRequestBytes
		}
		tooLarge := func(size string) error {
			err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("the request body is %s bytes; this server takes at most %d: split the request (e.g. apply fewer files at once)", size, limit))
			// The refusal is the caller's when its token is good.
			ctx, _ := s.auth.authenticate(r.Context(), r.Header)
			s.authn.refused(ctx, hostOf(r.RemoteAddr), proc, "", "", err)
			return err
		}
		if r.ContentLength > limit {
			err := tooLarge(fmt.Sprint(r.ContentLength))
			io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10)) // let the client see the answer
			if errw.IsSupported(r) {
				errw.Write(w, r, err)
			} else {
				http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			}
			return
		}
		// A body of no declared length is cut at the limit as it is read
		// (connect then answers ResourceExhausted); it is audited after.
		body := &cappedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit)}
		r.Body = body
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(RequestReadTimeout))
		ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
		if body.over {
			tooLarge("more than " + fmt.Sprint(limit))
		}
	})
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
