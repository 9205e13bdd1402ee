// Package ui serves the web UI: the assets that `make ui` builds from web/
// (React, TypeScript, Vite), embedded in the binary. The UI talks to the
// Connect API of the same server from the browser; this package serves
// files only, and no data.
//
// Paths that name no asset get index.html, so every page of the UI has a
// URL of its own (deep links, reloads, back and forward).
//
// Every response carries a strict Content-Security-Policy: scripts and
// styles from the server only (an inline one of index.html by its hash),
// fetches to the server and the OIDC issuer only, no plugins, no <base>,
// no framing, forms to the server only.
package ui

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

//go:embed all:static
var static embed.FS

// Built reports whether the binary holds a built UI.
func Built() bool {
	_, err := fs.Stat(static, "static/app/index.html")
	return err == nil
}

// Option configures Handler.
type Option func(*options)

type options struct {
	connectSources func(context.Context) []string
}

// ConnectSources names the origins beyond the server's own that a page
// may fetch from: the OIDC issuer's, whose discovery document and token
// endpoint the browser's login reads. f is called for each page, with a
// context that ends within sourcesWait; origins that are not plain
// scheme://host[:port] are left out.
func ConnectSources(f func(context.Context) []string) Option {
	return func(o *options) { o.connectSources = f }
}

// sourcesWait bounds how long a page waits for ConnectSources.
const sourcesWait = time.Second

// Handler serves the UI at "/". Without a built UI it answers every page
// with a short note saying how to build it.
func Handler(opts ...Option) http.Handler {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if !Built() {
		return notBuilt()
	}
	app, _ := fs.Sub(static, "static/app")
	return handler(app, o)
}

// notBuilt answers every page of a binary without a built UI.
func notBuilt() http.Handler {
	p := newPolicy(nil)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		p.set(w.Header(), "")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("This flotilla binary has no web UI: build it with `make ui` (or `make build`), which embeds web/ in the binary.\n"))
	})
}

// handler serves the built UI in app.
func handler(app fs.FS, o options) http.Handler {
	index, _ := fs.ReadFile(app, "index.html")
	p := newPolicy(index)
	files := http.FileServerFS(app)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			p.set(w.Header(), "")
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if strings.HasPrefix(name, "assets/") {
			p.set(w.Header(), "")
			// Hashed names: they never change.
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			files.ServeHTTP(w, r)
			return
		}
		if _, err := fs.Stat(app, name); name == "" || name == "index.html" || err != nil {
			// A page of the UI: its router reads the path.
			p.set(w.Header(), connectSources(r.Context(), o.connectSources))
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, app, "index.html")
			return
		}
		p.set(w.Header(), "")
		files.ServeHTTP(w, r)
	})
}

// policy is the Content-Security-Policy of the UI, with the hashes of
// index.html's inline scripts and styles (Vite emits none today; a
// change of web/index.html or of the build that adds one keeps working
// without 'unsafe-inline').
type policy struct{ scripts, styles string }

func newPolicy(index []byte) policy {
	return policy{scripts: inlineHashes(index, "script"), styles: inlineHashes(index, "style")}
}

// set puts the security headers on h; extra are more connect-src sources.
func (p policy) set(h http.Header, extra string) {
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'"+p.scripts+"; style-src 'self'"+p.styles+
		"; connect-src 'self'"+extra+"; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}

var (
	srcAttr = regexp.MustCompile(`(?i)\ssrc\s*=`)
	origin  = regexp.MustCompile(`^https?://[A-Za-z0-9.\-]+(:[0-9]+)?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]+)?$`)
)

// inlineHashes returns " 'sha256-…'" for each inline element tag (script
// or style) of an HTML document: its text as the browser hashes it.
func inlineHashes(doc []byte, tag string) string {
	var out strings.Builder
	s := string(doc)
	lower := strings.ToLower(s)
	open, end := "<"+tag, "</"+tag
	for i := 0; ; {
		j := strings.Index(lower[i:], open)
		if j < 0 {
			return out.String()
		}
		j += i
		k := j + len(open)
		if k >= len(s) || !strings.ContainsRune(" \t\n\r\f/>", rune(s[k])) {
			i = k // <scripts>, <styled-…>: not the element
			continue
		}
		gt := strings.IndexByte(s[k:], '>')
		if gt < 0 {
			return out.String()
		}
		attrs, body := s[k:k+gt], k+gt+1
		stop := strings.Index(lower[body:], end)
		if stop < 0 {
			return out.String()
		}
		if text := s[body : body+stop]; text != "" && (tag != "script" || !srcAttr.MatchString(" "+attrs)) {
			sum := sha256.Sum256([]byte(text))
			out.WriteString(" 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'")
		}
		i = body + stop + len(end)
	}
}

// connectSources asks f (when set) for the origins of a page's
// connect-src, waiting at most sourcesWait.
func connectSources(ctx context.Context, f func(context.Context) []string) string {
	if f == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, sourcesWait)
	defer cancel()
	var out []string
	for _, o := range f(ctx) {
		if origin.MatchString(o) && !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return " " + strings.Join(out, " ")
}
