package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Errors callers may test for with errors.Is.
var (
	ErrEmpty    = errors.New("wal: queue is empty")
	ErrTooLarge = errors.New("wal: batch larger than the queue's byte budget")
	ErrNotHead  = errors.New("wal: ack of a batch that is not the oldest pending")
	ErrClosed   = errors.New("wal: queue is closed")
)

const (
	magic     = "FLOWAL1\n"
	magicLen  = int64(len(magic))
	headerLen = 8
	segExt    = ".seg"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options bound a Queue; zero fields take the defaults.
type Options struct {
	// MaxBytes bounds the segment files together; default 256 MiB.
	MaxBytes int64
	// SegmentBytes is the size at which the active segment is sealed and a
	// new one started; default MaxBytes/8, at most 8 MiB.
	SegmentBytes int64
}

// Batch is one appended batch and its sequence number, which Ack takes.
type Batch struct {
	Seq  uint64
	Data []byte
}

// Stats describe a Queue. The drop counters survive restarts.
type Stats struct {
	Pending        uint64 // batches neither acked nor dropped
	DiskBytes      int64  // size of all segment files
	DroppedBatches uint64 // batches dropped to stay within the budget, or corrupt
	DroppedBytes   uint64 // their data bytes
}

// Queue is safe for concurrent use, by one writer calling Append and one
// reader calling Wait, Peek and Ack.
type Queue struct {
	dir  string
	opts Options

	mu      sync.Mutex
	segs    []segment // oldest first; the last is the active one
	active  *os.File  // append handle on the last segment
	reader  *os.File  // read handle on segs[0], opened on demand
	head    uint64    // seq of the oldest batch neither acked nor dropped
	readOff int64     // offset of that batch in segs[0]
	next    uint64    // seq the next Append gets
	dropped struct{ batches, bytes uint64 }
	closed  bool
	signal  chan struct{} // a token after each Append, for Wait
}

type segment struct {
	first uint64 // seq of its first record
	size  int64
}

// Open opens the queue in dir, creating it if needed, and recovers what an
// earlier process left there: pending batches, in order, and drop counters.
func Open(dir string, opts Options) (*Queue, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = min(opts.MaxBytes/8, 8<<20)
	}
	opts.SegmentBytes = min(opts.SegmentBytes, opts.MaxBytes)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open queue %s: %w", dir, err)
	}
	q := &Queue{dir: dir, opts: opts, signal: make(chan struct{}, 1)}
	if err := q.recover(); err != nil {
		q.closeFiles()
		return nil, fmt.Errorf("open queue %s: %w", dir, err)
	}
	return q, nil
}

func (q *Queue) recover() error {
	st := readState(q.dir)
	q.dropped.batches, q.dropped.bytes = st.droppedBatches, st.droppedBytes
	entries, err := os.ReadDir(q.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		stem, ok := strings.CutSuffix(e.Name(), segExt)
		first, err := strconv.ParseUint(stem, 10, 64)
		if !ok || err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		q.segs = append(q.segs, segment{first: first, size: info.Size()})
	}
	slices.SortFunc(q.segs, func(a, b segment) int { return cmpU64(a.first, b.first) })

	if len(q.segs) == 0 {
		q.next = st.head
		if err := q.startSegment(); err != nil {
			return err
		}
	} else if err := q.recoverTail(); err != nil {
		return err
	}

	q.head = min(max(st.head, q.segs[0].first), q.next)
	for len(q.segs) > 1 && q.segs[1].first <= q.head {
		if err := os.Remove(q.path(q.segs[0].first)); err != nil {
			return err
		}
		q.segs = q.segs[1:]
	}
	return q.seekHead()
}

// recoverTail cuts the newest segment after its last intact record, and
// opens it for appending.
func (q *Queue) recoverTail() error {
	last := &q.segs[len(q.segs)-1]
	path := q.path(last.first)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	good, n := int64(0), uint64(0)
	if hasMagic(f) {
		good = magicLen
		for {
			_, end, err := readRecord(f, good, last.size)
			if err != nil {
				break
			}
			good, n = end, n+1
		}
	}
	if good == 0 {
		// No intact magic: the process died while creating the segment.
		if _, err := f.WriteAt([]byte(magic), 0); err != nil {
			return err
		}
		good, last.size = magicLen, -1 // truncate and sync below
	}
	if good != last.size {
		if err := truncate(f, good); err != nil {
			return err
		}
		last.size = good
	}
	if q.active, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return err
	}
	q.next = last.first + n
	return nil
}

