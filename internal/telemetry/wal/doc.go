// Package wal is the agent's bounded on-disk queue of remote-write batches:
// it keeps them while the management plane or the link is down, and hands
// them back in order afterwards.
//
//	Append(batch) ──fsync──▶ 00000000000000000040.seg  (sealed)
//	                         00000000000000000057.seg  (active, appended to)
//	Peek() ◀── oldest pending batch
//	Ack(seq) ──▶ state (head seq, drop counters; written atomically)
//
// A batch is an opaque byte string. Each segment file starts with a magic
// header and holds records of [length uint32][CRC-32C of length and data
// uint32][data], little-endian; its name is the sequence number of its first
// record. Append returns once the record is on disk. On Open, an incomplete
// or corrupt record at the end of the newest segment (a crash mid-write) is
// cut off with everything after it; a corrupt record met later while reading
// drops the rest of its segment, counted like a budget drop.
//
// Delivery is at least once: a batch leaves the queue only when the reader
// acknowledges it, and an Ack is on disk when it returns. A reader that sends
// the oldest batch and then acks it re-sends, after a crash, at most the one
// batch it had sent but not acked.
//
// The byte budget bounds the segment files together. An append that would
// exceed it first deletes the oldest segments whole, counting their pending
// batches and bytes as dropped; so the queue keeps at least the budget less
// one segment of the newest batches. Memory holds one batch and one entry per
// segment, whatever the queue's length.
package wal
