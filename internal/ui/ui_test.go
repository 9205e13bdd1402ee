package ui

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

// Every page of the UI has a URL: paths that name no asset answer
// index.html (uncached), assets are served as files (cached for good),
// and only GET and HEAD are served.
func TestPagesAnswerTheAppAndAssetsAreFiles(t *testing.T) {
	app := fstest.MapFS{
		"index.html":         {Data: []byte("<!doctype html><div id=root></div>")},
		"assets/index-a1.js": {Data: []byte("console.log(1)")},
		"favicon.svg":        {Data: []byte("<svg/>")},
	}
	srv := httptest.NewServer(handler(app, options{}))
	defer srv.Close()
	get := func(method, p string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+p, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, p := range []string{"/", "/index.html", "/clusters/organizations/acme/clusters/c1", "/audit?operation=update", "/config/IngressGateway/organizations/acme/x"} {
		code, body, h := get("GET", p)
		if code != 200 || !strings.Contains(body, `id=root`) || h.Get("Cache-Control") != "no-cache" {
			t.Fatalf("GET %s: %d %q %v", p, code, body, h)
		}
	}
	if code, body, h := get("GET", "/assets/index-a1.js"); code != 200 || body != "console.log(1)" || !strings.Contains(h.Get("Cache-Control"), "immutable") {
		t.Fatalf("an asset: %d %q %v", code, body, h)
	}
	if code, body, _ := get("GET", "/favicon.svg"); code != 200 || body != "<svg/>" {
		t.Fatalf("a file: %d %q", code, body)
	}
	if code, _, _ := get("GET", "/assets/missing.js"); code != 404 {
		t.Fatalf("a missing asset: %d, want 404 (not the app)", code)
	}
	if code, _, h := get("POST", "/"); code != 405 || h.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d %v", code, h)
	}
}

// csp parses a Content-Security-Policy into its directives.
func csp(t *testing.T, h http.Header) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range strings.Split(h.Get("Content-Security-Policy"), ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		if name != "" {
			out[name] = value
		}
	}
	return out
}

