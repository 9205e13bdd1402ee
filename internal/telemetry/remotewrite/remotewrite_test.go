package remotewrite

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"

	"flotilla.io/flotilla/internal/telemetry/wal"
)

// batch encodes a request of one series whose label batch is name.
func batch(t *testing.T, name string) []byte {
	t.Helper()
	body, err := Encode([]prompb.TimeSeries{{
		Labels:  []prompb.Label{{Name: "__name__", Value: "istio_requests_total"}, {Name: "batch", Value: name}},
		Samples: []prompb.Sample{{Value: 1, Timestamp: 1000}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// batchName decodes a request made by batch.
func batchName(t *testing.T, r *http.Request) string {
	t.Helper()
	wr, err := Decode(r.Body, 1<<20)
	if err != nil {
		t.Errorf("decode: %v", err)
		return ""
	}
	return wr.Timeseries[0].Labels[1].Value
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func TestSendSetsTheProtocolHeadersAndToken(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if name := batchName(t, r); name != "b1" {
			t.Errorf("received batch %q, want b1", name)
		}
		got <- r.Header.Clone()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client(), WithToken(func(context.Context) (string, error) { return "tok-1", nil }))
	if err := c.Send(context.Background(), batch(t, "b1")); err != nil {
		t.Fatal(err)
	}
	h := <-got
	for name, want := range map[string]string{
		"Authorization":                     "Bearer tok-1",
		"Content-Encoding":                  "snappy",
		"Content-Type":                      "application/x-protobuf",
		"X-Prometheus-Remote-Write-Version": "0.1.0",
		"User-Agent":                        "flotilla",
	} {
		if h.Get(name) != want {
			t.Errorf("header %s = %q, want %q", name, h.Get(name), want)
		}
	}
}

// reply is one scripted answer of the test receiver.
type reply struct {
	status     int
	retryAfter string
	hangUp     bool // close the connection without answering
}

func TestSendRetries(t *testing.T) {
	const first, cap = 10 * time.Millisecond, 40 * time.Millisecond
	tests := []struct {
		name      string
		replies   []reply
		wantPosts int
		wantErr   int // status of the permanent error, 0 for success
		// wantSleeps are the backoff steps: a sleep must lie in [step/2, step].
		// A Retry-After sleep is exact: a step of its value, marked exact.
		wantSleeps []time.Duration
		exact      bool
	}{
		{
			name:       "500 is retried with exponential backoff up to its cap",
			replies:    []reply{{status: 500}, {status: 502}, {status: 503}, {status: 500}, {status: 200}},
			wantPosts:  5,
			wantSleeps: []time.Duration{first, 2 * first, cap, cap},
		},
		{
			name:       "429 is retried after its Retry-After",
			replies:    []reply{{status: 429, retryAfter: "2"}, {status: 200}},
			wantPosts:  2,
			wantSleeps: []time.Duration{2 * time.Second},
			exact:      true,
		},
		{
			name:       "429 without Retry-After backs off",
			replies:    []reply{{status: 429}, {status: 204}},
			wantPosts:  2,
			wantSleeps: []time.Duration{first},
		},
		{
			name:       "a dropped connection is retried",
			replies:    []reply{{hangUp: true}, {status: 200}},
			wantPosts:  2,
			wantSleeps: []time.Duration{first},
		},
		{
			name:      "400 is not retried and is permanent",
			replies:   []reply{{status: 400}, {status: 200}},
			wantPosts: 1,
			wantErr:   400,
		},
		{
			name:      "413 is not retried and is permanent",
			replies:   []reply{{status: 413}, {status: 200}},
			wantPosts: 1,
			wantErr:   413,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			posts := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				mu.Lock()
				rep := tt.replies[min(posts, len(tt.replies)-1)]
				posts++
				mu.Unlock()
				if rep.hangUp {
					conn, _, err := http.NewResponseController(w).Hijack()
					if err != nil {
						t.Error(err)
						return
					}
					conn.Close()
					return
				}
				if rep.retryAfter != "" {
					w.Header().Set("Retry-After", rep.retryAfter)
				}
				w.WriteHeader(rep.status)
			}))
			defer srv.Close()
			c := NewClient(srv.URL, srv.Client(), WithBackoff(first, cap))
			var sleeps []time.Duration
			c.sleep = func(_ context.Context, d time.Duration) error {
				sleeps = append(sleeps, d)
				return nil
			}

			err := c.Send(context.Background(), batch(t, "b"))

			if posts != tt.wantPosts {
				t.Errorf("posts = %d, want %d", posts, tt.wantPosts)
			}
			var herr *HTTPError
			switch {
			case tt.wantErr == 0 && err != nil:
				t.Errorf("send: %v, want success", err)
			case tt.wantErr != 0 && (!errors.Is(err, ErrPermanent) || !errors.As(err, &herr) || herr.StatusCode != tt.wantErr):
				t.Errorf("send: %v, want a permanent error with status %d", err, tt.wantErr)
			}
			if len(sleeps) != len(tt.wantSleeps) {
				t.Fatalf("sleeps %v, want %d of them", sleeps, len(tt.wantSleeps))
			}
			for i, step := range tt.wantSleeps {
				if tt.exact && sleeps[i] != step || !tt.exact && (sleeps[i] < step/2 || sleeps[i] > step) {
					t.Errorf("sleep %d = %v, want step %v (exact %v)", i, sleeps[i], step, tt.exact)
				}
			}
		})
	}
}

func TestSendStopsWhenTheContextEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client())
	ctx, cancel := context.WithCancel(context.Background())
	retries := 0
	c.sleep = func(ctx context.Context, _ time.Duration) error {
		if retries++; retries == 3 {
			cancel()
		}
		return ctx.Err()
	}
	err := c.Send(ctx, batch(t, "b"))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrPermanent) {
		t.Errorf("send: %v, want context.Canceled and not permanent", err)
	}
	if retries != 3 {
		t.Errorf("retries = %d, want 3", retries)
	}
}

