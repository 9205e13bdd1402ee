package remotewrite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"flotilla.io/flotilla/internal/telemetry/wal"
)

// Queue is what a Sender consumes: the oldest pending batch, the wait for
// one, and its removal. The Sender must be the queue's only reader.
type Queue interface {
	Wait(ctx context.Context) error
	Peek() (wal.Batch, error)
	Ack(seq uint64) error
}

var _ Queue = (*wal.Queue)(nil)

// Sender drains a queue of encoded requests into a Client, in order, one
// request in flight.
type Sender struct {
	queue   Queue
	client  *Client
	log     *slog.Logger
	dropped atomic.Uint64
}

// NewSender returns a Sender from q to c.
func NewSender(q Queue, c *Client, log *slog.Logger) *Sender {
	return &Sender{queue: q, client: c, log: log}
}

// Start sends until ctx ends, then returns nil; any other return is the
// queue failing. A batch is acked once delivered, or once refused for good
// (then dropped and counted).
func (s *Sender) Start(ctx context.Context) error {
	// States: waiting for a batch (Wait); sending the oldest, retrying inside
	// Send until it is delivered, refused or ctx ends; acking it.
	for {
		if err := s.queue.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("remote write sender: wait: %w", err)
		}
		b, err := s.queue.Peek()
		if errors.Is(err, wal.ErrEmpty) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remote write sender: peek: %w", err)
		}
		switch err := s.client.Send(ctx, b.Data); {
		case err == nil:
		case errors.Is(err, ErrPermanent):
			s.dropped.Add(1)
			s.log.Warn("remote write: batch refused, dropped", "seq", b.Seq, "bytes", len(b.Data), "error", err)
		case ctx.Err() != nil:
			return nil
		default: // Send gives up on a retryable failure only when ctx ends
			continue
		}
		if err := s.queue.Ack(b.Seq); err != nil {
			return fmt.Errorf("remote write sender: ack batch %d: %w", b.Seq, err)
		}
	}
}

// Dropped returns how many batches the receiver refused for good since
// NewSender.
func (s *Sender) Dropped() uint64 {
	return s.dropped.Load()
}
