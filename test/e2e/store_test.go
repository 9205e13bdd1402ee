package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	_ "modernc.org/sqlite"

	"flotilla.io/flotilla/internal/store/postgres/pgtest"
)

var kinds = []string{"organizations", "tenants", "workspaces", "groups", "clusters"}

// everything is every object's intent (metadata with its etag, and spec),
// kind by kind. Status and the revision of the last status write are left
// out: the central control plane writes them on its own.
func everything(s *server) string {
	var b strings.Builder
	for _, k := range kinds {
		var list struct {
			Items []map[string]any `json:"items"`
		}
		if err := json.Unmarshal([]byte(s.must("get", k, "-o", "json")), &list); err != nil {
			s.t.Fatal(err)
		}
		for _, item := range list.Items {
			delete(item, "status")
			delete(item["metadata"].(map[string]any), "revision")
			out, _ := json.Marshal(item)
			b.Write(out)
			b.WriteString("\n")
		}
	}
	return b.String()
}

func TestRestartDurabilityWithTheEmbeddedStore(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir) // no flags: SQLite under ./flotilla-data

	out := s.must("apply", "-f", "examples/tenancy.yaml")
	if n := strings.Count(out, " created\n"); n != 9 {
		t.Fatalf("want 9 objects created (1 org, 1 tenant, 2 workspaces, 3 groups, 2 clusters), got %d:\n%s", n, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "flotilla-data", "flotilla.db")); err != nil {
		t.Fatalf("the default store is not at ./flotilla-data/flotilla.db: %v", err)
	}
	before := everything(s)
	if strings.Count(before, `"etag":`) != 9 {
		t.Fatalf("want 9 objects with etags:\n%s", before)
	}

	s.kill9()
	s = startServer(t, dir)
	if after := everything(s); after != before {
		t.Fatalf("objects differ after kill -9 and restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out := s.must("apply", "-f", "examples/tenancy.yaml"); strings.Count(out, " unchanged\n") != 9 {
		t.Fatalf("reapplying after restart should change nothing:\n%s", out)
	}

	audit := s.must("audit")
	if n := strings.Count(audit, " create "); n != 9 {
		t.Fatalf("audit should list 9 creates, got %d:\n%s", n, audit)
	}
	for _, want := range []string{
		"create Workspace organizations/acme/tenants/fintech/workspaces/payments",
		`+ spec.namespaceSelector.names: ["*/payments","*/payments-*"]`,
		`+ spec.region: "region-1"`,
	} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
	r := s.flotilla("apiVersion: flotilla.io/v1alpha1\nkind: Tenant\nmetadata: {name: fintech, organization: acme}\nspec: {displayName: Fintech}\n", "apply", "-f", "-")
	if r.code != 0 || r.stdout != "organizations/acme/tenants/fintech configured\n" {
		t.Fatalf("update from stdin: %+v", r)
	}
	if audit := s.must("audit", "--kind", "tenant", "--since", "1h"); !strings.Contains(audit, `~ spec.displayName: "Financial services" -> "Fintech"`) {
		t.Fatalf("audit lacks the field-level diff of the update:\n%s", audit)
	}

	desc := s.must("describe", "ws", "payments")
	for _, want := range []string{"FQN:          organizations/acme/tenants/fintech/workspaces/payments", "groups: payments-gateway, payments-traffic", "Recent changes:", "create Workspace"} {
		if !strings.Contains(desc, want) {
			t.Errorf("describe lacks %q:\n%s", want, desc)
		}
	}
	if r := s.flotilla("", "delete", "org", "acme"); r.code == 0 || !strings.Contains(r.stderr, "--cascade") {
		t.Fatalf("deleting a parent without --cascade: %+v", r)
	}
	out = s.must("delete", "-f", "examples/tenancy.yaml")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 9 || lines[len(lines)-1] != "organizations/acme deleted" {
		t.Fatalf("delete -f should delete the 9 objects, the organization last:\n%s", out)
	}
	if got := s.must("get", "orgs", "-o", "json"); strings.Contains(got, "acme") {
		t.Fatalf("organization still listed after delete -f:\n%s", got)
	}
	if v := s.must("version"); !strings.HasPrefix(v, "flotilla ") {
		t.Fatalf("version: %q", v)
	}
}

// storeState is the logical content of the SQLite store's intent: objects,
// events, audit and the revision. (Not the file's bytes, nor the feed
// counter: runtime status is written beside intent at any time, and is not
// what a refused apply must leave alone.)
func storeState(t *testing.T, dir string) string {
	t.Helper()
	return tableState(t, dir, "objects", "events", "audit", "meta")
}

