package authn

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
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
