package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// OIDC verifies ID tokens of one OpenID Connect provider. The provider's
// discovery document and keys are fetched on first use (and its keys again
// when a token names an unknown one), so the server starts while the
// provider is down.
type OIDC struct {
	Issuer   string
	ClientID string
	// Client reaches the provider; nil for http.DefaultClient.
	Client *http.Client

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	tokenURL string

	// bmu guards what BrowserOrigins knows: the token endpoint's origin
	// once read, and the read under way.
	bmu         sync.Mutex
	tokenOrigin string
	reading     chan struct{}
}

func (o *OIDC) verifierFor(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.verifier != nil {
		return o.verifier, nil
	}
	if o.Client != nil {
		ctx = oidc.ClientContext(ctx, o.Client)
	}
	p, err := oidc.NewProvider(ctx, o.Issuer)
	if err != nil {
		return nil, fmt.Errorf("the OIDC provider %s does not answer: %w", o.Issuer, err)
	}
	o.verifier = p.Verifier(&oidc.Config{ClientID: o.ClientID})
	o.tokenURL = p.Endpoint().TokenURL
	return o.verifier, nil
}

// browserRead bounds a discovery read that BrowserOrigins starts.
const browserRead = 30 * time.Second

// BrowserOrigins are the origins a browser fetches from when a person
// logs in to the web UI (authorization code with PKCE): the issuer's, for
// its discovery document, and its token endpoint's, which only that
// document names (another host at some providers). Until the document is
// read, BrowserOrigins starts one read in the background and waits for it
// until ctx ends; the page then allows the issuer only, and a later page
// the token endpoint too.
func (o *OIDC) BrowserOrigins(ctx context.Context) []string {
	out := []string{originOf(o.Issuer)}
	o.bmu.Lock()
	if o.tokenOrigin == "" && o.reading == nil {
		done := make(chan struct{})
		o.reading = done
		go func() {
			defer close(done)
			rctx, cancel := context.WithTimeout(context.Background(), browserRead)
			defer cancel()
			_, err := o.verifierFor(rctx)
			o.mu.Lock()
			tok := o.tokenURL
			o.mu.Unlock()
			o.bmu.Lock()
			defer o.bmu.Unlock()
			o.reading = nil
			if err == nil {
				o.tokenOrigin = originOf(tok)
			}
		}()
	}
	reading := o.reading
	o.bmu.Unlock()
	if reading != nil {
		select {
		case <-reading:
		case <-ctx.Done():
		}
	}
	o.bmu.Lock()
	defer o.bmu.Unlock()
	if o.tokenOrigin != "" && o.tokenOrigin != out[0] {
		out = append(out, o.tokenOrigin)
	}
	return out
}

// originOf is the scheme://host[:port] of a URL, or "" when it has none.
func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// Verify checks an ID token and returns the person it names (see
// OIDCSubject), with the provider's groups.
func (o *OIDC) Verify(ctx context.Context, idToken string) (Principal, error) {
	if o == nil || o.Issuer == "" {
		return Principal{}, errors.New("this server has no OIDC provider configured (flotilla server --oidc-issuer)")
	}
	if iss := unverifiedIssuer(idToken); iss != "" && iss != o.Issuer {
		return Principal{}, fmt.Errorf("the ID token was issued by %q; this server trusts only %q", iss, o.Issuer)
	}
	v, err := o.verifierFor(ctx)
	if err != nil {
		return Principal{}, err
	}
	if o.Client != nil {
		ctx = oidc.ClientContext(ctx, o.Client)
	}
	tok, err := v.Verify(ctx, idToken)
	if err != nil {
		var expired *oidc.TokenExpiredError
		if errors.As(err, &expired) {
			return Principal{}, fmt.Errorf("the ID token expired at %s: log in again", expired.Expiry.UTC().Format("2006-01-02T15:04:05Z"))
		}
		return Principal{}, fmt.Errorf("the ID token does not verify: %v", err)
	}
	var c struct {
		Email    string   `json:"email"`
		Verified *bool    `json:"email_verified"`
		Groups   []string `json:"groups"`
	}
	if err := tok.Claims(&c); err != nil {
		return Principal{}, fmt.Errorf("the ID token's claims: %w", err)
	}
	return Principal{Subject: OIDCSubject(o.Issuer, tok.Subject, c.Email, c.Verified != nil && *c.Verified), Method: MethodOIDC, Groups: c.Groups}, nil
}

// OIDCSubject is the subject of a person the provider issuer vouches for:
// "user:<email>" when the provider says it verified the email, else
// "user:<issuer>#<sub>", qualified by the issuer. A missing
// email_verified counts as unverified: an unverified email is anyone's to
// claim. Neither form can be the bootstrap administrator's "user:admin".
func OIDCSubject(issuer, sub, email string, verified bool) string {
	if verified && strings.Contains(email, "@") {
		return UserPrefix + email
	}
	return UserPrefix + issuer + "#" + sub
}

// unverifiedIssuer peeks at a JWT's iss to give a clear error for a token
// of another provider; the signature is checked by Verify.
func unverifiedIssuer(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := decodeSegment(parts[1], &c); err != nil {
		return ""
	}
	return c.Iss
}
