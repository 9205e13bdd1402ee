// Package ui serves the web UI: the assets that `make ui` builds from web/
// (React, TypeScript, Vite), embedded in the binary. The UI talks to the
// Connect API of the same server from the browser; this package serves
// files only, and no data.
//
// Paths that name no asset get index.html, so every page of the UI has a
// URL of its own (deep links, reloads, back and forward).
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed all:static
var static embed.FS

// Built reports whether the binary holds a built UI.
func Built() bool {
	_, err := fs.Stat(static, "static/app/index.html")
	return err == nil
}

// Handler serves the UI at "/". Without a built UI it answers every page
// with a short note saying how to build it.
func Handler() http.Handler {
	if !Built() {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte("This flotilla binary has no web UI: build it with `make ui` (or `make build`), which embeds web/ in the binary.\n"))
		})
	}
	app, _ := fs.Sub(static, "static/app")
	return handler(app)
}

// handler serves the built UI in app.
func handler(app fs.FS) http.Handler {
	files := http.FileServerFS(app)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if strings.HasPrefix(name, "assets/") {
			// Hashed names: they never change.
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			files.ServeHTTP(w, r)
			return
		}
		if _, err := fs.Stat(app, name); name == "" || name == "index.html" || err != nil {
			// A page of the UI: its router reads the path.
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, app, "index.html")
			return
		}
		files.ServeHTTP(w, r)
	})
}
