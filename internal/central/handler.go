package central

import (
	"net/http"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
)

// DefaultSendTimeout bounds one write to an agent's stream. An agent that
// stops reading (alive, but stuck) holds a send at most this long; then its
// stream is reset and the agent must reconnect, so it pins no goroutine and
// no memory, and cannot hold up a shutdown.
const DefaultSendTimeout = 30 * time.Second

// WithSendTimeout bounds one write to an agent's stream (DefaultSendTimeout).
func WithSendTimeout(d time.Duration) Option { return func(c *Central) { c.sendTimeout = d } }

// compressMinBytes: messages to agents smaller than this go uncompressed.
const compressMinBytes = 1024

// Handler returns the AgentService's path and handler, built with opts
// (the API edge's: limits, interceptors), with the send timeout applied to
// every write. Mount it with apiserver.Server.Mount, never bare.
func (c *Central) Handler(opts ...connect.HandlerOption) (string, http.Handler) {
	// Bundle deltas, acknowledgements' answers and credentials are small:
	// only whole bundles are worth compressing.
	path, h := agentv1connect.NewAgentServiceHandler(c, append(opts, connect.WithCompressMinBytes(compressMinBytes))...)
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: c.sendTimeout}, r)
	})
}

// deadlineWriter bounds every write and flush with a deadline, and clears
// it once the write is done: a deadline left behind would reset an idle
// stream when it passes (HTTP/2 enforces it per stream, write or not).
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	defer w.rc.SetWriteDeadline(time.Time{})
	return w.ResponseWriter.Write(p)
}

func (w *deadlineWriter) Flush() {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	defer w.rc.SetWriteDeadline(time.Time{})
	w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
