package statusstore

import (
	"fmt"
	"testing"
	"time"
)

// Over budget, a flush writes the clusters whose connection changed first,
// then those unwritten the longest; the rest wait for the next flush.
// Within budget, every changed cluster is written.
func TestStatusBodiesOverBudgetGoOldestFirstAfterConnectionChanges(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	var changed []bodyCandidate
	for i := range 10 {
		changed = append(changed, bodyCandidate{fqn: fmt.Sprintf("c%d", i), written: t0.Add(time.Duration(10-i) * time.Second)})
	}
	changed[2].urgent = true // c2 disconnected since its last body
	now, later := withinBudget(changed, 4)
	var got []string
	for _, x := range now {
		got = append(got, x.fqn)
	}
	if fmt.Sprint(got) != "[c2 c9 c8 c7]" || len(later) != 6 {
		t.Fatalf("written now %v, later %d; want [c2 c9 c8 c7] and 6", got, len(later))
	}
	if now, later := withinBudget(changed[:3], 4); len(now) != 3 || len(later) != 0 {
		t.Fatalf("within budget: %d now, %d later", len(now), len(later))
	}
}
