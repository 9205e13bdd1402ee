// Package reduce turns the samples scraped from Istio's proxies into the
// few series a fleet needs, the reduction Istio's production guidance does
// with recording rules, done in the agent before anything leaves the cluster.
//
//	proxy /stats/prometheus ─┐
//	cluster Prometheus /federate ─┴─▶ Parse ──▶ Reducer.Observe(target, samples, ts)
//	                                              │ drop pod, instance and IP labels,
//	                                              │ collapse response_code, add cluster,
//	                                              │ sum monotonic increases per key,
//	                                              │ admit new series within the budget
//	                                              ▼
//	                                  Reducer.Snapshot ──▶ []prompb.TimeSeries (remote write)
//
// Every metric in scope is cumulative (counters and histogram buckets, sums
// and counts), so the Reducer sums increases rather than raw values: it
// remembers the last value of every raw series per scrape target, and a raw
// value below the last one is a restart of that proxy, whose new value is all
// increase. Reduced series therefore stay monotonic when proxies restart or
// disappear, and rate() over them equals the sum of the proxies' rates.
//
// The Reducer's memory holds only the latest scrape of each live target and
// at most the budgeted number of reduced series. Its state is not persisted:
// an agent restart starts every reduced series again from the sum of the
// proxies' current values, which the store sees as one counter reset.
package reduce
