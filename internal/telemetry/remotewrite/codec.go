package remotewrite

import (
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"
)

// Errors of Decode, for a receiver to answer 413 and 400.
var (
	ErrTooLarge  = errors.New("remote write: request too large")
	ErrMalformed = errors.New("remote write: malformed request")
)

// Encode returns the body of a remote-write request holding series: a
// WriteRequest in protobuf, snappy block compressed. The series' labels must
// be sorted by name, and each series' samples by time, as the protocol asks.
func Encode(series []prompb.TimeSeries) ([]byte, error) {
	wr := prompb.WriteRequest{Timeseries: series}
	raw, err := wr.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode write request: %w", err)
	}
	return snappy.Encode(nil, raw), nil
}

// Decode reads a remote-write request body. Neither the body nor its
// decompressed form may exceed limit bytes.
func Decode(body io.Reader, limit int64) (*prompb.WriteRequest, error) {
	compressed, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read write request: %w", err)
	}
	if int64(len(compressed)) > limit {
		return nil, fmt.Errorf("body over %d bytes: %w", limit, ErrTooLarge)
	}
	n, err := snappy.DecodedLen(compressed)
	if err != nil {
		return nil, fmt.Errorf("snappy: %v: %w", err, ErrMalformed)
	}
	if int64(n) > limit {
		return nil, fmt.Errorf("decompressed body of %d bytes over %d: %w", n, limit, ErrTooLarge)
	}
	raw, err := snappy.Decode(nil, compressed)
	if err != nil {
		return nil, fmt.Errorf("snappy: %v: %w", err, ErrMalformed)
	}
	var wr prompb.WriteRequest
	if err := wr.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("protobuf: %v: %w", err, ErrMalformed)
	}
	return &wr, nil
}
