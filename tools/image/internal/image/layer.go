package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// file is one entry of a layer: a directory when Data is nil and Dir is
// set, otherwise a regular file.
type file struct {
	Path     string // relative to /, without a leading or trailing slash
	Dir      bool
	Mode     fs.FileMode // permission bits, plus fs.ModeSticky
	UID, GID int
	Data     []byte
}

// gzipLevel is fixed: the compressed bytes, and so the layer digest,
// depend on it.
const gzipLevel = gzip.BestCompression

// layer writes files as a gzip-compressed tar, sorted by path so that a
// directory precedes its contents, every entry stamped with mtime, owners
// numeric and without names, and the gzip header empty (no name, no time).
// The result depends only on its arguments and the Go toolchain's
// compress/flate.
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	sorted := append([]file(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })

	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzipLevel)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for i, f := range sorted {
		if i > 0 && sorted[i-1].Path == f.Path {
			return nil, fmt.Errorf("layer: %s is listed twice", f.Path)
		}
		h := &tar.Header{
			Name:    f.Path,
			Mode:    tarMode(f.Mode),
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if f.Dir {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	compressed := out.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// tarMode is the tar header's mode field for m: permission bits, with the
// sticky bit at its Unix position.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