// seekHead finds the offset of the head batch in the oldest segment. A
// segment that cannot be read up to it loses the rest of its batches.
func (q *Queue) seekHead() error {
	q.readOff = magicLen
	if q.head == q.next {
		q.readOff = q.segs[0].size
		return nil
	}
	if err := q.openReader(); err != nil {
		return err
	}
	if !hasMagic(q.reader) {
		return q.dropOldest()
	}
	for seq := q.segs[0].first; seq < q.head; seq++ {
		_, end, err := readRecord(q.reader, q.readOff, q.segs[0].size)
		if err != nil {
			return q.dropOldest()
		}
		q.readOff = end
	}
	return nil
}

// Append adds a batch at the end of the queue and returns once it is on
// disk. If the budget has no room for it, the oldest segments are dropped
// first; a batch that could never fit returns ErrTooLarge.
func (q *Queue) Append(data []byte) error {
	rec := int64(headerLen) + int64(len(data))
	if rec+magicLen > q.opts.MaxBytes || uint64(len(data)) > math.MaxUint32 {
		return fmt.Errorf("append %d bytes: %w", len(data), ErrTooLarge)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if act := q.segs[len(q.segs)-1]; act.size > magicLen && act.size+rec > q.opts.SegmentBytes {
		if err := q.startSegment(); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	for q.diskBytes()+rec > q.opts.MaxBytes {
		if err := q.dropOldest(); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	buf := make([]byte, rec)
	binary.LittleEndian.PutUint32(buf[0:4], uint32(len(data)))
	copy(buf[headerLen:], data)
	binary.LittleEndian.PutUint32(buf[4:8], checksum(buf[0:4], data))
	act := &q.segs[len(q.segs)-1]
	if _, err := q.active.Write(buf); err != nil {
		// Leave no partial record behind the next one.
		_ = truncate(q.active, act.size)
		return fmt.Errorf("append: %w", err)
	}
	if err := q.active.Sync(); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	act.size += rec
	q.next++
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return nil
}

// Wait returns once the queue holds a pending batch, or with the context's
// error. Only one goroutine may wait at a time.
func (q *Queue) Wait(ctx context.Context) error {
	for {
		q.mu.Lock()
		pending, closed := q.head < q.next, q.closed
		q.mu.Unlock()
		switch {
		case closed:
			return ErrClosed
		case pending:
			return nil
		}
		select {
		case <-q.signal:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Peek returns the oldest pending batch, the same one until it is acked, or
// ErrEmpty. The caller owns Data.
func (q *Queue) Peek() (Batch, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return Batch{}, ErrClosed
	}
	for q.head < q.next {
		if err := q.openReader(); err != nil {
			return Batch{}, fmt.Errorf("peek: %w", err)
		}
		data, _, err := readRecord(q.reader, q.readOff, q.segs[0].size)
		if err == nil {
			return Batch{Seq: q.head, Data: data}, nil
		}
		if err := q.dropOldest(); err != nil {
			return Batch{}, fmt.Errorf("peek: %w", err)
		}
	}
	return Batch{}, ErrEmpty
}

// Ack removes the oldest pending batch, which must be seq, and returns once
// that is on disk.
func (q *Queue) Ack(seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if q.head == q.next || seq != q.head {
		return fmt.Errorf("ack %d (oldest pending %d of %d): %w", seq, q.head, q.next, ErrNotHead)
	}
	if err := q.openReader(); err != nil {
		return fmt.Errorf("ack %d: %w", seq, err)
	}
	var hdr [headerLen]byte
	if _, err := q.reader.ReadAt(hdr[:], q.readOff); err != nil {
		return fmt.Errorf("ack %d: %w", seq, err)
	}
	q.head++
	q.readOff += headerLen + int64(binary.LittleEndian.Uint32(hdr[0:4]))
	if err := q.writeState(); err != nil {
		return fmt.Errorf("ack %d: %w", seq, err)
	}
	if len(q.segs) > 1 && q.head == q.segs[1].first {
		if err := q.removeOldest(); err != nil {
			return fmt.Errorf("ack %d: %w", seq, err)
		}
	}
	return nil
}

// Stats returns the queue's current figures.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{
		Pending:        q.next - q.head,
		DiskBytes:      q.diskBytes(),
		DroppedBatches: q.dropped.batches,
		DroppedBytes:   q.dropped.bytes,
	}
}

// Close releases the queue's files; what was appended stays on disk.
func (q *Queue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return q.closeFiles()
}

func (q *Queue) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{q.active, q.reader} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	q.active, q.reader = nil, nil
	return errors.Join(errs...)
}

// dropOldest drops the pending batches of the oldest segment and deletes
// it; if it is the active segment, a new one takes its place.
func (q *Queue) dropOldest() error {
	end := q.next
	if len(q.segs) > 1 {
		end = q.segs[1].first
	}
	n := end - q.head
	q.dropped.batches += n
	q.dropped.bytes += uint64(max(0, q.segs[0].size-q.readOff-int64(n)*headerLen))
	q.head = end
	if err := q.writeState(); err != nil {
		return err
	}
	if len(q.segs) == 1 {
		old := q.segs[0].first
		if err := q.startSegment(); err != nil {
			return err
		}
		q.segs = q.segs[1:]
		q.closeReader()
		q.readOff = magicLen
		return os.Remove(q.path(old))
	}
	return q.removeOldest()
}

// removeOldest deletes the oldest segment once nothing in it is pending.
func (q *Queue) removeOldest() error {
	q.closeReader()
	if err := os.Remove(q.path(q.segs[0].first)); err != nil {
		return err
	}
	q.segs = q.segs[1:]
	q.readOff = magicLen
	return nil
}

func (q *Queue) openReader() error {
	if q.reader != nil {
		return nil
	}
	f, err := os.Open(q.path(q.segs[0].first))
	q.reader = f
	return err
}

func (q *Queue) closeReader() {
	if q.reader != nil {
		_ = q.reader.Close()
		q.reader = nil
	}
}

// startSegment seals the active segment and starts a new one at q.next.
func (q *Queue) startSegment() error {
	f, err := os.OpenFile(q.path(q.next), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(magic)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := syncDir(q.dir); err != nil {
		f.Close()
		return err
	}
	if q.active != nil {
		_ = q.active.Close()
	}
	q.active = f
	q.segs = append(q.segs, segment{first: q.next, size: magicLen})
	return nil
}

func (q *Queue) diskBytes() int64 {
	var n int64
	for _, s := range q.segs {
		n += s.size
	}
	return n
}

func (q *Queue) path(first uint64) string {
	return filepath.Join(q.dir, fmt.Sprintf("%020d%s", first, segExt))
}

var errCorrupt = errors.New("corrupt record")

// readRecord reads the record at off in a segment of the given size and
// returns its data and the offset after it.
func readRecord(r io.ReaderAt, off, size int64) ([]byte, int64, error) {
	var hdr [headerLen]byte
	if size-off < headerLen {
		return nil, off, errCorrupt
	}
	if _, err := r.ReadAt(hdr[:], off); err != nil {
		return nil, off, err
	}
	n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
	if n > size-off-headerLen {
		return nil, off, errCorrupt
	}
	data := make([]byte, n)
	if _, err := r.ReadAt(data, off+headerLen); err != nil {
		return nil, off, err
	}
	if checksum(hdr[0:4], data) != binary.LittleEndian.Uint32(hdr[4:8]) {
		return nil, off, errCorrupt
	}
	return data, off + headerLen + n, nil
}

func checksum(length, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(length, crcTable), crcTable, data)
}

func hasMagic(r io.ReaderAt) bool {
	var b [len(magic)]byte
	_, err := r.ReadAt(b[:], 0)
	return err == nil && string(b[:]) == magic
}

func truncate(f *os.File, size int64) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
