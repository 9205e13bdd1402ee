package e2e

import (
	"bytes"
	"sync"
)

// syncBuffer collects a process's output while a test reads it. It exposes
// only Write and String, so io.Copy cannot bypass the lock through a
// promoted ReadFrom.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
