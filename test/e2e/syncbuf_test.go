package e2e

import "flotilla.io/flotilla/internal/syncbuf"

// syncBuffer collects a process's output while a test reads it.
type syncBuffer = syncbuf.Buffer
