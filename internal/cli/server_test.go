package cli_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.io/flotilla/internal/cli"
	"flotilla.io/flotilla/internal/syncbuf"
)

// The profiling endpoints serve this host only: any other address is
// refused before the server opens its store or listens.
func TestDebugListenRefusesNonLoopbackAddresses(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.10:6060", "[::]:6060", "example.com:6060"} {
		dir := filepath.Join(t.TempDir(), "data")
		_, _, err := run(t, "server", "--listen", "127.0.0.1:0", "--data-dir", dir, "--debug-listen", addr)
		if err == nil || !strings.Contains(err.Error(), "--debug-listen") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("--debug-listen %s: %v, want a refusal naming the flag and loopback", addr, err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("--debug-listen %s: the refused start made its data directory (%v)", addr, err)
		}
	}
}

// On first start the bootstrap credential goes to its 0600 file only: the
// server's output names the file and the expiry, never the secret.
func TestTheBootstrapCredentialIsNeverPrinted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var out, errOut syncbuf.Buffer
	root := cli.NewRoot(strings.NewReader(""), &out, &errOut)
	root.SetArgs([]string{"server", "--listen", "127.0.0.1:0", "--data-dir", dir, "--debug-listen", "127.0.0.1:0"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}()
	path := filepath.Join(dir, "bootstrap-admin")
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(errOut.String(), "management plane serving") {
		if time.Now().After(deadline) {
			t.Fatalf("the server did not start: %s", errOut.String())
		}
		select {
		case err := <-done:
			t.Fatalf("the server stopped: %v\n%s", err, errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(b))
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v %v, want mode 0600", path, fi, err)
	}
	if strings.Contains(out.String(), secret) || strings.Contains(errOut.String(), secret) {
		t.Errorf("the bootstrap credential was printed:\nstdout: %s\nstderr: %s", out.String(), errOut.String())
	}
	if !strings.Contains(errOut.String(), path) || !strings.Contains(errOut.String(), "good until") {
		t.Errorf("the output does not say where the credential is and until when: %s", errOut.String())
	}
	if strings.Contains(errOut.String(), "cleartext HTTP on a non-loopback") {
		t.Errorf("a loopback listener was warned about: %s", errOut.String())
	}
}
