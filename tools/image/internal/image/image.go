package image

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Architectures are the image index's platforms (all linux).
var Architectures = []string{"amd64", "arm64"}

// Options are a build's inputs. Everything the image's bytes depend on is
// here or in the repository at Root.
type Options struct {
	Root     string    // the repository (its go.mod is module flotilla.io/flotilla)
	Version  string    // stamped into the binary (cli.Version) and the labels
	Revision string    // the commit, for the labels; may be empty
	Epoch    time.Time // every timestamp in the image (SOURCE_DATE_EPOCH)
	// WorkDir receives the binaries, flotilla-linux-<arch>.
	WorkDir string
	// Architectures to build, default Architectures.
	Architectures []string
}

// Platform is one architecture's image.
type Platform struct {
	Arch   string
	Binary string   // path of the binary in the image, as built
	Image  v1.Image // the runnable image
	SBOM   []byte   // SPDX JSON of the binary's modules
	// SBOMArtifact is the OCI artifact that carries SBOM and names Image
	// as its subject, so that registries list it as a referrer of Image.
	SBOMArtifact v1.Image
}

// Result is a build's output.
type Result struct {
	Index     v1.ImageIndex
	Platforms []Platform
	Version   string
}

// Build compiles cmd/flotilla for each architecture and assembles the
// image index. It writes only the binaries, into o.WorkDir.
func Build(ctx context.Context, o Options) (*Result, error) {
	root, err := repositoryRoot(o.Root)
	if err != nil {
		return nil, err
	}
	if o.Version == "" {
		return nil, fmt.Errorf("build: a version is required (the Makefile passes $(VERSION))")
	}
	arches := o.Architectures
	if len(arches) == 0 {
		arches = Architectures
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	epoch := o.Epoch.UTC()

	files, err := baseFiles()
	if err != nil {
		return nil, err
	}
	base, err := layer(files, epoch)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}

	res := &Result{Version: o.Version}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range arches {
		bin := filepath.Join(o.WorkDir, "flotilla-linux-"+arch)
		if err := buildBinary(ctx, root, arch, o.Version, bin); err != nil {
			return nil, err
		}
		p, err := platformImage(o, arch, bin, base, epoch)
		if err != nil {
			return nil, fmt.Errorf("image for linux/%s: %w", arch, err)
		}
		res.Platforms = append(res.Platforms, *p)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        p.Image,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	res.Index = mutate.Annotations(idx, annotations(o, epoch)).(v1.ImageIndex)
	return res, nil
}

// annotations are the OCI labels of the image and its index.
func annotations(o Options, epoch time.Time) map[string]string {
	a := map[string]string{
		"org.opencontainers.image.title":   "flotilla",
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.created": epoch.Format(time.RFC3339),
	}
	if o.Revision != "" {
		a["org.opencontainers.image.revision"] = o.Revision
	}
	return a
}

// platformImage assembles one architecture's image from the base layer
// and the binary at bin, and its SBOM.
func platformImage(o Options, arch, bin string, base v1.Layer, epoch time.Time) (*Platform, error) {
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	info, err := buildinfo.Read(bytes.NewReader(binary))
	if err != nil {
		return nil, fmt.Errorf("build information of %s: %w", bin, err)
	}
	app, err := layer([]file{{Path: "flotilla", Mode: 0o755, Data: binary}}, epoch)
	if err != nil {
		return nil, fmt.Errorf("binary layer: %w", err)
	}

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: epoch},
			CreatedBy: "flotilla image: base (passwd, group, nsswitch.conf, CA roots, /tmp, /home/nonroot)"}},
		mutate.Addendum{Layer: app, History: v1.History{Created: v1.Time{Time: epoch},
			CreatedBy: "flotilla image: /flotilla (" + info.GoVersion + ", CGO_ENABLED=0, -trimpath)"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", nonrootUID, nonrootUID),
		Entrypoint: []string{"/flotilla"},
		WorkingDir: "/" + nonrootHome,
		Env:        []string{"HOME=/" + nonrootHome},
		Labels:     annotations(o, epoch),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}

	platform := "linux/" + arch
	doc, err := sbom(info, binary, o.Version, platform, epoch)
	if err != nil {
		return nil, err
	}
	subject, err := partial.Descriptor(img)
	if err != nil {
		return nil, err
	}
	art, err := sbomArtifact(doc, *subject, "flotilla-linux-"+arch+".spdx.json", epoch)
	if err != nil {
		return nil, err
	}
	return &Platform{Arch: arch, Binary: bin, Image: img, SBOM: doc, SBOMArtifact: art}, nil
}
