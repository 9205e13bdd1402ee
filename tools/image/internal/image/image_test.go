package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// The tests share one build of both architectures (cross-compiling
// cmd/flotilla is the expensive part); the reproducibility test makes the
// second.
var (
	testRoot    = "../../../.."
	testVersion = "v0.0.0-imagetest"
	testEpoch   = time.Unix(1700000000, 0)
	testDir     string

	firstOnce sync.Once
	first     *Result
	firstErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-image-test-")
	if err != nil {
		log.Fatal(err)
	}
	testDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func testBuild(t *testing.T, workDir string) *Result {
	t.Helper()
	start := time.Now()
	res, err := Build(context.Background(), Options{
		Root: testRoot, Version: testVersion, Revision: "0123456789abcdef0123456789abcdef01234567",
		Epoch: testEpoch, WorkDir: workDir,
	})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("built %s in %s", workDir, time.Since(start).Round(time.Millisecond))
	return res
}

// built is the shared first build.
func built(t *testing.T) *Result {
	t.Helper()
	firstOnce.Do(func() {
		defer func() {
			if first == nil && firstErr == nil {
				firstErr = errors.New("the first build failed")
			}
		}()
		first = testBuild(t, filepath.Join(testDir, "first"))
	})
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	return first
}

func TestLayerIsAFunctionOfItsFilesAndEpoch(t *testing.T) {
	files := []file{
		{Path: "b", Mode: 0o644, Data: []byte("b")},
		{Path: "a", Dir: true, Mode: 0o755},
		{Path: "a/c", Mode: 0o600, UID: 7, GID: 7, Data: []byte("c")},
	}
	shuffled := []file{files[2], files[0], files[1]}
	d := func(fs []file, at time.Time) v1.Hash {
		t.Helper()
		l, err := layer(fs, at)
		if err != nil {
			t.Fatal(err)
		}
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if a, b := d(files, testEpoch), d(shuffled, testEpoch); a != b {
		t.Errorf("the same files in another order give another layer: %s, %s", a, b)
	}
	if a, b := d(files, testEpoch), d(files, testEpoch.Add(time.Second)); a == b {
		t.Errorf("another epoch gives the same layer %s: the entries' times are not the epoch", a)
	}

	l, err := layer(shuffled, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	forEachEntry(t, l, func(h *tar.Header, _ []byte) {
		names = append(names, h.Name)
		if !h.ModTime.Equal(testEpoch) {
			t.Errorf("%s: mtime %s, want the epoch %s", h.Name, h.ModTime, testEpoch)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner names %q/%q, want numeric owners only", h.Name, h.Uname, h.Gname)
		}
	})
	if got, want := strings.Join(names, " "), "a/ a/c b"; got != want {
		t.Errorf("entries %q, want %q (sorted, directories first)", got, want)
	}
	if _, err := layer(append(files, file{Path: "b"}), testEpoch); err == nil {
		t.Error("a path listed twice was accepted")
	}
}

func TestTheSameCommitBuildsToTheSameDigestsOnBothArchitectures(t *testing.T) {
	a := built(t)
	b := testBuild(t, filepath.Join(testDir, "second"))

	if len(a.Platforms) != 2 || a.Platforms[0].Arch != "amd64" || a.Platforms[1].Arch != "arm64" {
		t.Fatalf("platforms %+v, want amd64 and arm64", a.Platforms)
	}
	for i, pa := range a.Platforms {
		pb := b.Platforms[i]
		ba, err := os.ReadFile(pa.Binary)
		if err != nil {
			t.Fatal(err)
		}
		bb, err := os.ReadFile(pb.Binary)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ba, bb) {
			t.Errorf("linux/%s: the two binaries differ", pa.Arch)
		}
		la, lb := layerDigests(t, pa.Image), layerDigests(t, pb.Image)
		if strings.Join(la, " ") != strings.Join(lb, " ") {
			t.Errorf("linux/%s: layers %v and %v", pa.Arch, la, lb)
		}
		if da, db := digest(t, pa.Image), digest(t, pb.Image); da != db {
			t.Errorf("linux/%s: image %s and %s", pa.Arch, da, db)
		}
		if !bytes.Equal(pa.SBOM, pb.SBOM) {
			t.Errorf("linux/%s: the SBOMs differ", pa.Arch)
		}
		if da, db := digest(t, pa.SBOMArtifact), digest(t, pb.SBOMArtifact); da != db {
			t.Errorf("linux/%s: sbom artifact %s and %s", pa.Arch, da, db)
		}
	}
	da, err := a.Index.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Index.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Errorf("index %s and %s: the same commit gave two images", da, db)
	}

	// The layouts on disk are byte for byte the same, too.
	ha, err := a.WriteLayout(filepath.Join(testDir, "layout-a"), filepath.Join(testDir, "sbom-a"))
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.WriteLayout(filepath.Join(testDir, "layout-b"), filepath.Join(testDir, "sbom-b"))
	if err != nil {
		t.Fatal(err)
	}
	if ha != da || hb != db {
		t.Errorf("layouts hold %s and %s, want the index %s", ha, hb, da)
	}
	if sa, sb := treeSum(t, filepath.Join(testDir, "layout-a")), treeSum(t, filepath.Join(testDir, "layout-b")); sa != sb {
		t.Errorf("the two layouts differ:\n%s\n%s", sa, sb)
	}
}

// shells are the names of programs that would give a shell in the image.
var shells = map[string]bool{"sh": true, "bash": true, "ash": true, "dash": true, "zsh": true, "ksh": true,
	"mksh": true, "csh": true, "tcsh": true, "fish": true, "busybox": true, "toybox": true}

func TestTheImageRunsAsANonrootUserAndHasNoShell(t *testing.T) {
	res := built(t)
	for _, p := range res.Platforms {
		t.Run(p.Arch, func(t *testing.T) {
			cf, err := p.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != "linux" || cf.Architecture != p.Arch {
				t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, p.Arch)
			}
			if !cf.Created.Time.Equal(testEpoch) {
				t.Errorf("created %s, want the epoch %s", cf.Created.Time, testEpoch)
			}
			c := cf.Config
			if c.User != "65532:65532" {
				t.Errorf("user %q, want 65532:65532 (numeric, so that Kubernetes' runAsNonRoot can check it)", c.User)
			}
			if len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/flotilla" || len(c.Cmd) != 0 {
				t.Errorf("entrypoint %q cmd %q, want [/flotilla] and no cmd", c.Entrypoint, c.Cmd)
			}

			fsys := flatten(t, p.Image)
			for name, e := range fsys {
				if shells[path.Base(name)] {
					t.Errorf("%s is in the image: it must have no shell", name)
				}
				if e.hdr.Typeflag == tar.TypeSymlink || e.hdr.Typeflag == tar.TypeLink {
					t.Errorf("%s is a link; the base has none", name)
				}
				if e.hdr.Typeflag == tar.TypeReg && e.hdr.Mode&0o111 != 0 && name != "flotilla" {
					t.Errorf("%s is executable; /flotilla is the only program", name)
				}
			}
			for _, want := range []string{"bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox"} {
				if _, ok := fsys[want]; ok {
					t.Errorf("/%s exists", want)
				}
			}

			passwd := string(fsys["etc/passwd"].data)
			if !strings.Contains(passwd, "\nnonroot:x:65532:65532:") {
				t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", passwd)
			}
			if strings.Contains(passwd, "/bin/sh") || strings.Contains(passwd, "/bin/bash") {
				t.Errorf("/etc/passwd names a shell:\n%s", passwd)
			}
			home, ok := fsys[strings.TrimPrefix(c.WorkingDir, "/")]
			if !ok || home.hdr.Typeflag != tar.TypeDir || home.hdr.Uid != 65532 {
				t.Errorf("working directory %q: want a directory owned by 65532, got %+v", c.WorkingDir, home.hdr)
			}
			if tmp, ok := fsys["tmp"]; !ok || tmp.hdr.Mode != 0o1777 {
				t.Errorf("/tmp: want mode 1777")
			}
			if roots := bytes.Count(fsys[caBundlePath].data, []byte("-----BEGIN CERTIFICATE-----")); roots < 100 {
				t.Errorf("/%s holds %d roots, want Mozilla's store (over 100)", caBundlePath, roots)
			}

			bin, ok := fsys["flotilla"]
			if !ok || bin.hdr.Mode != 0o755 || bin.hdr.Uid != 0 {
				t.Fatalf("/flotilla: want a root-owned file with mode 0755 that nonroot cannot rewrite, got %+v", bin.hdr)
			}
			assertStaticELF(t, bin.data, p.Arch)
		})
	}
}

