// Package testauth gives tests a real authentication setup: signing keys in
// a temporary directory, and tokens minted with them, sent the way every
// client sends them. Nothing in it is a stand-in: the server verifies these
// tokens exactly as it verifies any other.
package testauth

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/authn"
)

// New returns server authentication with a fresh signing key, and a token
// of the bootstrap administrator.
func New(t testing.TB) (*apiserver.Auth, string) {
	t.Helper()
	a, err := apiserver.NewAuth(filepath.Join(t.TempDir(), apiserver.SigningKeyFile), "flotilla-test")
	if err != nil {
		t.Fatal(err)
	}
	return a, Token(t, a, authn.BootstrapSubject, authn.MethodBootstrap)
}

// Token mints an hour-long token for subject, authenticated by method.
func Token(t testing.TB, a *apiserver.Auth, subject, method string, groups ...string) string {
	t.Helper()
	tok, _, err := a.Issuer.Mint(authn.Principal{Subject: subject, Method: method, Groups: groups}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Bearer is the client option that sends token on every call.
func Bearer(token string) connect.ClientOption {
	return connect.WithInterceptors(bearer(token))
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
