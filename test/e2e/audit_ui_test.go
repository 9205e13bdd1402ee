package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The web UI's audit page in a real browser: web/tests/audit.mjs reads an
// audit of 1,201 records, newest first, one page of 500 at a time with
// "Load older records", to the organization's create at the bottom.
func TestWebUIAuditPageLoadsOlderRecordsPageByPage(t *testing.T) {
	requireUI(t)
	dir := t.TempDir()
	s := startServer(t, dir)
	var b strings.Builder
	b.WriteString("apiVersion: flotilla.io/v1alpha1\nkind: Organization\nmetadata: {name: acme}\n")
	for i := range 1199 {
		fmt.Fprintf(&b, "---\napiVersion: flotilla.io/v1alpha1\nkind: Tenant\nmetadata: {name: t%04d, organization: acme}\n", i)
	}
	if r := s.flotilla(b.String(), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply 1,199 tenants: %+v", r)
	}
	if r := s.flotilla("apiVersion: flotilla.io/v1alpha1\nkind: Tenant\nmetadata: {name: newest, organization: acme}\n", "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply the newest tenant: %+v", r)
	}
	credential, err := os.ReadFile(bootstrapFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	out := runBrowser(t, "tests/audit.mjs", []string{"FLOTILLA_URL=" + s.url, "FLOTILLA_CREDENTIAL=" + strings.TrimSpace(string(credential)), "FLOTILLA_SCREENSHOTS=" + os.Getenv("FLOTILLA_UI_SCREENSHOTS")}, func(string) string { return "" })
	if !strings.Contains(out, "ok - the oldest record, the organization's create, is at the bottom") {
		t.Fatalf("the audit page's browser test stopped early:\n%s", out)
	}
}