// assertStaticELF checks that b is an executable for arch that needs no
// dynamic loader (the base has no libc).
func assertStaticELF(t *testing.T, b []byte, arch string) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("/flotilla is not an ELF file: %v", err)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		t.Errorf("/flotilla is for %s, want %s", f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("/flotilla is dynamically linked (%s)", p.Type)
		}
	}
}

func TestTheSBOMListsEveryModuleOfTheBinaryAndIsAttachedToItsImage(t *testing.T) {
	res := built(t)
	dir := filepath.Join(testDir, "sbom-layout")
	if _, err := res.WriteLayout(filepath.Join(dir, "oci"), filepath.Join(dir, "sbom")); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.FromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	topManifest, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}

	for _, p := range res.Platforms {
		t.Run(p.Arch, func(t *testing.T) {
			bin := flatten(t, p.Image)["flotilla"].data
			info, err := buildinfo.Read(bytes.NewReader(bin))
			if err != nil {
				t.Fatal(err)
			}
			if len(info.Deps) < 20 {
				t.Fatalf("the binary lists %d modules; that is not cmd/flotilla", len(info.Deps))
			}

			beside, err := os.ReadFile(filepath.Join(dir, "sbom", "flotilla-linux-"+p.Arch+".spdx.json"))
			if err != nil {
				t.Fatal(err)
			}
			var doc spdxDocument
			if err := json.Unmarshal(beside, &doc); err != nil {
				t.Fatalf("the SBOM beside the image is not JSON: %v", err)
			}
			if doc.SPDXVersion != "SPDX-2.3" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" {
				t.Errorf("spdx %q created %q", doc.SPDXVersion, doc.CreationInfo.Created)
			}
			listed := map[string]spdxPackage{}
			for _, pkg := range doc.Packages {
				listed[pkg.Name+"@"+pkg.VersionInfo] = pkg
			}
			for _, m := range info.Deps {
				if m.Replace != nil {
					m = m.Replace
				}
				pkg, ok := listed[m.Path+"@"+m.Version]
				if !ok {
					t.Errorf("module %s %s is in the binary but not in the SBOM", m.Path, m.Version)
					continue
				}
				if m.Sum != "" && !strings.Contains(pkg.Comment, m.Sum) {
					t.Errorf("module %s: the SBOM lacks its go.sum hash %s", m.Path, m.Sum)
				}
			}
			if _, ok := listed["stdlib@"+info.GoVersion]; !ok {
				t.Errorf("the SBOM does not name the Go standard library %s", info.GoVersion)
			}
			sum := sha256.Sum256(bin)
			main := listed["flotilla.io/flotilla@"+testVersion]
			if len(main.Checksums) != 1 || main.Checksums[0].ChecksumValue != hex.EncodeToString(sum[:]) {
				t.Errorf("the SBOM's flotilla package %+v does not carry /flotilla's SHA-256", main)
			}
			if len(doc.Relationships) != len(doc.Packages) {
				t.Errorf("%d relationships for %d packages: every package is described or depended on", len(doc.Relationships), len(doc.Packages))
			}

			// In the layout, an artifact whose subject is this image carries
			// the same document.
			imgDigest := digest(t, p.Image)
			var found bool
			for _, desc := range topManifest.Manifests {
				if desc.ArtifactType != SBOMMediaType {
					continue
				}
				art, err := lp.Image(desc.Digest)
				if err != nil {
					t.Fatal(err)
				}
				m, err := art.Manifest()
				if err != nil {
					t.Fatal(err)
				}
				if m.Subject == nil || m.Subject.Digest != imgDigest {
					continue
				}
				found = true
				if got := layerBytes(t, art); !bytes.Equal(got, beside) {
					t.Error("the attached SBOM differs from the one beside the image")
				}
			}
			if !found {
				t.Errorf("no SBOM artifact in the layout has linux/%s's image %s as its subject", p.Arch, imgDigest)
			}
		})
	}
}

