// Package control is the supervisor's control socket, through which
// `localfleet stop` and `localfleet start` ask the supervisor, which owns every
// process of the fleet, to stop or start one cluster.
//
//	localfleet stop --cluster c2 ── POST /clusters/c2/stop ──▶ DIR/localfleet.sock ── Serve ── Clusters.StopCluster("c2")
//	localfleet start --cluster c2 ─ POST /clusters/c2/start ─▶       (supervisor)          └── Clusters.StartCluster(ctx, "c2")
//
// It is HTTP over a Unix socket: an answer of 200 means done, any other
// status carries the error as plain text. By hand:
//
//	curl --unix-socket DIR/localfleet.sock -X POST http://localfleet/clusters/c2/stop
package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SocketFile is the name of the socket inside the fleet directory.
const SocketFile = "localfleet.sock"

// maxSocketPath is the longest path a Unix socket may have on Linux
// (sun_path holds 108 bytes, with a terminating NUL).
const maxSocketPath = 107

// startTimeout bounds a start, however long its client is willing to wait.
const startTimeout = 2 * time.Minute

// Clusters is what the control socket drives; *fleet.Fleet implements it.
// Its methods may be called concurrently, and their errors are shown to the
// user as they are.
type Clusters interface {
	// StopCluster stops cluster name, keeping its data.
	StopCluster(name string) error
	// StartCluster starts a stopped cluster name again and returns once it
	// is ready.
	StartCluster(ctx context.Context, name string) error
}

// Listen creates the control socket in dir, replacing a stale one that a
// supervisor that died left behind. Call it only as the fleet's supervisor.
func Listen(dir string) (net.Listener, error) {
	path := filepath.Join(dir, SocketFile)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control socket %s is longer than the %d bytes a Unix socket path may have; use a shorter --dir", path, maxSocketPath)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("create control socket: %w", err)
	}
	return l, nil
}

// Serve answers requests on l until ctx ends, then waits for the requests
// being answered (their contexts end with ctx) and closes l, which removes the
// socket.
func Serve(ctx context.Context, l net.Listener, clusters Clusters, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /clusters/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		log.Info("control: stop cluster", "cluster", name)
		reply(w, clusters.StopCluster(name))
	})
	mux.HandleFunc("POST /clusters/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		log.Info("control: start cluster", "cluster", name)
		ctx, cancel := context.WithTimeout(r.Context(), startTimeout)
		defer cancel()
		reply(w, clusters.StartCluster(ctx, name))
	})
	srv := &http.Server{
		Handler:           mux,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 5 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	// States: serving → shutting down, when ctx ends or Serve fails.
	select {
	case err := <-served:
		return fmt.Errorf("serve control socket: %w", err)
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(shutdown)
		<-served
		return err
	}
}

func reply(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// StopCluster asks the supervisor of the fleet in dir to stop cluster name.
func StopCluster(ctx context.Context, dir, name string) error {
	return request(ctx, dir, name, "stop")
}

// StartCluster asks the supervisor of the fleet in dir to start cluster name
// again, and returns once it is ready.
func StartCluster(ctx context.Context, dir, name string) error {
	return request(ctx, dir, name, "start")
}

func request(ctx context.Context, dir, name, action string) error {
	path := filepath.Join(dir, SocketFile)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	// The host is a placeholder: the connection goes to the socket.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localfleet/clusters/"+url.PathEscape(name)+"/"+action, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s cluster %s: reach the supervisor at %s: %w", action, name, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s cluster %s: read the supervisor's answer: %w", action, name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(strings.TrimSpace(string(body)))
	}
	return nil
}
