package authn

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Methods of authentication, as tokens and the audit name them.
const (
	MethodBootstrap      = "bootstrap"
	MethodServiceAccount = "serviceaccount"
	MethodOIDC           = "oidc"
	// MethodInsecure names callers of a server run with --insecure-no-auth:
	// all of them are the bootstrap administrator.
	MethodInsecure = "insecure-no-auth"
)

// Subject prefixes.
const (
	UserPrefix           = "user:"
	ServiceAccountPrefix = "serviceaccount:"
)

// BootstrapSubject is the bootstrap administrator.
const BootstrapSubject = UserPrefix + "admin"

// Audience is the aud of access tokens and service-account assertions.
const Audience = "flotilla"

// Principal is an authenticated caller.
type Principal struct {
	// Subject is "user:<name>" or "serviceaccount:<fqn>".
	Subject string
	// Method is how the caller proved it: MethodBootstrap, MethodServiceAccount or MethodOIDC.
	Method string
	// Groups are the OIDC provider's groups (people only).
	Groups  []string
	Expires time.Time
	// Session names the credential a token was exchanged for when the
	// server ends the token's session with it (the bootstrap credential's
	// hash; empty otherwise).
	Session string
}

// Bootstrap reports whether p is the bootstrap administrator, who holds
// every permission. Only the bootstrap credential mints such a token.
func (p Principal) Bootstrap() bool {
	return (p.Method == MethodBootstrap || p.Method == MethodInsecure) && p.Subject == BootstrapSubject
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the caller authenticated for ctx.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// claims are an access token's claims.
type claims struct {
	jwt.RegisteredClaims
	Method  string   `json:"mth"`
	Groups  []string `json:"grp,omitempty"`
	Session string   `json:"sid,omitempty"`
}

// Issuer mints and verifies the server's access tokens.
type Issuer struct {
	// Name is the tokens' iss: the server's identity, e.g. its URL.
	Name string
	Keys *KeySet
	Now  func() time.Time
}

func (is *Issuer) now() time.Time {
	if is.Now != nil {
		return is.Now()
	}
	return time.Now()
}

// Mint signs an access token for p that expires after ttl. Every token has
// its own ID (jti), so two tokens minted in the same second differ.
func (is *Issuer) Mint(p Principal, ttl time.Duration) (string, time.Time, error) {
	key := is.Keys.Signer()
	now := is.now().Truncate(time.Second)
	exp := now.Add(ttl)
	var jti [12]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", time.Time{}, err
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: is.Name, Subject: p.Subject, Audience: jwt.ClaimStrings{Audience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
			ID: base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Method: p.Method, Groups: p.Groups, Session: p.Session,
	})
	tok.Header["kid"] = key.ID
	s, err := tok.SignedString(key.private)
	return s, exp, err
}

// ErrNoToken says the request carried no credential.
var ErrNoToken = errors.New("this call needs a credential: log in with `flotilla login` (or pass a token in the Authorization header as \"Bearer <token>\")")

// Verify checks an access token and returns its principal. Its errors say
// what is wrong in words a user can act on.
func (is *Issuer) Verify(token string) (Principal, error) {
	var c claims
	parser := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}), jwt.WithTimeFunc(is.now),
		jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second))
	_, err := parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		key, ok := is.Keys.Lookup(kid)
		if !ok {
			return nil, fmt.Errorf("it was signed by key %q, which this server does not hold (removed, or from another server): log in again", kid)
		}
		return key.Public(), nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return Principal{}, errors.New("malformed token: it is not a JWT this server issued; log in again with `flotilla login`")
	case errors.Is(err, jwt.ErrTokenExpired):
		return Principal{}, fmt.Errorf("the token expired at %s: log in again with `flotilla login`", expiry(c))
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return Principal{}, errors.New("the token's signature does not verify: it was altered or signed by another server; log in again")
	case err != nil:
		msg := err.Error()
		if i := strings.Index(msg, "it was signed by key"); i >= 0 {
			msg = msg[i:]
		}
		return Principal{}, fmt.Errorf("token refused: %s", msg)
	}
	if c.Issuer != is.Name {
		return Principal{}, fmt.Errorf("the token was issued by %q, not by this server (%q): log in to this server", c.Issuer, is.Name)
	}
	if !audienceHas(c.Audience, Audience) {
		return Principal{}, fmt.Errorf("the token is for audience %v, not %q", []string(c.Audience), Audience)
	}
	if c.Subject == "" || c.Method == "" {
		return Principal{}, errors.New("token refused: it names no subject or method")
	}
	return Principal{Subject: c.Subject, Method: c.Method, Groups: c.Groups, Expires: c.ExpiresAt.Time, Session: c.Session}, nil
}

func expiry(c claims) string {
	if c.ExpiresAt == nil {
		return "an unknown time"
	}
	return c.ExpiresAt.UTC().Format(time.RFC3339)
}

func audienceHas(aud jwt.ClaimStrings, want string) bool {
	for _, a := range aud {
		if a == want {
			return true
		}
	}
	return false
}
