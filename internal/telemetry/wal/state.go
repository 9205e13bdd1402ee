package wal

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
)

// The state file holds the head sequence number and the drop counters:
// three little-endian uint64 and their CRC-32C. It is replaced whole, by
// rename, so it is either the old state or the new one.
const (
	stateName = "state"
	stateLen  = 3*8 + 4
)

type state struct {
	head, droppedBatches, droppedBytes uint64
}

// readState returns the saved state, or the zero state if there is none or
// it is unreadable; then pending batches are read from the oldest segment's
// start again, which at-least-once delivery allows.
func readState(dir string) state {
	b, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil || len(b) != stateLen || crc32.Checksum(b[:24], crcTable) != binary.LittleEndian.Uint32(b[24:]) {
		return state{}
	}
	return state{
		head:           binary.LittleEndian.Uint64(b[0:8]),
		droppedBatches: binary.LittleEndian.Uint64(b[8:16]),
		droppedBytes:   binary.LittleEndian.Uint64(b[16:24]),
	}
}

func (q *Queue) writeState() error {
	b := make([]byte, stateLen)
	binary.LittleEndian.PutUint64(b[0:8], q.head)
	binary.LittleEndian.PutUint64(b[8:16], q.dropped.batches)
	binary.LittleEndian.PutUint64(b[16:24], q.dropped.bytes)
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], crcTable))
	tmp := filepath.Join(q.dir, stateName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(q.dir, stateName)); err != nil {
		return err
	}
	return syncDir(q.dir)
}