// strict fails unless h holds the UI's security headers, with
// connectSrc as connect-src.
func strict(t *testing.T, what string, h http.Header, connectSrc string) {
	t.Helper()
	want := map[string]string{
		"default-src":     "'self'",
		"script-src":      "'self'",
		"style-src":       "'self'",
		"connect-src":     connectSrc,
		"object-src":      "'none'",
		"base-uri":        "'none'",
		"frame-ancestors": "'none'",
		"form-action":     "'self'",
	}
	got := csp(t, h)
	for d, v := range want {
		if got[d] != v {
			t.Errorf("%s: %s is %q, want %q (policy %q)", what, d, got[d], v, h.Get("Content-Security-Policy"))
		}
	}
	for name, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"} {
		if h.Get(name) != v {
			t.Errorf("%s: %s is %q, want %q", what, name, h.Get(name), v)
		}
	}
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// Every answer of the UI carries a strict policy: the index, a deep link,
// an asset, a missing asset, a refused method, and the note of a binary
// without a UI. The real Handler serves what this binary embeds (the
// built UI after `make ui`, else the note).
func TestEveryAnswerCarriesAStrictPolicy(t *testing.T) {
	built := httptest.NewServer(Handler())
	defer built.Close()
	paths := []string{"/", "/clusters/organizations/acme/clusters/c1", "/assets/missing.js"}
	if Built() {
		assets, err := fs.ReadDir(static, "static/app/assets")
		if err != nil || len(assets) == 0 {
			t.Fatalf("the built UI has no assets: %v", err)
		}
		paths = append(paths, "/assets/"+assets[0].Name())
		if code, body, _ := get(t, built.URL+"/assets/"+assets[0].Name()); code != 200 || body == "" {
			t.Fatalf("the built asset %s: %d", assets[0].Name(), code)
		}
	} else {
		t.Log("no UI built: the real handler is the note; `make ui` tests the built app too")
	}
	for _, p := range paths {
		_, _, h := get(t, built.URL+p)
		strict(t, "Handler GET "+p, h, "'self'")
	}

	app := fstest.MapFS{
		"index.html":         {Data: []byte(`<!doctype html><script type="module" src="/assets/index-a1.js"></script><div id=root></div>`)},
		"assets/index-a1.js": {Data: []byte("console.log(1)")},
	}
	srv := httptest.NewServer(handler(app, options{}))
	defer srv.Close()
	for _, p := range []string{"/", "/audit?operation=update", "/assets/index-a1.js", "/assets/missing.js"} {
		_, _, h := get(t, srv.URL+p)
		strict(t, "GET "+p, h, "'self'")
	}
	resp, err := http.Post(srv.URL+"/", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	strict(t, "POST /", resp.Header, "'self'")

	none := httptest.NewServer(notBuilt())
	defer none.Close()
	code, body, h := get(t, none.URL+"/clusters")
	if code != 404 || !strings.Contains(body, "make ui") {
		t.Fatalf("no UI: %d %q", code, body)
	}
	strict(t, "no UI", h, "'self'")
}

// An inline script or style of index.html is allowed by its hash, never
// by 'unsafe-inline'; a script with a src is no inline script.
func TestInlineScriptsAndStylesOfTheIndexGoByTheirHashes(t *testing.T) {
	const script, style = "window.x = 1;", "body{margin:0}"
	app := fstest.MapFS{"index.html": {Data: []byte("<!doctype html><html><head>" +
		"<script type=\"module\" crossorigin src=\"/assets/a.js\"></script>" +
		"<SCRIPT>" + script + "</SCRIPT><style media=\"all\">" + style + "</style>" +
		"</head><body><div id=root></div></body></html>")}}
	srv := httptest.NewServer(handler(app, options{}))
	defer srv.Close()
	_, _, h := get(t, srv.URL+"/")
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	got := csp(t, h)
	if got["script-src"] != "'self' "+hash(script) || got["style-src"] != "'self' "+hash(style) {
		t.Fatalf("policy %q, want script-src 'self' %s and style-src 'self' %s", h.Get("Content-Security-Policy"), hash(script), hash(style))
	}
	if strings.Contains(h.Get("Content-Security-Policy"), "unsafe") {
		t.Fatalf("policy %q", h.Get("Content-Security-Policy"))
	}
}

// The OIDC issuer's origins join connect-src on pages (the browser's
// login fetches its discovery document and token endpoint), within a
// bounded wait; what is not an origin is left out, so nothing can widen
// the policy.
func TestPagesMayFetchFromTheOriginsConnectSourcesNames(t *testing.T) {
	app := fstest.MapFS{"index.html": {Data: []byte("<div id=root></div>")}, "assets/a.js": {Data: []byte("1")}}
	var bounded bool
	sources := func(ctx context.Context) []string {
		_, bounded = ctx.Deadline()
		return []string{"http://127.0.0.1:5556", "https://oauth2.example.com", "http://127.0.0.1:5556", "https://x.example.com; script-src *", "'unsafe-inline'", "https://idp.example.com/path", "http://[::1]:8443"}
	}
	srv := httptest.NewServer(handler(app, options{connectSources: sources}))
	defer srv.Close()
	_, _, h := get(t, srv.URL+"/login/callback?code=x")
	strict(t, "a page", h, "'self' http://127.0.0.1:5556 https://oauth2.example.com http://[::1]:8443")
	if !bounded {
		t.Fatal("ConnectSources was called without a deadline")
	}
	_, _, h = get(t, srv.URL+"/assets/a.js")
	strict(t, "an asset", h, "'self'")

	// Through the option, and a source that waits for its context ends in time.
	slow := httptest.NewServer(Handler(ConnectSources(func(ctx context.Context) []string {
		<-ctx.Done()
		return []string{"https://late.example.com"}
	})))
	defer slow.Close()
	if _, _, h := get(t, slow.URL+"/"); Built() {
		strict(t, "a page after a slow source", h, "'self' https://late.example.com")
	}
}
