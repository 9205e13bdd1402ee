package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

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
	return o.verifier, nil
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
