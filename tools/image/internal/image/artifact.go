package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// emptyConfig is the OCI 1.1 empty descriptor's content, the config of an
// artifact that has nothing to configure.
var emptyConfig = []byte("{}")

const emptyConfigMediaType types.MediaType = "application/vnd.oci.empty.v1+json"

// sbomArtifact is an OCI 1.1 artifact manifest (artifactType
// application/spdx+json, empty config, the document as its one blob) whose
// subject is the image it describes. Pushed next to the image, it is found
// through the registry's referrers API (or ggcr's tag fallback where that
// API is missing), so the SBOM travels with the image.
func sbomArtifact(doc []byte, subject v1.Descriptor, title string, created time.Time) (v1.Image, error) {
	blob := static.NewLayer(doc, SBOMMediaType)
	blobDigest, err := blob.Digest()
	if err != nil {
		return nil, err
	}
	cfgDigest, _, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return nil, err
	}
	subject = v1.Descriptor{MediaType: subject.MediaType, Size: subject.Size, Digest: subject.Digest}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  SBOMMediaType,
		Config:        v1.Descriptor{MediaType: emptyConfigMediaType, Size: int64(len(emptyConfig)), Digest: cfgDigest},
		Layers: []v1.Descriptor{{
			MediaType:   SBOMMediaType,
			Size:        int64(len(doc)),
			Digest:      blobDigest,
			Annotations: map[string]string{"org.opencontainers.image.title": title},
		}},
		Subject:     &subject,
		Annotations: map[string]string{"org.opencontainers.image.created": created.UTC().Format(time.RFC3339)},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&artifact{manifest: raw, blob: blob, blobDigest: blobDigest})
}

// artifact is the minimal image core of an artifact manifest: its manifest
// bytes, the empty config and one blob.
type artifact struct {
	manifest   []byte
	blob       v1.Layer
	blobDigest v1.Hash
}

var _ partial.CompressedImageCore = (*artifact)(nil)

func (a *artifact) RawConfigFile() ([]byte, error) { return emptyConfig, nil }

func (a *artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (a *artifact) RawManifest() ([]byte, error) { return a.manifest, nil }

func (a *artifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == a.blobDigest {
		return a.blob, nil
	}
	return nil, fmt.Errorf("sbom artifact: no blob %s", h)
}
