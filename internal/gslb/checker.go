package gslb

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Checker probes every entry point of every record set with a health check,
// one loop per entry point, and keeps each one's health with its
// thresholds. Before every probe it asks its Guard, and it never probes an
// entry point the guard refuses. It is safe for concurrent use.
type Checker struct {
	client   *http.Client
	guard    Guard
	onChange func(t Target, healthy bool)

	mu     sync.Mutex
	loops  map[Target]*probeLoop
	health map[Target]*health
}

// Guard says whether the checker may probe addr, an entry point of one
// record set in clusters (their FQNs): "" when it may, else why not, in
// words for the record set's status ("a loopback address"). It is called
// before every probe, from the probe loops at once.
type Guard func(addr netip.Addr, clusters []string) string

type probeLoop struct {
	stop     context.CancelFunc
	check    Check
	host     string
	clusters []string // FQNs of the clusters the address is an entry point of
}

func (l probeLoop) same(o probeLoop) bool {
	return l.check == o.check && l.host == o.host && slices.Equal(l.clusters, o.clusters)
}

// health is an entry point's state: healthy, and the run of results that
// may change it.
type health struct {
	healthy          bool
	fails, successes int
	last             time.Time
	lastErr          string
	refused          string   // why the guard refused the last probe; "" when it ran
	history          []Change // the last historyLen changes, oldest first
}

// historyLen is how many health changes an entry point remembers.
const historyLen = 5

// Change is an entry point turning healthy or unhealthy.
type Change struct {
	At      time.Time
	Healthy bool
	Error   string // the failed probe's, when it turned unhealthy
}

// NewChecker returns a checker that probes what guard allows; onChange,
// when set, is called (outside any lock) whenever an entry point turns
// healthy or unhealthy. Probes go straight to the entry point: no proxy of
// the environment, no redirect followed.
func NewChecker(guard Guard, onChange func(t Target, healthy bool)) *Checker {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	return &Checker{
		client: &http.Client{Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		guard:    guard,
		onChange: onChange,
		loops:    map[Target]*probeLoop{},
		health:   map[Target]*health{},
	}
}

// Sync starts a probe loop for every checked entry point of cfg that has
// none (or whose check changed) and stops those cfg no longer has. The
// loops end with ctx.
func (c *Checker) Sync(ctx context.Context, cfg Config) {
	want := map[Target]probeLoop{}
	for _, rs := range cfg.Records {
		if rs.Check == nil {
			continue
		}
		for _, e := range rs.EntryPoints {
			t := Target{Record: rs.FQN, Address: e.Address}
			w := want[t]
			w.check, w.host = *rs.Check, strings.TrimSuffix(rs.Hostname, ".")
			if cl := ClusterFQN(rs.FQN, e.Cluster); !slices.Contains(w.clusters, cl) {
				w.clusters = append(w.clusters, cl)
			}
			want[t] = w
		}
	}
	for t, w := range want {
		slices.Sort(w.clusters)
		want[t] = w
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, l := range c.loops {
		if w, ok := want[t]; !ok || !w.same(*l) {
			l.stop()
			delete(c.loops, t)
			if !ok {
				delete(c.health, t)
			}
		}
	}
	for t, w := range want {
		if _, running := c.loops[t]; running {
			continue
		}
		lctx, stop := context.WithCancel(ctx)
		l := &probeLoop{stop: stop, check: w.check, host: w.host, clusters: w.clusters}
		c.loops[t] = l
		if c.health[t] == nil {
			c.health[t] = &health{healthy: true}
		}
		go c.run(lctx, t, *l)
	}
}

// Healthy reports whether an entry point counts as healthy: true until its
// check has failed UnhealthyThreshold times in a row, false from then until
// it has passed HealthyThreshold times in a row. An unchecked one is
// healthy.
func (c *Checker) Healthy(t Target) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.health[t]
	return h == nil || h.healthy
}

// State is an entry point's health as last probed, and its last changes.
type State struct {
	Healthy bool
	Last    time.Time // the last probe; zero before the first
	Error   string
	// Refused says why the last probe was not made (the Guard's words);
	// the entry point then counts as unchecked: healthy.
	Refused string
	History []Change
}

// State returns an entry point's health; ok is false when it is not probed.
func (c *Checker) State(t Target) (State, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.health[t]
	if h == nil {
		return State{}, false
	}
	return State{Healthy: h.healthy, Last: h.last, Error: h.lastErr, Refused: h.refused, History: slices.Clone(h.history)}, true
}

func (c *Checker) run(ctx context.Context, t Target, l probeLoop) {
	tick := time.NewTicker(l.check.Interval)
	defer tick.Stop()
	for {
		if why := c.guard(t.Address, l.clusters); why != "" {
			c.refuse(t, why)
		} else {
			err := c.probe(ctx, t, l)
			if ctx.Err() != nil {
				return
			}
			c.record(t, l.check, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe makes one request: GET http://<address>:<port><path>, Host the
// hostname; any 2xx or 3xx passes.
func (c *Checker) probe(ctx context.Context, t Target, l probeLoop) error {
	ctx, cancel := context.WithTimeout(ctx, l.check.Timeout)
	defer cancel()
	url := "http://" + net.JoinHostPort(t.Address.String(), strconv.Itoa(int(l.check.Port))) + l.check.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = l.host
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return &statusError{code: resp.StatusCode}
	}
	return nil
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "HTTP " + strconv.Itoa(e.code) }

// refuse records that the guard refused to probe t: it counts as unchecked
// (healthy) and its run of results starts over.
func (c *Checker) refuse(t Target, why string) {
	c.mu.Lock()
	h := c.health[t]
	if h == nil {
		c.mu.Unlock()
		return
	}
	turned := !h.healthy
	h.healthy, h.fails, h.successes, h.lastErr, h.refused = true, 0, 0, "", why
	c.mu.Unlock()
	if turned && c.onChange != nil {
		c.onChange(t, true)
	}
}

// record applies one probe result to the entry point's health.
func (c *Checker) record(t Target, check Check, err error) {
	c.mu.Lock()
	h := c.health[t]
	if h == nil {
		c.mu.Unlock()
		return // the entry point went away meanwhile
	}
	was := h.healthy
	h.last, h.refused = time.Now(), ""
	if err != nil {
		h.fails, h.successes, h.lastErr = h.fails+1, 0, err.Error()
		if h.fails >= check.UnhealthyThreshold {
			h.healthy = false
		}
	} else {
		h.fails, h.successes, h.lastErr = 0, h.successes+1, ""
		if h.successes >= check.HealthyThreshold {
			h.healthy = true
		}
	}
	now := h.healthy
	if now != was {
		h.history = append(h.history, Change{At: h.last, Healthy: now, Error: h.lastErr})
		if len(h.history) > historyLen {
			h.history = h.history[len(h.history)-historyLen:]
		}
	}
	c.mu.Unlock()
	if now != was && c.onChange != nil {
		c.onChange(t, now)
	}
}
