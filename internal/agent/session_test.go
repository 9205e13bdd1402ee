package agent

import (
	"testing"
	"time"
)

func TestBackoffGrowsExponentiallyWithJitterAndACap(t *testing.T) {
	seen := map[time.Duration]bool{}
	for n := range 20 {
		base := minBackoff << min(n, 10)
		if base > maxBackoff {
			base = maxBackoff
		}
		for range 50 {
			d := backoff(n)
			if d < time.Duration(float64(base)*0.8) || d > time.Duration(float64(base)*1.2) {
				t.Fatalf("backoff(%d) = %s, outside ±20%% of %s", n, d, base)
			}
			if n == 0 {
				seen[d] = true
			}
		}
	}
	if len(seen) < 10 {
		t.Fatalf("backoff(0) took only %d distinct values in 50 draws: no jitter", len(seen))
	}
}
