package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
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
	requireUI(t)
	cs := clusters(t)
	for _, c := range cs[:2] {
		c.reset(t, "payments")
		c.runWorkloads(t, quickstartWorkloads(8080)...)
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

	out := runBrowser(t, "tests/ui.mjs", []string{"FLOTILLA_URL=" + s.url, "FLOTILLA_CREDENTIAL=" + strings.TrimSpace(string(credential)), "FLOTILLA_SCREENSHOTS=" + shots}, func(line string) string {
		switch {
		case strings.HasPrefix(line, "STOP "):
			agents[strings.TrimPrefix(line, "STOP ")].stop()
			return "stopped"
		case line == "TOUCH": // someone else's write, between the browser's load and its save
			q, err := os.ReadFile(filepath.Join(repoRoot, "examples", "quickstart.yaml"))
			if err != nil {
				t.Error(err)
			}
			touched := strings.Replace(string(q), "  group: payments-gateway\nspec:", "  group: payments-gateway\n  labels: {touched: \"yes\"}\nspec:", 1)
			if r := s.flotilla(touched, "apply", "-f", "-"); r.code != 0 || touched == string(q) {
				t.Errorf("the concurrent write: %+v", r)
			}
			return "touched"
		}
		return ""
	})
	if !strings.Contains(out, "ok - c2 shows disconnected without a reload") {
		t.Fatalf("the browser tests stopped early:\n%s", out)
	}
	// The conflicting edit changed nothing: the other write stands.
	if got := s.must("get", "ingressgateway", "shop", "-o", "yaml"); !strings.Contains(got, "touched: \"yes\"") && !strings.Contains(got, "touched: yes") || strings.Contains(got, "mine.example.com") {
		t.Fatalf("after the conflict:\n%s", got)
	}
	analyzeClusters(t, cs[:2]...)
}

// runBrowser runs a browser test script of web/ with env, passing each
// line it prints to answer (a non-empty answer goes back on its stdin),
// and fails the test when the script fails. It returns the script's
// output; METRIC lines are logged.
func runBrowser(t *testing.T, script string, env []string, answer func(line string) string) string {
	t.Helper()
	cmd := exec.Command("node", script)
	cmd.Dir = filepath.Join(repoRoot, "web")
	cmd.Env = append(os.Environ(), env...)
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
		if strings.HasPrefix(line, "METRIC ") {
			t.Log(line)
		}
		if a := answer(line); a != "" {
			_, _ = io.WriteString(stdin, a+"\n")
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s\nstderr:\n%s", script, err, out.String(), stderr.String())
	}
	return out.String()
}

// The fleet overview with 1,000 clusters (no agents: Cluster resources
// only): every row shows after the page loads, and a drain shows in its
// row after it is stored, without a reload. The script measures both
// (METRIC lines in the log, recorded in docs/benchmarks.md); the test
// asserts the behaviour, not the times.
func TestWebUIWithAThousandClusters(t *testing.T) {
	requireUI(t)
	const n = 1000
	dir := t.TempDir()
	s := startServer(t, dir)
	var b strings.Builder
	b.WriteString("apiVersion: flotilla.io/v1alpha1\nkind: Organization\nmetadata: {name: acme}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: c%d, organization: acme}\nspec: {region: region-%d}\n", i, i%7)
	}
	if r := s.flotilla(b.String(), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply %d clusters: %+v", n, r)
	}
	credential, err := os.ReadFile(bootstrapFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	_ = runBrowser(t, "tests/scale.mjs", []string{"FLOTILLA_URL=" + s.url, "FLOTILLA_CREDENTIAL=" + strings.TrimSpace(string(credential)), fmt.Sprintf("FLOTILLA_CLUSTERS=%d", n)}, func(line string) string {
		if name, ok := strings.CutPrefix(line, "DRAIN "); ok {
			s.must("cluster", "drain", name)
			return "drained"
		}
		return ""
	})
}

// requireUI fails the test when the web UI or its browser tooling is not built.
func requireUI(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(repoRoot, "internal", "ui", "static", "app", "index.html")); err != nil {
		t.Fatalf("the web UI is not built (%v): run `make ui` (make test does)", err)
	}
	if _, err := os.Stat(filepath.Join(repoRoot, "web", "node_modules", "playwright-core")); err != nil {
		t.Fatalf("playwright-core is not installed (%v): run `make ui` (npm ci in web/)", err)
	}
}

// A person logs in to the web UI through OIDC: authorization code with
// PKCE against a real Dex, from the browser; the UI then holds the
// server's own token for them, and shows only what they may read (no
// binding: no cluster).
func TestWebUILogsInThroughOIDC(t *testing.T) {
	requireUI(t)
	dexAddr, listen := freePort(t), freePort(t)
	d := startDexAt(t, time.Hour, dexAddr, "http://"+listen)
	s := runServer(t, t.TempDir(), "http", http.DefaultClient, "", []string{"server", "--listen", listen, "--oidc-issuer", d.issuer, "--oidc-client-id", "flotilla"})
	s.must("apply", "-f", "examples/fleet.yaml")
	out := runBrowser(t, "tests/oidc.mjs", []string{"FLOTILLA_URL=" + s.url}, func(string) string { return "" })
	if !strings.Contains(out, "ok - logged in through OIDC as user:kilgore@kilgore.trout") {
		t.Fatalf("the OIDC login did not finish:\n%s", out)
	}
}
