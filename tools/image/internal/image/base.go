package image

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io/fs"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The user the image runs as: not root, and the same numbers distroless
// images use, so that volume ownership carries over between them.
const (
	nonrootUID  = 65532
	nonrootHome = "home/nonroot"
)

// caBundlePath is where Go's crypto/x509 looks first on Linux.
const caBundlePath = "etc/ssl/certs/ca-certificates.crt"

// baseFiles is the image's base: the few files a static Go binary needs
// from its filesystem, and nothing that could run a command (no shell, no
// libc, no package manager).
//
//   - /etc/passwd and /etc/group name root and nonroot (65532), so that
//     os/user and tools that map numbers to names work;
//   - /etc/nsswitch.conf makes Go's resolver read /etc/hosts before DNS,
//     which Kubernetes' host aliases rely on;
//   - /etc/ssl/certs/ca-certificates.crt holds the public roots: the server
//     verifies an OIDC issuer (internal/authn) and may reach PostgreSQL over
//     TLS with the system pool, and these are the only roots such a
//     connection has;
//   - /tmp (sticky, world-writable) and the home directory of nonroot,
//     which is the working directory and the default ./flotilla-data's
//     parent.
func baseFiles() ([]file, error) {
	roots, err := caBundle()
	if err != nil {
		return nil, err
	}
	return []file{
		{Path: "etc", Dir: true, Mode: 0o755},
		{Path: "etc/passwd", Mode: 0o644, Data: []byte(
			"root:x:0:0:root:/root:/sbin/nologin\n" +
				fmt.Sprintf("nonroot:x:%d:%d:nonroot:/%s:/sbin/nologin\n", nonrootUID, nonrootUID, nonrootHome))},
		{Path: "etc/group", Mode: 0o644, Data: []byte(
			"root:x:0:\n" +
				fmt.Sprintf("nonroot:x:%d:\n", nonrootUID))},
		{Path: "etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "etc/ssl", Dir: true, Mode: 0o755},
		{Path: "etc/ssl/certs", Dir: true, Mode: 0o755},
		{Path: caBundlePath, Mode: 0o644, Data: roots},
		{Path: "home", Dir: true, Mode: 0o755},
		{Path: nonrootHome, Dir: true, Mode: 0o700, UID: nonrootUID, GID: nonrootUID},
		{Path: "tmp", Dir: true, Mode: 0o777 | fs.ModeSticky},
	}, nil
}

// caBundle is the PEM file of Mozilla's root store as pinned by the
// golang.org/x/crypto/x509roots/fallback version in go.mod, rather than the
// build machine's /etc/ssl/certs: the roots then change only with a
// reviewed go.mod bump, and two machines build the same layer. Roots that
// NSS trusts only with a distrust-after date are left out, since a PEM
// file cannot carry the constraint and trusting them without it would be
// wider than Mozilla's policy.
func caBundle() ([]byte, error) {
	var b bytes.Buffer
	n := 0
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("base: the pinned root store has no unconstrained roots")
	}
	return b.Bytes(), nil
}
