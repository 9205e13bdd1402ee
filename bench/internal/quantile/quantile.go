// Package quantile reports the latency quantiles of a benchmark's sample,
// only those the sample's size supports.
package quantile

import (
	"sort"
	"testing"
	"time"
)

// MinP99 is the smallest sample whose 99th percentile is reported as one:
// below it, the sample's largest value is all there is, and it is reported
// as the maximum.
const MinP99 = 100

// Report reports, in milliseconds, the median of lat as <prefix>p50-ms and
// its 99th percentile as <prefix>p99-ms, or, in a sample of fewer than
// MinP99, its largest value as <prefix>max-ms. It sorts lat.
func Report(b *testing.B, prefix string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(lat[(len(lat)-1)/2]), prefix+"p50-ms")
	if len(lat) < MinP99 {
		b.ReportMetric(ms(lat[len(lat)-1]), prefix+"max-ms")
		return
	}
	b.ReportMetric(ms(lat[int(0.99*float64(len(lat)-1))]), prefix+"p99-ms")
}
