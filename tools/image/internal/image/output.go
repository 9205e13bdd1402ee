package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// WriteLayout replaces dir with an OCI image layout holding the image
// index (named by its version, org.opencontainers.image.ref.name) and each
// platform's SBOM artifact, and writes the SBOMs beside it as
// sbomDir/flotilla-linux-<arch>.spdx.json. It returns the index digest.
func (r *Result) WriteLayout(dir, sbomDir string) (v1.Hash, error) {
	if err := os.RemoveAll(dir); err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	if err := p.AppendIndex(r.Index, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": r.Version,
	})); err != nil {
		return v1.Hash{}, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	if err := os.MkdirAll(sbomDir, 0o755); err != nil {
		return v1.Hash{}, err
	}
	for _, pl := range r.Platforms {
		if err := p.AppendImage(pl.SBOMArtifact); err != nil {
			return v1.Hash{}, fmt.Errorf("oci layout %s: sbom of linux/%s: %w", dir, pl.Arch, err)
		}
		if err := os.WriteFile(filepath.Join(sbomDir, "flotilla-linux-"+pl.Arch+".spdx.json"), pl.SBOM, 0o644); err != nil {
			return v1.Hash{}, err
		}
	}
	return r.Index.Digest()
}

// Push uploads the index, its images and their SBOM artifacts to target
// (host/repository[:tag]; without a tag the version is the tag) and
// returns the index's reference by digest. Credentials come from the
// Docker config (~/.docker/config.json, credential helpers), as for any
// registry client; further options (a transport, say) are appended.
func (r *Result) Push(ctx context.Context, target string, options ...remote.Option) (name.Digest, error) {
	ref, err := name.ParseReference(target, name.WithDefaultTag(r.Version))
	if err != nil {
		return name.Digest{}, fmt.Errorf("registry reference %q: %w", target, err)
	}
	opts := append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, options...)
	if err := remote.WriteIndex(ref, r.Index, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	for _, pl := range r.Platforms {
		d, err := pl.SBOMArtifact.Digest()
		if err != nil {
			return name.Digest{}, err
		}
		at := ref.Context().Digest(d.String())
		if err := remote.Write(at, pl.SBOMArtifact, opts...); err != nil {
			return name.Digest{}, fmt.Errorf("push the sbom of linux/%s to %s: %w", pl.Arch, at, err)
		}
	}
	d, err := r.Index.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return ref.Context().Digest(d.String()), nil
}
