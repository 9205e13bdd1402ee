package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The web UI in a real browser: web/tests/ui.mjs (Playwright driving
// Chromium) logs in to a real server with two local-fleet clusters and
// their agents, sees both connected and in sync, applies the quickstart
// through the editor after its plan, watches both clusters reach Applied
// without a reload, is refused an invalid edit with its field path, is
// shown the conflict of a stale etag, opens a cluster's page by its deep
// link and its compiled objects, goes back, reads the audit entry of a
// drain with its field diff, and sees a cluster go disconnected without a
// reload when this test stops its agent. Screenshots go to
// $FLOTILLA_UI_SCREENSHOTS when set (docs/ui is made that way), else to a
// temporary directory.
func TestWebUIInARealBrowser(t *testing.T) {
	if _, err := os.Stat(filepath.Join(repoRoot, "internal", "ui", "static", "app", "index.html")); err != nil {
		t.Fatalf("the web UI is not built (%v): run `make ui` (make test does)", err)
	}
	if _, err := os.Stat(filepath.Join(repoRoot, "web", "node_modules", "playwright-core")); err != nil {
		t.Fatalf("playwright-core is not installed (%v): run `make ui` (npm ci in web/)", err)
	}
	cs := clusters(t)
	for _, c := range cs[:2] {
		c.reset(t, "payments")
	}
	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/fleet.yaml") // the clusters; the browser applies the quickstart
	agents := map[string]*process{}
	for _, c := range cs[:2] {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.name))
		file := filepath.Join(dir, c.name+".token")
		if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		agents[c.name] = startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.name, "--token-file", file, "--kubeconfig", c.kubeconfig)
	}
	s.must("cluster", "drain", "c1") // an update with a field diff for the audit page
	s.must("cluster", "undrain", "c1")
	credential, err := os.ReadFile(bootstrapFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	shots := os.Getenv("FLOTILLA_UI_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}

	cmd := exec.Command("node", "tests/ui.mjs")
	cmd.Dir = filepath.Join(repoRoot, "web")
	cmd.Env = append(os.Environ(), "FLOTILLA_URL="+s.url, "FLOTILLA_CREDENTIAL="+strings.TrimSpace(string(credential)), "FLOTILLA_SCREENSHOTS="+shots)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(3*time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(&out, line)
		switch {
		case strings.HasPrefix(line, "STOP "):
			agents[strings.TrimPrefix(line, "STOP ")].stop()
			_, _ = io.WriteString(stdin, "stopped\n")
		case line == "TOUCH": // someone else's write, between the browser's load and its save
			q, err := os.ReadFile(filepath.Join(repoRoot, "examples", "quickstart.yaml"))
			if err != nil {
				t.Error(err)
			}
			touched := strings.Replace(string(q), "  group: payments-gateway\nspec:", "  group: payments-gateway\n  labels: {touched: \"yes\"}\nspec:", 1)
			if r := s.flotilla(touched, "apply", "-f", "-"); r.code != 0 || touched == string(q) {
				t.Errorf("the concurrent write: %+v", r)
			}
			_, _ = io.WriteString(stdin, "touched\n")
		case strings.HasPrefix(line, "METRIC "):
			t.Log(line)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("browser tests: %v\n%s\nstderr:\n%s", err, out.String(), stderr.String())
	}
	if !strings.Contains(out.String(), "ok - c2 shows disconnected without a reload") {
		t.Fatalf("the browser tests stopped early:\n%s", out.String())
	}
	// The conflicting edit changed nothing: the other write stands.
	if got := s.must("get", "ingressgateway", "shop", "-o", "yaml"); !strings.Contains(got, "touched: \"yes\"") && !strings.Contains(got, "touched: yes") || strings.Contains(got, "mine.example.com") {
		t.Fatalf("after the conflict:\n%s", got)
	}
}
