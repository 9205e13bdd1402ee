package central

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the central control plane's own numbers, on the server's /metrics.
type metrics struct {
	sends     prometheus.Counter
	deltas    prometheus.Counter
	resyncs   prometheus.Counter
	recompute prometheus.Histogram
	discovery prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		sends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_central_bundles_sent_total",
			Help: "Bundles sent to agents (only versions an agent did not have).",
		}),
		deltas: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_central_bundle_deltas_sent_total",
			Help: "Bundles sent as deltas against the version the stream delivered before (also counted in flotilla_central_bundles_sent_total).",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_central_runtime_resyncs_total",
			Help: "Full runtime reports asked of agents because a delta was out of sequence or a digest differed.",
		}),
		recompute: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flotilla_central_recompute_seconds",
			Help:    "Time to apply a batch of intent changes to the index and rehash the affected clusters' bundles (or to reload it whole).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		discovery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flotilla_central_discovery_update_seconds",
			Help:    "Time to bring the multicluster slices up to a burst of registry or input changes (a rebuild, or the changed services' parts only).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
}

// Register adds the central control plane's metrics to r: bundle sends,
// recompute time, and, read at scrape time, the connected agents and the
// clusters that have not acknowledged their latest bundle.
func (c *Central) Register(r prometheus.Registerer) error {
	gauge := func(name, help string, count func(*cluster) bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			n := 0
			for _, cl := range c.clusters {
				if count(cl) {
					n++
				}
			}
			return float64(n)
		})
	}
	for _, col := range []prometheus.Collector{
		c.metrics.sends, c.metrics.deltas, c.metrics.resyncs, c.metrics.recompute, c.metrics.discovery,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_central_bundles_failing", Help: "1 while some bundles cannot be computed (see /readyz, status and the server log), else 0."}, func() float64 {
			return boolFloat(c.Health() != nil)
		}),
		gauge("flotilla_central_connected_agents", "Agents with a live stream.", func(cl *cluster) bool { return cl.conn != nil }),
		gauge("flotilla_central_clusters", "Clusters known to the central control plane.", func(*cluster) bool { return true }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_central_clusters_behind", Help: "Clusters whose agent has not acknowledged their latest bundle."}, func() float64 {
			return float64(c.status.Behind()) // under the status store's lock, not c.mu
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_central_revision", Help: "Store revision the bundles reflect."}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(c.rev)
		}),
	} {
		if err := r.Register(col); err != nil {
			return err
		}
	}
	return nil
}

func (c *Central) observeRecompute(start time.Time) {
	c.metrics.recompute.Observe(time.Since(start).Seconds())
}
