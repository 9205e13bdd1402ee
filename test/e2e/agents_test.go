package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// onboard onboards cluster c on s, writes its join token to
// <dir>/<cluster>.token and starts its agent, dialling servers (s alone
// when there are none). It returns the agent and the arguments it was
// started with, for tests that restart it.
func (s *server) onboard(t *testing.T, dir string, c *kcluster, servers ...string) (*process, []string) {
	t.Helper()
	token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
	file := filepath.Join(dir, c.name+".token")
	if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if len(servers) == 0 {
		servers = []string{s.url}
	}
	args := []string{"agent", "--server", strings.Join(servers, ","), "--cluster", c.name, "--token-file", file, "--kubeconfig", c.kubeconfig}
	return startProcess(t, dir, nil, args...), args
}

// startAgents onboards each cluster on s and starts its agent, by cluster
// name.
func (s *server) startAgents(t *testing.T, dir string, cs ...*kcluster) map[string]*process {
	t.Helper()
	agents := make(map[string]*process, len(cs))
	for _, c := range cs {
		agents[c.name], _ = s.onboard(t, dir, c)
	}
	return agents
}
