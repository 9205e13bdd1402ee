package cli_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.io/flotilla/internal/apiserver"
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

// hostAddress is an address of this machine that is not loopback.
func hostAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no non-loopback IPv4 address to serve on")
	return ""
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

	far, err := net.Listen("tcp", net.JoinHostPort(hostAddress(t), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_TOKEN", serveAt(t, far))
	url := "http://" + far.Addr().String()
	out, stderr, err = run(t, "whoami", "--server", url)
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
	_, stderr, err = run(t, "login", "--server", url, "--bootstrap-file", bad)
	if err == nil || !strings.Contains(stderr, "travels in clear text") {
		t.Fatalf("login over %s: %v, stderr %q", url, err, stderr)
	}
}
