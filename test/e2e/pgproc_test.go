package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// pgServer is a PostgreSQL server of the test's own (the machine's
// binaries, a fresh data directory, a loopback port), so that a test can
// stop and start it without touching any other database.
type pgServer struct {
	bin, dir, port string
	URL            string
}

// startPostgres initializes and starts a private PostgreSQL server. It runs
// as the postgres system user (initdb refuses root) and is stopped when the
// test ends.
func startPostgres(t *testing.T) *pgServer {
	t.Helper()
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(versions) == 0 {
		t.Fatal("no PostgreSQL server binaries under /usr/lib/postgresql (install the postgresql package; .ci/run does)")
	}
	sort.Strings(versions)
	bin := filepath.Dir(versions[len(versions)-1])
	root, err := os.MkdirTemp("", "flotilla-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	for _, cmd := range [][]string{{"chown", "postgres", root}, {"chmod", "0700", root}} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	addr := freePort(t)
	p := &pgServer{bin: bin, dir: filepath.Join(root, "data"), port: addr[strings.LastIndex(addr, ":")+1:]}
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable", p.port)
	p.run(t, "initdb", "-D", p.dir, "-A", "trust", "-U", "postgres", "--no-sync")
	p.start(t)
	t.Cleanup(func() { p.run(t, "pg_ctl", "-D", p.dir, "-m", "immediate", "-w", "stop") })
	return p
}

func (p *pgServer) run(t *testing.T, tool string, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(p.bin, tool)}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil && !(tool == "pg_ctl" && strings.Contains(strings.ToLower(string(out)), "server running")) {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
}

func (p *pgServer) start(t *testing.T) {
	t.Helper()
	p.run(t, "pg_ctl", "-D", p.dir, "-w", "-l", filepath.Join(filepath.Dir(p.dir), "log"),
		"-o", "-p "+p.port+" -c listen_addresses=127.0.0.1 -k "+filepath.Dir(p.dir), "start")
}

// stop stops the server fast: connections are cut, as when a database host dies.
func (p *pgServer) stop(t *testing.T) {
	t.Helper()
	p.run(t, "pg_ctl", "-D", p.dir, "-m", "fast", "-w", "stop")
}
