package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

// SBOMMediaType is the media type of the SBOM, as a file's content and as
// the artifact type of the OCI artifact that attaches it to an image.
const SBOMMediaType = "application/spdx+json"

// The subset of SPDX 2.3 (JSON) that the SBOM uses.
type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	SPDXID                string         `json:"SPDXID"`
	Name                  string         `json:"name"`
	VersionInfo           string         `json:"versionInfo"`
	DownloadLocation      string         `json:"downloadLocation"`
	FilesAnalyzed         bool           `json:"filesAnalyzed"`
	PrimaryPackagePurpose string         `json:"primaryPackagePurpose,omitempty"`
	Checksums             []spdxChecksum `json:"checksums,omitempty"`
	ExternalRefs          []spdxExtRef   `json:"externalRefs,omitempty"`
	Comment               string         `json:"comment,omitempty"`
}

type spdxChecksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

type spdxExtRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// sbom is the SPDX document of one built binary: the binary itself (by its
// SHA-256), the Go standard library of the toolchain that built it, and
// every module the linker put in, with its version and go.sum hash, all
// read from the build information the Go linker records in the binary
// (what `go version -m` prints). A replaced module is listed as its
// replacement, which is what was compiled.
//
// The document is a function of its arguments: its creation time is the
// build's epoch and its namespace is derived from the binary's digest.
func sbom(info *debug.BuildInfo, binary []byte, version, platform string, created time.Time) ([]byte, error) {
	sum := sha256.Sum256(binary)
	digest := hex.EncodeToString(sum[:])
	main := spdxPackage{
		SPDXID:                "SPDXRef-Package-flotilla",
		Name:                  info.Main.Path,
		VersionInfo:           version,
		DownloadLocation:      "NOASSERTION",
		PrimaryPackagePurpose: "APPLICATION",
		Checksums:             []spdxChecksum{{Algorithm: "SHA256", ChecksumValue: digest}},
		ExternalRefs:          []spdxExtRef{purl(info.Main.Path, version)},
		Comment:               "the binary /flotilla for " + platform + "; built with " + buildSettings(info),
	}
	goVersion := strings.TrimPrefix(info.GoVersion, "go")
	stdlib := spdxPackage{
		SPDXID:                "SPDXRef-Package-stdlib",
		Name:                  "stdlib",
		VersionInfo:           info.GoVersion,
		DownloadLocation:      "https://go.dev/dl/",
		PrimaryPackagePurpose: "LIBRARY",
		ExternalRefs:          []spdxExtRef{purl("stdlib", goVersion)},
		Comment:               "the Go standard library and runtime linked into the binary",
	}
	doc := spdxDocument{
		SPDXVersion:       "SPDX-2.3",
		DataLicense:       "CC0-1.0",
		SPDXID:            "SPDXRef-DOCUMENT",
		Name:              "flotilla-" + version + "-" + strings.ReplaceAll(platform, "/", "-"),
		DocumentNamespace: "https://flotilla.io/spdx/flotilla/" + version + "/" + platform + "/sha256-" + digest,
		CreationInfo: spdxCreationInfo{
			Created:  created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: flotilla-image", "Tool: " + info.GoVersion + " debug/buildinfo"},
		},
		Packages: []spdxPackage{main, stdlib},
		Relationships: []spdxRelationship{
			{Element: "SPDXRef-DOCUMENT", Type: "DESCRIBES", Related: main.SPDXID},
			{Element: main.SPDXID, Type: "DEPENDS_ON", Related: stdlib.SPDXID},
		},
	}
	for i, m := range info.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		p := spdxPackage{
			SPDXID:                fmt.Sprintf("SPDXRef-Package-go-module-%d", i+1),
			Name:                  m.Path,
			VersionInfo:           m.Version,
			DownloadLocation:      "NOASSERTION",
			PrimaryPackagePurpose: "LIBRARY",
			ExternalRefs:          []spdxExtRef{purl(m.Path, m.Version)},
		}
		if m.Sum != "" {
			// The go.sum hash (h1:) is a hash of the module's file list,
			// not of a downloadable file, so it is no SPDX checksum.
			p.Comment = "go.sum " + m.Sum
		}
		if m.Version != "" && m.Sum != "" {
			p.DownloadLocation = "https://proxy.golang.org/" + escapeModulePath(m.Path) + "/@v/" + m.Version + ".zip"
		}
		doc.Packages = append(doc.Packages, p)
		doc.Relationships = append(doc.Relationships, spdxRelationship{Element: main.SPDXID, Type: "DEPENDS_ON", Related: p.SPDXID})
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// purl is the package URL of a Go module (pkg:golang/...), the identifier
// vulnerability scanners match on.
func purl(path, version string) spdxExtRef {
	loc := "pkg:golang/" + path
	if version != "" {
		loc += "@" + version
	}
	return spdxExtRef{ReferenceCategory: "PACKAGE-MANAGER", ReferenceType: "purl", ReferenceLocator: loc}
}

// buildSettings lists the settings that shaped the binary (GOARCH,
// CGO_ENABLED, -ldflags, -trimpath, ...), as `go version -m` does.
func buildSettings(info *debug.BuildInfo) string {
	var parts []string
	for _, s := range info.Settings {
		parts = append(parts, s.Key+"="+s.Value)
	}
	return strings.Join(parts, " ")
}

// escapeModulePath is the module proxy's case encoding: each upper-case
// letter becomes '!' and its lower-case form.
func escapeModulePath(path string) string {
	var b strings.Builder
	for _, r := range path {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
