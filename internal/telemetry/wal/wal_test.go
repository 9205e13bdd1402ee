package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func open(t *testing.T, dir string, opts Options) *Queue {
	t.Helper()
	q, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func appendAll(t *testing.T, q *Queue, batches ...string) {
	t.Helper()
	for _, b := range batches {
		if err := q.Append([]byte(b)); err != nil {
			t.Fatalf("append %q: %v", b, err)
		}
	}
}

// drain peeks and acks every pending batch, in order.
func drain(t *testing.T, q *Queue) []string {
	t.Helper()
	var got []string
	for {
		b, err := q.Peek()
		if errors.Is(err, ErrEmpty) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(b.Data))
		if err := q.Ack(b.Seq); err != nil {
			t.Fatal(err)
		}
	}
}

func batches(n int, format string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i)
	}
	return out
}

// segments returns the segment files in dir and their total size.
func segments(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	slices.Sort(paths)
	return paths, total
}

func TestPendingBatchesSurviveARestartInOrder(t *testing.T) {
	dir := t.TempDir()
	want := batches(20, "batch-%02d")
	q := open(t, dir, Options{SegmentBytes: 64})
	appendAll(t, q, want...)
	q.Close()

	q = open(t, dir, Options{SegmentBytes: 64})
	if paths, _ := segments(t, dir); len(paths) < 3 {
		t.Fatalf("want the batches spread over several segments, got %v", paths)
	}
	if diff := cmp.Diff(want, drain(t, q)); diff != "" {
		t.Errorf("batches after restart (-want +got):\n%s", diff)
	}
}

func TestABatchLeavesOnlyWhenAcked(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, Options{})
	appendAll(t, q, "a", "b", "c")

	first, err := q.Peek()
	if err != nil {
		t.Fatal(err)
	}
	again, err := q.Peek()
	if err != nil {
		t.Fatal(err)
	}
	if string(first.Data) != "a" || string(again.Data) != "a" || again.Seq != first.Seq {
		t.Fatalf("peek twice: %q then %q, want a both times", first.Data, again.Data)
	}
	if err := q.Ack(first.Seq + 1); !errors.Is(err, ErrNotHead) {
		t.Errorf("ack of the second batch before the first: %v, want ErrNotHead", err)
	}
	// A crash after sending a but before acking it: a comes back.
	q.Close()
	q = open(t, dir, Options{})
	b, err := q.Peek()
	if err != nil || string(b.Data) != "a" {
		t.Fatalf("after a crash before ack: %q, %v; want a again", b.Data, err)
	}
	if err := q.Ack(b.Seq); err != nil {
		t.Fatal(err)
	}
	// The ack is durable: a does not come back.
	q.Close()
	q = open(t, dir, Options{})
	if diff := cmp.Diff([]string{"b", "c"}, drain(t, q)); diff != "" {
		t.Errorf("after ack and restart (-want +got):\n%s", diff)
	}
	if st := q.Stats(); st.Pending != 0 {
		t.Errorf("pending after drain = %d, want 0", st.Pending)
	}
}

func TestFullyAckedSegmentsAreDeleted(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, Options{SegmentBytes: 64})
	appendAll(t, q, batches(20, "batch-%02d")...)
	drain(t, q)
	if paths, _ := segments(t, dir); len(paths) != 1 {
		t.Errorf("segments after draining: %v, want only the active one", paths)
	}
}

func TestTheBudgetDropsTheOldestAndCountsThem(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 1024, SegmentBytes: 256}
	q := open(t, dir, opts)
	all := batches(100, "batch-%03d-"+strings.Repeat("x", 40)) // 50 bytes each
	for _, b := range all {
		appendAll(t, q, b)
		if _, size := segments(t, dir); size > opts.MaxBytes {
			t.Fatalf("after appending %q the segments hold %d bytes, budget %d", b[:9], size, opts.MaxBytes)
		}
	}
	st := q.Stats()
	if _, size := segments(t, dir); st.DiskBytes != size {
		t.Errorf("Stats.DiskBytes = %d, files hold %d", st.DiskBytes, size)
	}
	if st.DroppedBatches == 0 || st.DroppedBatches+st.Pending != 100 || st.DroppedBytes != 50*st.DroppedBatches {
		t.Fatalf("stats %+v: want some dropped, dropped+pending = 100, 50 bytes per dropped batch", st)
	}
	if st.DiskBytes <= opts.MaxBytes-opts.SegmentBytes {
		t.Errorf("the queue holds %d bytes: it dropped more than one segment beyond the budget's need", st.DiskBytes)
	}
	q.Close()

	q = open(t, dir, opts)
	if got := q.Stats(); got.DroppedBatches != st.DroppedBatches || got.DroppedBytes != st.DroppedBytes {
		t.Errorf("drop counters after restart %+v, want %+v", got, st)
	}
	if diff := cmp.Diff(all[st.DroppedBatches:], drain(t, q)); diff != "" {
		t.Errorf("kept batches are not the newest, in order (-want +got):\n%s", diff)
	}
}

