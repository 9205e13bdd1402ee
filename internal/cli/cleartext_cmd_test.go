package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/cli"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testauth"
)

// serveAt runs a real API server on ln and returns a token for it.
func serveAt(t *testing.T, ln net.Listener) string {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	auth, token := testauth.New(t)
	srv := apiserver.New(resource.Builtin(), st, slog.New(slog.DiscardHandler), apiserver.WithAuth(auth))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return token
}

// TestMain runs the flotilla command itself when a test starts this binary
// as the CLI (FLOTILLA_TEST_CLI_ARGS set, arguments separated by \x1f): a
// process of its own, so that it reads HTTP_PROXY afresh.
func TestMain(m *testing.M) {
	if args := os.Getenv("FLOTILLA_TEST_CLI_ARGS"); args != "" {
		root := cli.NewRoot(os.Stdin, os.Stdout, os.Stderr)
		root.SetArgs(strings.Split(args, "\x1f"))
		if err := root.ExecuteContext(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runThroughProxy runs the CLI in a child process whose HTTP proxy is
// proxy: a server named by a host beyond loopback is reached on loopback,
// and nothing leaves the machine.
func runThroughProxy(t *testing.T, proxy, token string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLOTILLA_TEST_CLI_ARGS="+strings.Join(args, "\x1f"), "FLOTILLA_TOKEN="+token,
		"HTTP_PROXY="+proxy, "http_proxy="+proxy, "NO_PROXY=", "no_proxy=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// A command that sends a credential to a plain http:// server across a
// network warns once on stderr, and still works; the same server on
// loopback draws no warning.
func TestCommandsWarnOfACredentialInClearTextBeyondLoopback(t *testing.T) {
	t.Setenv("FLOTILLA_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	loop, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_TOKEN", serveAt(t, loop))
	out, stderr, err := run(t, "whoami", "--server", "http://"+loop.Addr().String())
	if err != nil || !strings.Contains(out, "user:admin") || stderr != "" {
		t.Fatalf("whoami over loopback: %v %q, stderr %q (want no warning)", err, out, stderr)
	}

	// A server named by a host beyond loopback (reached, here, through a
	// proxy on loopback: the API server itself, which takes absolute
	// request URIs).
	far, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	farToken := serveAt(t, far)
	proxy := "http://" + far.Addr().String()
	url := "http://flotilla.example.test:8080"
	out, stderr, err = runThroughProxy(t, proxy, farToken, "whoami", "--server", url)
	if err != nil || !strings.Contains(out, "user:admin") {
		t.Fatalf("whoami over %s: %v %q %q", url, err, out, stderr)
	}
	if want := "warning: " + url + " is plain http://: the credential travels in clear text"; strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, want) {
		t.Fatalf("whoami over %s: stderr %q, want one line starting %q", url, stderr, want)
	}

	// A login sends its grant (here a wrong bootstrap credential) to Token: it warns too.
	t.Setenv("FLOTILLA_TOKEN", "")
	bad := filepath.Join(t.TempDir(), "bootstrap-admin")
	if err := os.WriteFile(bad, []byte("fla_wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = runThroughProxy(t, proxy, "", "login", "--server", url, "--bootstrap-file", bad)
	if err == nil || !strings.Contains(stderr, "travels in clear text") {
		t.Fatalf("login over %s: %v, stderr %q", url, err, stderr)
	}
}
