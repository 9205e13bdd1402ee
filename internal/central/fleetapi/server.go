package fleetapi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Server serves the FleetService over a View. Every call is authorized
// against the policies, for the caller the authentication interceptor put
// in the context.
type Server struct {
	cp       View
	reg      *resource.Registry
	st       store.Store
	policies *authz.Cache
	log      *slog.Logger
	now      func() time.Time
	health   map[string]HealthSource // by kind: status from runtime health
}

var _ flotillav1alpha1connect.FleetServiceHandler = (*Server)(nil)

// HealthSource reports the runtime health of a record that is not carried
// in bundles, one row per place it lives (a DNS record set's entry points):
// Applied when healthy, Failed with the reason when not.
type HealthSource func(fqn string) []*pb.ClusterState

// Option configures a Server.
type Option func(*Server)

// WithHealth makes GetStatus of records of kind come from f.
func WithHealth(kind string, f HealthSource) Option {
	return func(s *Server) {
		if s.health == nil {
			s.health = map[string]HealthSource{}
		}
		s.health[kind] = f
	}
}

// WithClock replaces time.Now (for join tokens' expiry), for tests.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// New returns the FleetService over cp, reading and writing intent in st
// (onboarding, revoking and plans' validation) and authorizing with
// policies.
func New(cp View, reg *resource.Registry, st store.Store, policies *authz.Cache, log *slog.Logger, opts ...Option) *Server {
	s := &Server{cp: cp, reg: reg, st: st, policies: policies, log: log, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// internal answers a failure of the server itself: the caller learns that
// it failed and where to look, the log gets what failed and why.
func (s *Server) internal(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New(op+": the request ended before it was answered"))
	}
	s.log.Error(op+" failed", "err", err)
	return connect.NewError(connect.CodeInternal, errors.New(op+" failed on the server: its log says why"))
}

func (s *Server) target(kindName, fqn string, md *pb.Metadata) (*resource.Kind, string, error) {
	k, out, err := s.reg.Target(kindName, fqn, md)
	if err != nil {
		return nil, "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return k, out, nil
}

// ready waits until the bundles reflect the store, or the request ends.
func (s *Server) ready(ctx context.Context) error {
	select {
	case <-s.cp.Ready():
		return nil
	case <-ctx.Done():
		return connect.NewError(connect.CodeUnavailable, errors.New("the central control plane is starting"))
	}
}

// caller is the caller's view of the fleet (access.View) over the
// workspaces the central control plane knows.
func (s *Server) caller(ctx context.Context) (*access.View, error) {
	chk, err := access.ReadChecker(ctx, s.policies, s.st)
	if err != nil {
		return nil, err
	}
	return access.NewView(chk, s.cp.Workspaces()), nil
}