func TestABatchBeyondTheBudgetIsRefused(t *testing.T) {
	q := open(t, t.TempDir(), Options{MaxBytes: 64})
	appendAll(t, q, "kept")
	if err := q.Append(make([]byte, 64)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("append of 64 bytes into a 64-byte budget: %v, want ErrTooLarge", err)
	}
	if diff := cmp.Diff([]string{"kept"}, drain(t, q)); diff != "" {
		t.Errorf("queue changed by a refused append (-want +got):\n%s", diff)
	}
}

func TestADamagedTailIsCutOffOnOpen(t *testing.T) {
	rec := int64(headerLen + len("batch-2"))
	tests := []struct {
		name   string
		damage func(t *testing.T, f *os.File, size int64)
	}{
		{"a record cut mid-data", func(t *testing.T, f *os.File, size int64) { truncateTo(t, f, size-3) }},
		{"a record cut mid-header", func(t *testing.T, f *os.File, size int64) { truncateTo(t, f, size-rec+5) }},
		{"a record with a flipped data byte", func(t *testing.T, f *os.File, size int64) { flip(t, f, size-1) }},
		{"a record with a wrong length", func(t *testing.T, f *os.File, size int64) { flip(t, f, size-rec) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			q := open(t, dir, Options{})
			appendAll(t, q, "batch-0", "batch-1", "batch-2")
			q.Close()
			paths, _ := segments(t, dir)
			damageFile(t, paths[len(paths)-1], tt.damage)

			q = open(t, dir, Options{})
			appendAll(t, q, "batch-3")
			if diff := cmp.Diff([]string{"batch-0", "batch-1", "batch-3"}, drain(t, q)); diff != "" {
				t.Errorf("after recovery (-want +got):\n%s", diff)
			}
		})
	}
}

func TestACorruptSealedSegmentDropsItsRestCounted(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 40} // two 15-byte records per segment
	q := open(t, dir, opts)
	appendAll(t, q, batches(6, "batch-%d")...)
	q.Close()
	paths, _ := segments(t, dir)
	if len(paths) != 3 {
		t.Fatalf("segments %v, want 3", paths)
	}
	damageFile(t, paths[0], func(t *testing.T, f *os.File, size int64) { flip(t, f, size-1) })

	q = open(t, dir, opts)
	if diff := cmp.Diff([]string{"batch-0", "batch-2", "batch-3", "batch-4", "batch-5"}, drain(t, q)); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
	if st := q.Stats(); st.DroppedBatches != 1 || st.DroppedBytes != 7 {
		t.Errorf("stats %+v, want one 7-byte batch dropped", st)
	}
}

func TestWaitReturnsWhenABatchArrives(t *testing.T) {
	q := open(t, t.TempDir(), Options{})
	done := make(chan error)
	go func() { done <- q.Wait(context.Background()) }()
	appendAll(t, q, "a")
	if err := <-done; err != nil {
		t.Errorf("wait: %v", err)
	}

	drain(t, q)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- q.Wait(ctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("wait on an empty queue with a cancelled context: %v, want context.Canceled", err)
	}
}

func damageFile(t *testing.T, path string, damage func(*testing.T, *os.File, int64)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	damage(t, f, fi.Size())
}

func truncateTo(t *testing.T, f *os.File, size int64) {
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func flip(t *testing.T, f *os.File, off int64) {
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestASegmentCutWhileBeingCreatedIsRestarted(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 20} // one record per segment
	q := open(t, dir, opts)
	appendAll(t, q, "batch-0", "batch-1")
	q.Close()
	paths, _ := segments(t, dir)
	damageFile(t, paths[len(paths)-1], func(t *testing.T, f *os.File, _ int64) { truncateTo(t, f, 3) })

	q = open(t, dir, opts)
	appendAll(t, q, "batch-2")
	if diff := cmp.Diff([]string{"batch-0", "batch-2"}, drain(t, q)); diff != "" {
		t.Errorf("after recovery (-want +got):\n%s", diff)
	}
}
