package authn

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func keyIDs(keys []Key) map[string]bool {
	ids := map[string]bool{}
	for _, k := range keys {
		ids[k.ID] = true
	}
	return ids
}

// Two replicas rotating at once, many times, keep every key either made:
// each change re-reads the file under the lock instead of writing back
// what it held in memory.
func TestKeySetConcurrentRotationsKeepEveryKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	a, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Signer().ID != b.Signer().ID {
		t.Fatalf("two sets on one file start with different signers %s and %s", a.Signer().ID, b.Signer().ID)
	}
	const rounds = 20
	made := make(chan string, 2*rounds)
	var wg sync.WaitGroup
	for _, ks := range []*KeySet{a, b} {
		wg.Add(1)
		go func(ks *KeySet) {
			defer wg.Done()
			for range rounds {
				k, err := ks.Rotate()
				if err != nil {
					t.Error(err)
					return
				}
				made <- k.ID
			}
		}(ks)
	}
	wg.Wait()
	close(made)
	fresh, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	onDisk := keyIDs(fresh.Keys())
	if len(onDisk) != 2*rounds+1 {
		t.Errorf("file holds %d keys, want %d (the first and every rotation)", len(onDisk), 2*rounds+1)
	}
	for id := range made {
		if !onDisk[id] {
			t.Errorf("key %s made by a rotation is lost", id)
		}
		// Each replica verifies tokens of keys the other made.
		if _, ok := a.Lookup(id); !ok {
			t.Errorf("replica a does not find key %s", id)
		}
		if _, ok := b.Lookup(id); !ok {
			t.Errorf("replica b does not find key %s", id)
		}
	}
}

// A replica whose keys are out of date neither resurrects a key another
// removed nor drops a key another made.
func TestKeySetStaleReplicaDoesNotResurrectRemovedKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	a, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	old := a.Signer().ID
	b, err := OpenKeySet(path) // b holds only the old key from now on
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(old); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.lookup(old); !ok {
		t.Fatal("setup: b should still hold the old key in memory")
	}
	newest, err := b.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	ids := keyIDs(b.Keys())
	if ids[old] {
		t.Errorf("stale replica's rotation brought removed key %s back", old)
	}
	if len(ids) != 2 || !ids[newest.ID] || !ids[a.Signer().ID] {
		t.Errorf("keys after the stale rotation = %v, want b's new key and a's", ids)
	}
	if changed, err := a.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want changed", changed, err)
	}
	if a.Signer().ID != newest.ID {
		t.Errorf("a signs with %s after reload, want %s", a.Signer().ID, newest.ID)
	}
	if err := a.Remove(newest.ID); err == nil {
		t.Error("removing the signer succeeded")
	}
}

