package authn

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// A browser's login fetches from the issuer and from the token endpoint
// its discovery document names, on another host here (as at Google): both
// origins, and the document is read once.
func TestBrowserOriginsAreTheIssuersAndItsTokenEndpoints(t *testing.T) {
	var reads atomic.Int32
	var issuer string
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dex/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		reads.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                 issuer,
			"authorization_endpoint": issuer + "/auth",
			"token_endpoint":         "https://oauth2.example.com:8443/token",
			"jwks_uri":               issuer + "/keys",
		})
	}))
	defer idp.Close()
	issuer = idp.URL + "/dex"
	o := &OIDC{Issuer: issuer, ClientID: "flotilla"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := []string{idp.URL, "https://oauth2.example.com:8443"}
	for range 3 {
		if got := o.BrowserOrigins(ctx); !slices.Equal(got, want) {
			t.Fatalf("BrowserOrigins: %q, want %q", got, want)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("the discovery document was read %d times, want once", n)
	}
}

// An issuer that does not answer leaves the issuer's origin only, and the
// caller does not wait past its context.
func TestBrowserOriginsOfAnIssuerThatDoesNotAnswer(t *testing.T) {
	release := make(chan struct{})
	idp := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer idp.Close()
	defer close(release)
	o := &OIDC{Issuer: idp.URL, ClientID: "flotilla"}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if got := o.BrowserOrigins(ctx); !slices.Equal(got, []string{idp.URL}) {
		t.Fatalf("BrowserOrigins: %q, want the issuer's origin only", got)
	}
}
