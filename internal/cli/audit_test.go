package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/cli"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/testauth"
)

// auditServer is a real API server on loopback with an organization and n
// tenants in it (n+1 audit records), and the bootstrap token in
// FLOTILLA_TOKEN for the CLI.
func auditServer(t *testing.T, n int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	token := serveAt(t, ln)
	ctx := context.Background()
	url := "http://" + ln.Addr().String()
	c := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url, testauth.Bearer(token))
	resources := []*pb.Resource{{ApiVersion: resource.APIVersion, Kind: "Organization", Metadata: &pb.Metadata{Name: "acme"}, Spec: &structpb.Struct{}}}
	for i := range n {
		resources = append(resources, &pb.Resource{ApiVersion: resource.APIVersion, Kind: "Tenant", Metadata: &pb.Metadata{Name: fmt.Sprintf("t%04d", i), Organization: "acme"}, Spec: &structpb.Struct{}})
	}
	if _, err := c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: resources})); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_TOKEN", token)
	t.Setenv("FLOTILLA_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("FLOTILLA_SERVER", url)
	return url
}

// run runs the flotilla command with args and returns its output.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := cli.NewRoot(strings.NewReader(""), &out, &errOut)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// revisions reads JSON lines of audit records and returns their revisions.
func revisions(t *testing.T, jsonl string) []int64 {
	t.Helper()
	var out []int64
	for line := range strings.Lines(jsonl) {
		var r struct {
			Revision string `json:"revision"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		var rev int64
		fmt.Sscan(r.Revision, &rev)
		out = append(out, rev)
	}
	return out
}

func TestAuditShowsTheNewestThousandOldestFirstAndSaysWhenOlderOnesExist(t *testing.T) {
	auditServer(t, 1200) // revisions 1..1201
	out, errOut, err := run(t, "audit")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string // one a record; the field changes are indented below
	for line := range strings.Lines(out) {
		if strings.Contains(line, "  rev ") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1000 || !strings.Contains(lines[0], "rev 202 ") || !strings.Contains(lines[999], "rev 1201 ") {
		t.Fatalf("flotilla audit shows %d lines from %q to %q; want revisions 202..1201", len(lines), lines[0], lines[len(lines)-1])
	}
	if !strings.Contains(errOut, "older records exist beyond these 1000: raise --limit (0 for all), or use --export") {
		t.Fatalf("flotilla audit does not say that older records exist: %q", errOut)
	}
	// --limit follows the pages past 1000.
	out, errOut, err = run(t, "audit", "--limit", "1100", "-o", "jsonl")
	if err != nil {
		t.Fatal(err)
	}
	revs := revisions(t, out)
	if len(revs) != 1100 || revs[0] != 102 || revs[1099] != 1201 || !strings.Contains(errOut, "older records exist") {
		t.Fatalf("--limit 1100: %d records from %v to %v (%q); want 102..1201 and a word that more exist", len(revs), revs[0], revs[len(revs)-1], errOut)
	}
	// All of them: nothing more to say.
	all, errOut, err := run(t, "audit", "--limit", "0", "-o", "jsonl")
	if err != nil || errOut != "" {
		t.Fatalf("--limit 0: %v %q", err, errOut)
	}
	if revs := revisions(t, all); len(revs) != 1201 || revs[0] != 1 || revs[1200] != 1201 {
		t.Fatalf("--limit 0 lists %d records; want all 1201, oldest first", len(revs))
	}
	// Exactly as many as there are: no word of more.
	if _, errOut, err := run(t, "audit", "--limit", "1201", "-o", "jsonl"); err != nil || errOut != "" {
		t.Fatalf("--limit 1201 of 1201: %v %q; want no word of older records", err, errOut)
	}
	// The export is the same JSON lines, streamed.
	exported, _, err := run(t, "audit", "--export")
	if err != nil {
		t.Fatal(err)
	}
	if exported != all {
		t.Fatalf("flotilla audit --export differs from --limit 0 -o jsonl (%d and %d bytes)", len(exported), len(all))
	}
}

func TestAuditRefusesFlagsThatContradictAnExport(t *testing.T) {
	auditServer(t, 0)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "--export", "--limit", "5"}, "--export writes every record: drop --limit"},
		{[]string{"audit", "--export", "-o", "table"}, "--export writes JSON lines: drop -o table"},
		{[]string{"audit", "-o", "csv"}, `-o "csv": use table, yaml, json or jsonl`},
		{[]string{"audit", "--limit", "-1"}, "--limit -1: give a number of records, or 0 for all"},
	} {
		out, _, err := run(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || out != "" {
			t.Errorf("flotilla %s: %v (stdout %q); want the error %q and no output", strings.Join(c.args, " "), err, out, c.want)
		}
	}
}

// `audit --kind SigningKey` lists the signing-key operations, which no
// resource kind names.
func TestAuditOfTheSigningKeysOperations(t *testing.T) {
	auditServer(t, 0)
	if _, stderr, err := run(t, "auth", "keys", "rotate"); err != nil {
		t.Fatalf("rotate: %v %s", err, stderr)
	}
	out, stderr, err := run(t, "audit", "--kind", "SigningKey")
	if err != nil || !strings.Contains(out, "RotateSigningKey") || strings.Contains(out, "Organization") {
		t.Fatalf("audit --kind SigningKey: %v %q %q, want the rotation only", err, out, stderr)
	}
}
