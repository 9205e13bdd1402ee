package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// versionVar is the variable the Makefile's LDFLAGS stamp with the release.
const versionVar = "flotilla.io/flotilla/internal/cli.Version"

// buildBinary compiles cmd/flotilla of the repository at root for
// linux/goarch into out. The flags are the ones that make the output depend
// on the sources alone: no cgo (a static binary for a base without libc),
// -trimpath (no build directory inside), -buildvcs=false (no checkout state;
// the revision goes into the image's labels instead), and symbols stripped
// (-s -w: smaller; stack traces keep function names and lines, and the
// module list that the SBOM is made from stays in the binary).
//
// GOFLAGS from the environment is cleared, so that a developer's -race or
// -cover cannot change what ships. The Go build cache is used: a second
// build of one commit relinks from cached packages.
func buildBinary(ctx context.Context, root, goarch, version, out string) error {
	ldflags := "-s -w -X " + versionVar + "=" + version
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", ldflags, "-o", out, "./cmd/flotilla")
	cmd.Dir = root
	cmd.Env = append(withoutEnv(os.Environ(), "GOFLAGS", "GOOS", "GOARCH", "CGO_ENABLED", "GOAMD64", "GOARM64"),
		"GOFLAGS=", "GOOS=linux", "GOARCH="+goarch, "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/flotilla for linux/%s in %s: %w\n%s", goarch, root, err, stderr.Bytes())
	}
	return nil
}

// withoutEnv returns env without the variables named.
func withoutEnv(env []string, names ...string) []string {
	var kept []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			kept = append(kept, kv)
		}
	}
	return kept
}

// repositoryRoot checks that root holds Flotilla's module and returns it
// as an absolute path.
func repositoryRoot(root string) (string, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(abs, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("repository root %s: %w", root, err)
	}
	if !bytes.HasPrefix(b, []byte("module flotilla.io/flotilla\n")) {
		return "", fmt.Errorf("repository root %s: go.mod is not module flotilla.io/flotilla", root)
	}
	return abs, nil
}
