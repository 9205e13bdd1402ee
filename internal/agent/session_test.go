package agent

import (
	"testing"
	"time"
)

// The growth, the bounds and the reset after a session are tested through
// the agent's sessions loop (agent_test.go); this is the jitter alone.
func TestBackoffIsJitteredSoAFleetDoesNotReconnectInLockstep(t *testing.T) {
	for _, attempt := range []int{0, 3, 100} {
		seen := map[time.Duration]bool{}
		for range 50 {
			seen[backoff(attempt)] = true
		}
		if len(seen) < 10 {
			t.Fatalf("backoff(%d) took only %d distinct values in 50 draws: no jitter", attempt, len(seen))
		}
	}
}
