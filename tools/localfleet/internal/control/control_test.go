package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// clusters records the calls it gets and fails those on cluster "bad".
type clusters struct {
	mu    sync.Mutex
	calls []string
}

var _ Clusters = (*clusters)(nil)

func (c *clusters) StopCluster(name string) error { return c.record("stop " + name) }

func (c *clusters) StartCluster(ctx context.Context, name string) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return c.record("start " + name)
}

func (c *clusters) record(call string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
	if strings.HasSuffix(call, " bad") {
		return errors.New(`no cluster "bad" in the fleet`)
	}
	return nil
}

func TestStopAndStartReachTheSupervisorAndItsErrorsComeBack(t *testing.T) {
	dir := t.TempDir()
	l, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var fake clusters
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, l, &fake, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	if err := StopCluster(context.Background(), dir, "c2"); err != nil {
		t.Fatalf("stop c2: %v", err)
	}
	if err := StartCluster(context.Background(), dir, "c2"); err != nil {
		t.Fatalf("start c2: %v", err)
	}
	err = StopCluster(context.Background(), dir, "bad")
	if err == nil || err.Error() != `no cluster "bad" in the fleet` {
		t.Fatalf("stop bad: error %v, want the supervisor's", err)
	}
	fake.mu.Lock()
	got := strings.Join(fake.calls, ", ")
	fake.mu.Unlock()
	if want := "stop c2, start c2, stop bad"; got != want {
		t.Errorf("calls %q, want %q", got, want)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after Serve returned: %v", err)
	}
	if err := StopCluster(context.Background(), dir, "c2"); err == nil {
		t.Error("stop c2 succeeded after the supervisor stopped serving")
	}
}

func TestAControlSocketPathTooLongForUnixIsRefusedWithTheReason(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(dir)
	if err == nil || !strings.Contains(err.Error(), "shorter --dir") {
		t.Fatalf("Listen in a long dir: %v, want an error asking for a shorter --dir", err)
	}
}
