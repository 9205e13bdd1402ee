// Package image builds Flotilla's container image without a Docker engine:
// one OCI image index with a linux/amd64 and a linux/arm64 image of
// cmd/flotilla, each on a base filesystem the build writes itself, so that
// nothing is pulled.
//
//	repository ──go build (CGO_ENABLED=0, -trimpath)──▶ /flotilla per arch
//	                                                      │
//	base files (passwd, group, CA roots, /tmp) ─┐         │ debug/buildinfo
//	                                            ▼         ▼
//	                      layer 1: base    layer 2: /flotilla    SBOM (SPDX)
//	                                  └──── image per arch ◀──subject── artifact
//	                                              │
//	                                         image index ──▶ OCI layout, registry
//
// Every input that could vary between two builds of one commit is fixed:
// file times are the commit time (SOURCE_DATE_EPOCH), entries are sorted,
// owners are numeric, gzip runs at one level with an empty header, and the
// config's created time is the commit time. The same commit built with the
// same Go toolchain therefore gives the same index digest.
package image