// tableState is the content of tables of the SQLite store in dir, every
// row, but the feed counter of meta.
func tableState(t *testing.T, dir string, tables ...string) string {
	t.Helper()
	path := filepath.Join(dir, "flotilla-data", "flotilla.db")
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	for _, table := range tables {
		query := "SELECT * FROM " + table
		if table == "meta" {
			// The feed counter numbers runtime and status writes, which
			// go on while an apply is refused.
			query += " WHERE key <> 'feed'"
		}
		rows, err := db.Query(query + " ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %v\n", table, vals)
		}
		rows.Close()
	}
	return b.String()
}

func TestBadInputNamesDocumentAndFieldAndLeavesTheStoreUnchanged(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/tenancy.yaml")

	// A stale etag: read the tenant, let someone else change it, then apply the old read.
	staleFile := filepath.Join(t.TempDir(), "stale-etag.yaml")
	stale := s.must("get", "tenant", "fintech", "-o", "yaml")
	if err := os.WriteFile(staleFile, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	etagLine := fmt.Sprintf(":%d:", strings.Count(stale[:strings.Index(stale, "etag:")], "\n")+1)
	if r := s.flotilla("apiVersion: flotilla.io/v1alpha1\nkind: Tenant\nmetadata: {name: fintech, organization: acme}\nspec: {displayName: Changed}\n", "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("concurrent change: %+v", r)
	}

	bad := "test/e2e/testdata/bad/"
	cases := []struct {
		name, file string
		want       []string // fragments of the error: file:line, document, field, what to do
	}{
		{"malformed YAML", bad + "malformed.yaml", []string{bad + "malformed.yaml:9:", "document 2", "malformed YAML"}},
		{"unknown kind", bad + "unknown-kind.yaml", []string{bad + "unknown-kind.yaml:8:", "document 2 (Workspce \"shop\")", "kind:", `did you mean "Workspace"?`}},
		{"unknown field", bad + "unknown-field.yaml", []string{bad + "unknown-field.yaml:16:", "document 2 (Workspace \"shop\")", "spec.namespaceSelector.exclude", "unknown field"}},
		{"missing parent", bad + "missing-parent.yaml", []string{bad + "missing-parent.yaml:12:", "document 2 (Workspace \"shop\")", "metadata.tenant", `Tenant "wholesale" does not exist`}},
		{"namespace owned by another workspace", bad + "owned-namespace.yaml", []string{bad + "owned-namespace.yaml:15:", "document 2 (Workspace \"shop\")", "spec.namespaceSelector.names[1]", "overlaps", "another tenant's workspace"}},
		{"stale etag", staleFile, []string{staleFile + etagLine, "document 1 (Tenant \"fintech\")", "metadata.etag", "get it again"}},
		{"group selector outside its workspace", bad + "group-outside.yaml", []string{bad + "group-outside.yaml:17:", "document 2 (Group \"everything\")", "spec.namespaceSelector.names[1]", "outside workspace"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := storeState(t, dir)
			r := s.flotilla("", "apply", "-f", c.file)
			if r.code == 0 {
				t.Fatalf("apply of bad input exited 0:\n%s", r.stdout)
			}
			if r.stdout != "" {
				t.Errorf("bad input printed results: %s", r.stdout)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.stderr)
				}
			}
			if !strings.Contains(r.stderr, "nothing was applied") {
				t.Errorf("error does not say nothing was applied:\n%s", r.stderr)
			}
			if after := storeState(t, dir); after != before {
				t.Fatalf("the store changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestPostgresStoreServesTheQuickstart(t *testing.T) {
	s := startServer(t, t.TempDir(), "--store", pgtest.NewDatabase(t))
	if out := s.must("apply", "-f", "examples/tenancy.yaml"); strings.Count(out, " created\n") != 9 {
		t.Fatalf("apply on postgres:\n%s", out)
	}
	before := everything(s)
	s.kill9()
	first := bootstrapFile(s.cmd.Dir)
	s = startServer(t, t.TempDir(), "--store", s.cmd.Args[len(s.cmd.Args)-1])
	s.login(first) // the credential lives in the store; the new data dir has no copy
	if after := everything(s); after != before {
		t.Fatalf("objects differ after restart on postgres")
	}
	if out := s.must("get", "groups", "--workspace", "payments"); !regexp.MustCompile(`payments-gateway\s+acme\s+fintech\s+payments\s+gateway\s+BRIDGED`).MatchString(out) {
		t.Fatalf("get groups --workspace payments:\n%s", out)
	}
	if audit := s.must("audit", "--fqn", "organizations/acme/clusters"); strings.Count(audit, " create Cluster ") != 2 {
		t.Fatalf("audit --fqn of the clusters:\n%s", audit)
	}
}

func TestSIGTERMStopsTheServerCleanly(t *testing.T) {
	s := startServer(t, t.TempDir())
	s.must("apply", "-f", "examples/tenancy.yaml")
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("server exit after SIGTERM: %v\n%s", err, s.log)
	}
	if !strings.Contains(s.log.String(), "finishing requests in flight") {
		t.Fatalf("no graceful shutdown in the log:\n%s", s.log)
	}
}
