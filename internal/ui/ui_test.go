package ui

import (
	"io"
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
	srv := httptest.NewServer(handler(app))
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
