package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// serveHealth answers the kubelet's probes on ln until ctx ends:
//   - /healthz: the process serves (liveness). It never depends on the
//     management plane: an outage upstream must not restart every agent,
//     which then keeps its cluster converged from the stored bundle.
//   - /readyz: the agent has its CRD and namespaces, and its informers of
//     the cluster have synced, so that it can reconcile from the stored
//     bundle. Again nothing upstream.
func (a *Agent) serveHealth(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent: health listener: %w", err)
	}
	return nil
}

// ready reports why the agent cannot reconcile yet, or nil.
func (a *Agent) ready() error {
	if !a.started.Load() {
		return errors.New("starting: installing the Bundle CRD and the agent's namespaces")
	}
	if _, ok := a.inv.namespaces(); !ok || !a.rt.synced() {
		return errors.New("starting: the informers of the cluster have not synced")
	}
	return nil
}
