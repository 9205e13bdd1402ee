// Command image builds Flotilla's container image (make image): an OCI
// image index of cmd/flotilla for linux/amd64 and linux/arm64, written as
// an OCI layout with an SPDX SBOM per platform, and pushed when -push
// names a registry. No Docker engine is involved and nothing is pulled.
//
//	go run . -root ../.. -out ../../bin/image -version v1.2.3 -epoch 1700000000 [-push host/repo[:tag]]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"flotilla.io/flotilla/tools/image/internal/image"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	root := flag.String("root", "../..", "the repository's root")
	out := flag.String("out", "../../bin/image", "output directory: oci/ (the layout), sbom/, the binaries, digest")
	version := flag.String("version", "", "the version stamped into the binary and the labels (required)")
	revision := flag.String("revision", "", "the commit, for the labels")
	epoch := flag.String("epoch", os.Getenv("SOURCE_DATE_EPOCH"), "every timestamp in the image, in Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	push := flag.String("push", "", "push to this registry reference, host/repository[:tag] (default tag: the version)")
	arches := flag.String("arch", strings.Join(image.Architectures, ","), "architectures, comma-separated")
	flag.Parse()

	var secs int64
	if *epoch != "" {
		var err error
		if secs, err = strconv.ParseInt(*epoch, 10, 64); err != nil {
			return fmt.Errorf("-epoch %q: want Unix seconds, as `git log -1 --format=%%ct` prints", *epoch)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	start := time.Now()
	res, err := image.Build(ctx, image.Options{
		Root:          *root,
		Version:       *version,
		Revision:      *revision,
		Epoch:         time.Unix(secs, 0),
		WorkDir:       *out,
		Architectures: strings.Split(*arches, ","),
	})
	if err != nil {
		return err
	}
	digest, err := res.WriteLayout(filepath.Join(*out, "oci"), filepath.Join(*out, "sbom"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "digest"), []byte(digest.String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("%s/oci  %s  (%s, %s)\n", *out, digest, *version, time.Since(start).Round(time.Second))
	for _, p := range res.Platforms {
		d, err := p.Image.Digest()
		if err != nil {
			return err
		}
		size, err := compressedSize(p)
		if err != nil {
			return err
		}
		fmt.Printf("  linux/%-6s %s  %.1f MB compressed\n", p.Arch, d, float64(size)/1e6)
	}
	if *push != "" {
		at, err := res.Push(ctx, *push)
		if err != nil {
			return err
		}
		fmt.Println("pushed", at)
	}
	return nil
}

// compressedSize is what a pull of p downloads: manifest, config and
// layers.
func compressedSize(p image.Platform) (int64, error) {
	m, err := p.Image.Manifest()
	if err != nil {
		return 0, err
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	raw, err := p.Image.RawManifest()
	return n + int64(len(raw)), err
}
