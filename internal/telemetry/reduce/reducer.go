package reduce

import (
	"maps"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/prompb"
)

// Reducer sums the increases of raw series from many scrape targets into
// reduced series for one cluster. It is safe for concurrent use.
type Reducer struct {
	cluster   string
	maxSeries int

	mu      sync.Mutex
	targets map[string]*target
	series  map[string]*series // by key of its labels
	dropped map[string]uint64  // samples refused by the budget, by family
	invalid uint64
}

// target is what the Reducer remembers of one scrape target: its latest
// scrape, and nothing older.
type target struct {
	last     map[string]rawState // by key of the raw series
	inScope  int
	observed int64 // ms
}

// rawState is a raw series' value in the latest scrape, and the reduced
// series its increases go into.
type rawState struct {
	value float64
	into  *series
}

type series struct {
	labels  []prompb.Label
	value   float64
	updated int64 // ms
}

// Stats are the sizes a benchmark compares before and after reduction.
type Stats struct {
	// RawSeries counts the in-scope series in the latest scrape of every
	// target the Reducer knows.
	RawSeries int
	// ReducedSeries counts the series Snapshot returns.
	ReducedSeries int
	// Invalid counts the samples skipped since New because their value was
	// negative, infinite or NaN, which no cumulative metric can be.
	Invalid uint64
}

// New returns a Reducer for the named cluster that holds at most maxSeries
// reduced series; maxSeries <= 0 means no budget.
func New(cluster string, maxSeries int) *Reducer {
	return &Reducer{
		cluster:   cluster,
		maxSeries: maxSeries,
		targets:   map[string]*target{},
		series:    map[string]*series{},
		dropped:   map[string]uint64{},
	}
}

// Observe takes one complete scrape of the named target taken at ts (ms since
// the epoch). Samples outside Istio's standard metrics are ignored. A raw
// series seen in the target's previous scrape adds its increase since then,
// or its whole value if it went down (the proxy restarted); a raw series
// first seen adds its whole value. A raw series is identified by its name and
// all its labels, so one federated scrape holding many proxies works too.
// Raw series absent from this scrape are forgotten, so a failed scrape must
// not be passed as an empty one.
//
// A sample whose reduced series does not exist yet is admitted only if the
// budget has room; otherwise it is dropped and counted in Dropped. Existing
// series keep updating. The series of one histogram (same labels but le) are
// admitted or refused together, so no histogram is stored with some of its
// buckets missing.
func (r *Reducer) Observe(name string, samples []Sample, ts int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var prev map[string]rawState
	if t := r.targets[name]; t != nil {
		prev = t.last
	}
	t := &target{last: make(map[string]rawState, len(prev)), observed: ts}
	r.targets[name] = t

	pending := map[string]*group{}
	for _, s := range samples {
		family, ok := families[s.Name]
		if !ok {
			continue
		}
		t.inScope++
		if s.Value < 0 || math.IsNaN(s.Value) || math.IsInf(s.Value, 0) {
			r.invalid++
			continue
		}
		rk := key(s.Name, s.Labels)
		if _, dup := t.last[rk]; dup {
			continue
		}
		if p, ok := prev[rk]; ok {
			p.into.add(increase(p.value, s.Value), ts)
			t.last[rk] = rawState{value: s.Value, into: p.into}
			continue
		}
		ls := reducedLabels(r.cluster, s.Name, s.Labels, strings.HasSuffix(s.Name, "_bucket"))
		sk := labelsKey(ls)
		if out, ok := r.series[sk]; ok {
			out.add(s.Value, ts)
			t.last[rk] = rawState{value: s.Value, into: out}
			continue
		}
		gk := groupKey(family, ls)
		g := pending[gk]
		if g == nil {
			g = &group{family: family, series: map[string][]prompb.Label{}}
			pending[gk] = g
		}
		g.series[sk] = ls
		g.members = append(g.members, member{rawKey: rk, seriesKey: sk, value: s.Value})
	}

	for _, gk := range slices.Sorted(maps.Keys(pending)) {
		g := pending[gk]
		if r.maxSeries > 0 && len(r.series)+len(g.series) > r.maxSeries {
			r.dropped[g.family] += uint64(len(g.members))
			continue
		}
		for sk, ls := range g.series {
			r.series[sk] = &series{labels: ls, updated: ts}
		}
		for _, m := range g.members {
			out := r.series[m.seriesKey]
			out.add(m.value, ts)
			t.last[m.rawKey] = rawState{value: m.value, into: out}
		}
	}
}

// group is the new reduced series of one histogram (or one counter) met in
// a scrape, with the raw samples that go into them.
type group struct {
	family  string
	series  map[string][]prompb.Label
	members []member
}

type member struct {
	rawKey, seriesKey string
	value             float64
}

func (s *series) add(v float64, ts int64) {
	s.value += v
	s.updated = max(s.updated, ts)
}

func increase(last, now float64) float64 {
	if now < last {
		return now
	}
	return now - last
}

// Forget drops what the Reducer remembers of a target that is gone. The
// reduced series it added to keep their totals.
func (r *Reducer) Forget(target string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.targets, target)
}

// Expire forgets the targets not observed since before (ms), and removes the
// reduced series not updated since then, freeing their room in the budget.
// A removed series that comes back starts again from zero, which the store
// sees as a counter reset.
func (r *Reducer) Expire(before int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.DeleteFunc(r.targets, func(_ string, t *target) bool { return t.observed < before })
	maps.DeleteFunc(r.series, func(_ string, s *series) bool { return s.updated < before })
}

// Snapshot returns every reduced series with its current value, stamped with
// the time of the latest scrape that updated it, sorted by labels. Labels are
// sorted by name, as remote write requires. The caller owns the result.
func (r *Reducer) Snapshot() []prompb.TimeSeries {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]prompb.TimeSeries, 0, len(r.series))
	for _, sk := range slices.Sorted(maps.Keys(r.series)) {
		s := r.series[sk]
		out = append(out, prompb.TimeSeries{
			Labels:  slices.Clone(s.labels),
			Samples: []prompb.Sample{{Value: s.value, Timestamp: s.updated}},
		})
	}
	return out
}

// Dropped returns, by metric family, how many samples the series budget has
// refused since New. The caller owns the result.
func (r *Reducer) Dropped() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.dropped)
}

// Stats returns the Reducer's current sizes.
func (r *Reducer) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{ReducedSeries: len(r.series), Invalid: r.invalid}
	for _, t := range r.targets {
		st.RawSeries += t.inScope
	}
	return st
}

// key identifies a raw series by its name and all its labels. The separator
// 0xff never occurs in valid UTF-8.
func key(name string, ls map[string]string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, n := range slices.Sorted(maps.Keys(ls)) {
		b.WriteString("\xff" + n + "\xff" + ls[n])
	}
	return b.String()
}

func labelsKey(ls []prompb.Label) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.Name + "\xff" + l.Value + "\xff")
	}
	return b.String()
}

// groupKey identifies the histogram (or counter) a reduced series belongs to:
// its family and its labels but __name__ and le.
func groupKey(family string, ls []prompb.Label) string {
	var b strings.Builder
	b.WriteString(family + "\xff")
	for _, l := range ls {
		if l.Name != model.MetricNameLabel && l.Name != model.BucketLabel {
			b.WriteString(l.Name + "\xff" + l.Value + "\xff")
		}
	}
	return b.String()
}
