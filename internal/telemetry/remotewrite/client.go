package remotewrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// ErrPermanent matches the error of a request the receiver refused for
// good: any 4xx but 429, or another status that is neither success nor
// retryable. errors.As with *HTTPError gives the status.
var ErrPermanent = errors.New("remote write: permanent failure")

// HTTPError is a response other than 2xx.
type HTTPError struct {
	StatusCode int
	Body       string // its start, for the log
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("status %d: %s", e.StatusCode, e.Body)
}

// Client posts remote-write requests to one URL. It is safe for concurrent
// use.
type Client struct {
	url        string
	http       *http.Client
	token      func(context.Context) (string, error)
	userAgent  string
	minBackoff time.Duration
	maxBackoff time.Duration
	sleep      func(context.Context, time.Duration) error // tests replace it
}

// Option configures a Client.
type Option func(*Client)

// WithToken sets the function that gives the bearer token of each attempt;
// an error from it is retried like a network error.
func WithToken(token func(context.Context) (string, error)) Option {
	return func(c *Client) { c.token = token }
}

// WithBackoff sets the first retry delay and its cap (defaults 30ms and 5s,
// Prometheus's own).
func WithBackoff(first, maxDelay time.Duration) Option {
	return func(c *Client) { c.minBackoff, c.maxBackoff = first, maxDelay }
}

// WithUserAgent sets the User-Agent header (default "flotilla").
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// NewClient returns a Client that posts to url over hc.
func NewClient(url string, hc *http.Client, opts ...Option) *Client {
	c := &Client{
		url:        url,
		http:       hc,
		userAgent:  "flotilla",
		minBackoff: 30 * time.Millisecond,
		maxBackoff: 5 * time.Second,
		sleep:      sleep,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Send posts one encoded request (see Encode), retrying as the protocol
// allows until it succeeds, fails permanently (the error matches
// ErrPermanent), or ctx ends (the error matches ctx's).
func (c *Client) Send(ctx context.Context, body []byte) error {
	backoff := c.minBackoff
	for attempt := 1; ; attempt++ {
		wait, err := c.post(ctx, body)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrPermanent) {
			return fmt.Errorf("remote write to %s: %w", c.url, err)
		}
		if wait < 0 {
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, c.maxBackoff)
		}
		if serr := c.sleep(ctx, wait); serr != nil {
			return fmt.Errorf("remote write to %s: %w after %d attempts, the last: %w", c.url, serr, attempt, err)
		}
	}
}

// post makes one attempt. A retryable failure comes with the delay the
// receiver asked for, or -1 for none.
func (c *Client) post(ctx context.Context, body []byte) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrPermanent, err)
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	if c.token != nil {
		tok, err := c.token(ctx)
		if err != nil {
			return -1, fmt.Errorf("token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return -1, err
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode/100 == 2 {
		return 0, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	herr := &HTTPError{StatusCode: resp.StatusCode, Body: string(bytes.TrimSpace(msg))}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5 {
		return retryAfter(resp.Header.Get("Retry-After")), herr
	}
	return 0, fmt.Errorf("%w: %w", ErrPermanent, herr)
}

// retryAfter reads a Retry-After header, in seconds or as an HTTP date; -1
// when absent or unreadable.
func retryAfter(v string) time.Duration {
	if v == "" {
		return -1
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t))
	}
	return -1
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
