package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `flotilla cluster revoke` ends a running agent's stream at once: the
// agent stops, saying why, its cluster keeps what it has, and onboarding
// the cluster again lets the agent back in with a new key.
func TestRevokingAClusterStopsItsAgentAndAnotherOnboardingLetsItBackIn(t *testing.T) {
	c1 := clusters(t)[0]
	c1.reset(t, "payments")
	c1.runWorkloads(t, quickstartWorkloads(8080)...)
	dir := t.TempDir()
	s := startServer(t, dir)
	applyHost(t, s, "revoke.example.com")
	onboard := func() {
		t.Helper()
		token := strings.TrimSpace(s.must("cluster", "onboard", c1.name))
		if err := os.WriteFile(filepath.Join(dir, "c1.token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start := func() *process {
		return startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c1.name, "--token-file", filepath.Join(dir, "c1.token"), "--kubeconfig", c1.kubeconfig)
	}
	connected := func(want int) func() error {
		return func() error {
			if n := connectedAgents(t, s); n != want {
				return fmt.Errorf("%d agents connected", n)
			}
			return nil
		}
	}
	onboard()
	agent := start()
	eventually(t, 30*time.Second, "the agent connects", connected(1))

	out := s.must("cluster", "revoke", c1.name)
	if !strings.Contains(out, "revoked") || !strings.Contains(out, "its agent's stream ended") {
		t.Fatalf("cluster revoke said: %s", out)
	}
	if n := connectedAgents(t, s); n != 0 {
		t.Fatalf("%d agents connected right after the revoke", n)
	}
	select {
	case <-agent.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent still runs after its credential was revoked:\n%s", agent.log)
	}
	if log := agent.log.String(); !strings.Contains(log, "revoked") || !strings.Contains(log, "cluster onboard --force") {
		t.Fatalf("the agent's last words do not say why or what to do:\n%s", log)
	}
	// The cluster and its intent stay; a new onboarding lets the agent in.
	if r := s.flotilla("", "get", "cluster", c1.name); r.code != 0 {
		t.Fatalf("the cluster after the revoke: %+v", r)
	}
	onboard()
	start()
	eventually(t, 30*time.Second, "the agent is back after a new onboarding", connected(1))
	analyzeClusters(t, c1)
}