func TestRetryAfter(t *testing.T) {
	for v, want := range map[string]time.Duration{
		"": -1, "0": 0, "7": 7 * time.Second, "-3": -1, "soon": -1,
		"Mon, 02 Jan 2006 15:04:05 GMT": 0, // in the past
	} {
		if got := retryAfter(v); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestDecode(t *testing.T) {
	series := []prompb.TimeSeries{{
		Labels:  []prompb.Label{{Name: "__name__", Value: "up"}, {Name: "cluster", Value: "east"}},
		Samples: []prompb.Sample{{Value: 1, Timestamp: 5}, {Value: 2, Timestamp: 6}},
	}}
	body, err := Encode(series)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := Decode(bytes.NewReader(body), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(series, wr.Timeseries); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	bomb := snappy.Encode(nil, make([]byte, 1<<20)) // a few KiB that inflate to 1 MiB
	tests := []struct {
		name  string
		body  []byte
		limit int64
		want  error
	}{
		{"a body over the limit", body, int64(len(body)) - 1, ErrTooLarge},
		{"a body that inflates over the limit", bomb, 64 << 10, ErrTooLarge},
		{"a body that is not snappy", []byte("\xff\xff\xff\xff\xff\xff"), 1 << 20, ErrMalformed},
		{"snappy that is not a write request", snappy.Encode(nil, []byte("\xff\xff\xff")), 1 << 20, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode(bytes.NewReader(tt.body), tt.limit); !errors.Is(err, tt.want) {
				t.Errorf("decode: %v, want %v", err, tt.want)
			}
		})
	}
}

// receiver is a remote-write endpoint that is down (503) until up is
// closed, refuses the batches named in refuse with 400, and reports every
// batch it accepts on accepted.
type receiver struct {
	t        *testing.T
	up       chan struct{}
	down     chan struct{} // a token per refused attempt while down
	refuse   map[string]bool
	accepted chan string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := batchName(rc.t, r)
	select {
	case <-rc.up:
	default:
		select {
		case rc.down <- struct{}{}:
		default:
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if rc.refuse[name] {
		http.Error(w, "out of bounds", http.StatusBadRequest)
		return
	}
	rc.accepted <- name
}

// ackedQueue reports each Ack of the real queue it wraps.
type ackedQueue struct {
	*wal.Queue
	acked chan uint64
}

func (q ackedQueue) Ack(seq uint64) error {
	err := q.Queue.Ack(seq)
	q.acked <- seq
	return err
}

func TestSenderDrainsTheQueueInOrderAfterTheReceiverComesBackAndDropsARefusedBatch(t *testing.T) {
	walq, err := wal.Open(t.TempDir(), wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer walq.Close()
	q := ackedQueue{Queue: walq, acked: make(chan uint64, 16)}
	var want []string
	for i := range 5 {
		want = append(want, "b"+strconv.Itoa(i))
		if err := q.Append(batch(t, want[i])); err != nil {
			t.Fatal(err)
		}
	}
	rc := &receiver{t: t, up: make(chan struct{}), down: make(chan struct{}), refuse: map[string]bool{"b2": true}, accepted: make(chan string)}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	s := NewSender(q, NewClient(srv.URL, srv.Client(), WithBackoff(time.Millisecond, 5*time.Millisecond)), slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- s.Start(ctx) }()

	// The receiver is down: the sender retries the oldest batch.
	for range 3 {
		<-rc.down
	}
	close(rc.up)
	var got []string
	for range 4 {
		got = append(got, <-rc.accepted)
	}
	// A batch appended while the sender waits is sent too.
	if err := q.Append(batch(t, "b5")); err != nil {
		t.Fatal(err)
	}
	got = append(got, <-rc.accepted)
	var acked []uint64
	for range 6 {
		acked = append(acked, <-q.acked)
	}
	cancel()
	if err := <-stopped; err != nil {
		t.Errorf("start: %v", err)
	}

	want = append(want[:2:2], "b3", "b4", "b5") // b2 refused for good
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("accepted batches (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{0, 1, 2, 3, 4, 5}, acked); diff != "" {
		t.Errorf("acked batches (-want +got):\n%s", diff)
	}
	if s.Dropped() != 1 {
		t.Errorf("dropped = %d, want 1 (b2)", s.Dropped())
	}
	if st := q.Stats(); st.Pending != 0 {
		t.Errorf("queue still holds %d batches", st.Pending)
	}
}