// A damaged file is reported by Reload, which keeps the keys it held, and
// a change refuses to write over a file it cannot read.
func TestKeySetDamagedFileKeepsKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	a, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	signer := a.Signer().ID
	if err := os.WriteFile(path, []byte(`{"keys":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reload(); err == nil {
		t.Error("Reload of a damaged file succeeded")
	}
	if a.Signer().ID != signer {
		t.Error("a damaged file replaced the keys held")
	}
	if _, err := a.Rotate(); err == nil {
		t.Error("Rotate wrote over a damaged file")
	}
	if b, _ := os.ReadFile(path); string(b) != `{"keys":[` {
		t.Errorf("the damaged file was changed to %q", b)
	}
}

// The key file is 0600 and stays so across rotations.
func TestKeySetFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k", "signing-keys.json")
	a, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v after rotation, want 0600", st.Mode().Perm())
	}
}

// Separate processes (server replicas on one host or a shared volume)
// rotating at once keep every key: the lock is a file lock, not a mutex.
func TestKeySetRotationsAcrossProcesses(t *testing.T) {
	if path := os.Getenv("FLOTILLA_TEST_KEYSET_ROTATE"); path != "" {
		ks, err := OpenKeySet(path)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(os.Getenv("FLOTILLA_TEST_KEYSET_ROUNDS"))
		for range n {
			if _, err := ks.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	const procs, rounds = 3, 15
	var wg sync.WaitGroup
	for range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKeySetRotationsAcrossProcesses$", "-test.count=1")
		cmd.Env = append(os.Environ(), "FLOTILLA_TEST_KEYSET_ROTATE="+path, "FLOTILLA_TEST_KEYSET_ROUNDS="+strconv.Itoa(rounds))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("rotating process: %v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	ks, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	// The processes may race to create the file; under the lock only one
	// does, so there is exactly one first key.
	if got, want := len(ks.Keys()), procs*rounds+1; got != want {
		t.Errorf("file holds %d keys after %d processes × %d rotations, want %d", got, procs, rounds, want)
	}
}

// A key file this server may read but not change (a mounted Kubernetes
// Secret) serves tokens, and a rotation or a removal is refused with
// ErrReadOnly, naming the file and what to do, and changes nothing. As
// root, whom file modes do not stop, the checks run in a child process of
// an unprivileged user.
func TestKeySetReadOnlyFileServesAndRefusesChanges(t *testing.T) {
	if path := os.Getenv("FLOTILLA_TEST_KEYSET_READONLY"); path != "" {
		readOnlyChecks(t, path)
		return
	}
	top := t.TempDir()
	dir := filepath.Join(top, "keys")
	path := filepath.Join(dir, "signing-keys.json")
	ks, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Rotate(); err != nil { // two keys, so that one may be removed
		t.Fatal(err)
	}
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })
	if os.Geteuid() != 0 {
		readOnlyChecks(t, path)
		return
	}
	// The test binary's directory is root's alone: run a copy.
	for _, d := range []string{filepath.Dir(top), top} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(top, "authn.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestKeySetReadOnlyFileServesAndRefusesChanges$", "-test.count=1", "-test.v")
	cmd.Dir = top
	cmd.Env = append(os.Environ(), "FLOTILLA_TEST_KEYSET_READONLY="+path, "GOCOVERDIR=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("checks as uid 65532: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestKeySetReadOnlyFileServesAndRefusesChanges") {
		t.Fatalf("the checks as uid 65532 did not run:\n%s", out)
	}
}

func readOnlyChecks(t *testing.T, path string) {
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := OpenKeySet(path)
	if err != nil {
		t.Fatalf("open a read-only key file: %v", err)
	}
	keys := ks.Keys()
	if len(keys) != 2 {
		t.Fatalf("keys %v", keys)
	}
	is := &Issuer{Name: "flotilla", Keys: ks}
	tok, _, err := is.Mint(Principal{Subject: "user:a", Method: MethodOIDC}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Verify(tok); err != nil {
		t.Errorf("a token signed with a read-only key set: %v", err)
	}
	_, rotErr := ks.Rotate()
	rmErr := ks.Remove(keys[1].ID)
	for op, err := range map[string]error{"Rotate": rotErr, "Remove": rmErr} {
		if !errors.Is(err, ErrReadOnly) {
			t.Errorf("%s of a read-only key file: %v, want ErrReadOnly", op, err)
			continue
		}
		for _, want := range []string{path, "read-only", "where the file comes from", "Secret"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: the error lacks %q: %v", op, want, err)
			}
		}
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("a refused change changed the file")
	}
	if got := ks.Keys(); len(got) != 2 || got[0].ID != keys[0].ID {
		t.Errorf("a refused change changed the keys held: %v", got)
	}
	missing := filepath.Join(filepath.Dir(path), "other.json")
	if _, err := OpenKeySet(missing); !errors.Is(err, ErrReadOnly) || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "other.json") {
		t.Errorf("a missing key file in a read-only directory: %v, want ErrReadOnly naming the key", err)
	}
}

// Where the Helm chart mounts the key file from a Secret, the kubelet
// updates it the way it updates every Secret volume: it writes the new
// files to a new directory and swaps the ..data symlink to it. A server
// takes the new keys on its next Reload, and a token of a key it has not
// seen yet verifies at once.
func TestKeySetFollowsASecretVolumeUpdate(t *testing.T) {
	src := filepath.Join(t.TempDir(), "signing-keys.json")
	orig, err := OpenKeySet(src)
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := os.ReadFile(src)
	if _, err := orig.Rotate(); err != nil { // the operator's new key, first
		t.Fatal(err)
	}
	v2, _ := os.ReadFile(src)

	vol := t.TempDir()
	write := func(version string, data []byte) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(vol, version), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vol, version, "signing-keys.json"), data, 0o444); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(vol, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..2026_01_01_00_00_00.1", v1)
	path := filepath.Join(vol, "signing-keys.json")
	if err := os.Symlink(filepath.Join("..data", "signing-keys.json"), path); err != nil {
		t.Fatal(err)
	}
	ks, err := OpenKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.Keys()) != 1 {
		t.Fatalf("keys before the update: %v", ks.Keys())
	}

	write("..2026_01_02_00_00_00.2", v2)
	newest := orig.Signer()
	tok, _, err := (&Issuer{Name: "flotilla", Keys: orig}).Mint(Principal{Subject: "user:a", Method: MethodOIDC}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Issuer{Name: "flotilla", Keys: ks}).Verify(tok); err != nil {
		t.Errorf("a token of the Secret's new key, before a Reload: %v", err)
	}
	if changed, err := ks.Reload(); err != nil {
		t.Fatal(err)
	} else if changed {
		t.Error("Reload after Lookup had taken the new file: changed again")
	}
	if ks.Signer().ID != newest.ID || len(ks.Keys()) != 2 {
		t.Errorf("after the Secret's update the keys are %v, want %s first of two", ks.Keys(), newest.ID)
	}
}