func TestTheIndexPushedToALoopbackRegistryPullsBackByDigestUnchanged(t *testing.T) {
	res := built(t)
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u.Host, "127.0.0.1:") {
		t.Fatalf("the registry serves on %s, want loopback", u.Host)
	}

	// No tag: the version is the tag, as for make image REGISTRY=host/repo.
	at, err := res.Push(context.Background(), u.Host+"/flotilla/flotilla")
	if err != nil {
		t.Fatal(err)
	}
	want, err := res.Index.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if at.DigestStr() != want.String() {
		t.Fatalf("push reported %s, want the built index %s", at, want)
	}
	tagged, err := remote.Head(at.Context().Tag(testVersion))
	if err != nil {
		t.Fatalf("the version tag was not pushed: %v", err)
	}
	if tagged.Digest != want {
		t.Errorf("tag %s is %s, want %s", testVersion, tagged.Digest, want)
	}

	pulled, err := remote.Index(at)
	if err != nil {
		t.Fatalf("pull %s: %v", at, err)
	}
	if got, err := pulled.Digest(); err != nil || got != want {
		t.Fatalf("pulled %s (%v), want %s", got, err, want)
	}
	rawBuilt, err := res.Index.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	rawPulled, err := pulled.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rawBuilt, rawPulled) {
		t.Errorf("the pulled index differs:\n%s\n%s", rawBuilt, rawPulled)
	}
	// Every blob comes back and hashes to its descriptor.
	if err := validate.Index(pulled); err != nil {
		t.Errorf("the pulled index does not validate: %v", err)
	}

	for _, p := range res.Platforms {
		d := digest(t, p.Image)
		img, err := remote.Image(at.Context().Digest(d.String()))
		if err != nil {
			t.Fatalf("pull linux/%s by digest: %v", p.Arch, err)
		}
		if got, want := strings.Join(layerDigests(t, img), " "), strings.Join(layerDigests(t, p.Image), " "); got != want {
			t.Errorf("linux/%s: pulled layers %s, want %s", p.Arch, got, want)
		}
		refs, err := remote.Referrers(at.Context().Digest(d.String()))
		if err != nil {
			t.Fatalf("referrers of linux/%s: %v", p.Arch, err)
		}
		rm, err := refs.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(rm.Manifests) != 1 {
			t.Fatalf("referrers of linux/%s: %+v, want its SBOM", p.Arch, rm.Manifests)
		}
		// ggcr's registry lists a referrer under its config's media type
		// rather than its artifactType, so the manifest itself is checked.
		art, err := remote.Image(at.Context().Digest(rm.Manifests[0].Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := art.Manifest(); err != nil || m.ArtifactType != SBOMMediaType {
			t.Fatalf("the referrer of linux/%s is not an SBOM: %+v (%v)", p.Arch, m, err)
		}
		if !bytes.Equal(layerBytes(t, art), p.SBOM) {
			t.Errorf("linux/%s: the SBOM pulled from the registry differs from the built one", p.Arch)
		}
	}
}

func TestTheImagesBinaryRunsAndReportsItsVersion(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("cannot run a linux binary on %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	res := built(t)
	for _, p := range res.Platforms {
		if p.Arch != runtime.GOARCH {
			continue
		}
		bin := filepath.Join(t.TempDir(), "flotilla")
		if err := os.WriteFile(bin, flatten(t, p.Image)["flotilla"].data, 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil {
			t.Fatalf("/flotilla version: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), testVersion) {
			t.Errorf("/flotilla version printed %q, want the stamped %s", out, testVersion)
		}
		return
	}
	t.Fatalf("no image for this machine's %s", runtime.GOARCH)
}

// entry is a file of an image's flattened filesystem.
type entry struct {
	hdr  *tar.Header
	data []byte
}

// flatten reads img's filesystem (its layers applied in order), keyed by
// path without a leading or trailing slash.
func flatten(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]entry{}
	readTar(t, rc, func(h *tar.Header, b []byte) {
		out[strings.Trim(path.Clean(h.Name), "/")] = entry{hdr: h, data: b}
	})
	return out
}

// forEachEntry calls fn with each entry of l, in order.
func forEachEntry(t *testing.T, l v1.Layer, fn func(*tar.Header, []byte)) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	readTar(t, rc, fn)
}

func readTar(t *testing.T, r io.Reader, fn func(*tar.Header, []byte)) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		fn(h, b)
	}
}

type digester interface{ Digest() (v1.Hash, error) }

func digest(t *testing.T, d digester) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func layerDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		out = append(out, digest(t, l).String())
	}
	return out
}

// layerBytes is the content of an artifact's one blob.
func layerBytes(t *testing.T, art v1.Image) []byte {
	t.Helper()
	ls, err := art.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 {
		t.Fatalf("the artifact has %d blobs, want 1", len(ls))
	}
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// treeSum lists every file under dir with its SHA-256.
func treeSum(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%x %s", sha256.Sum256(b), rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}
