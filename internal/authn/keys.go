package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Key is one signing key: an Ed25519 key pair with an id ("kid").
type Key struct {
	ID      string
	Created time.Time
	private ed25519.PrivateKey
}

// Public is the key's public half.
func (k Key) Public() ed25519.PublicKey { return k.private.Public().(ed25519.PublicKey) }

// keyFile is the on-disk form of a KeySet.
type keyFile struct {
	Keys []struct {
		ID      string    `json:"id"`
		Created time.Time `json:"created"`
		Seed    string    `json:"seed"` // base64 Ed25519 seed
	} `json:"keys"`
}

// KeySet holds the keys that sign and verify access tokens: the first signs,
// every one verifies. It lives in one 0600 file (the "signing key" of a
// backup: the store plus this file rebuild a server) that server replicas
// may share.
//
// Every change (Rotate, Remove, and the creation of the file) is made under
// an exclusive lock on a sibling file (<path>.lock, flock), re-reads the
// file under that lock, applies itself to what it read and replaces the
// file atomically (temporary file, fsync, rename). So concurrent changes
// from any number of processes all survive, and a replica whose keys are
// out of date neither drops another's new key nor brings a removed one
// back. Reload, and Lookup when it does not know a key, re-read the file
// to pick up what other replicas changed. Safe for concurrent use.
type KeySet struct {
	path string

	writeMu sync.Mutex // one writer of this process at a time; the flock orders processes

	mu   sync.RWMutex
	keys []Key    // newest first
	sum  [32]byte // SHA-256 of the file the keys were read from (or written as)

	refreshMu sync.Mutex
	lastRead  time.Time // when the newest re-read of the file began; refreshMu
}

// ErrReadOnly is the error of a change to a key file that this process may
// read but not change: one mounted read-only (a Kubernetes Secret, as the
// Helm chart mounts it), or another user's. Such a file is changed where
// it comes from, and servers pick the change up by re-reading it (Reload,
// and Lookup of a key they do not hold).
var ErrReadOnly = errors.New("read-only")

// MinRefresh is the shortest time between two re-reads of the key file
// that Lookup makes for keys it does not know: tokens with made-up key
// ids cost at most one small file read per MinRefresh, and a token of a
// key another replica just made waits at most that long.
const MinRefresh = 20 * time.Millisecond

// OpenKeySet reads the key file at path, creating it with one new key when
// it does not exist (under the file lock: replicas starting together on an
// empty directory end up with one file holding every key they made).
func OpenKeySet(path string) (*KeySet, error) {
	ks := &KeySet{path: path}
	keys, sum, err := ks.read()
	if err == nil {
		ks.keys, ks.sum = keys, sum
		return ks, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	err = ks.change(true, func(onDisk []Key) ([]Key, error) {
		if len(onDisk) > 0 { // another process made it first
			return onDisk, nil
		}
		key, err := newKey()
		return []Key{key}, err
	})
	if errors.Is(err, ErrReadOnly) {
		return nil, fmt.Errorf("signing key file %s does not exist, and its directory is %w to this server, so it cannot make it: give the file (the Helm chart's Secret holds it under the key %s)", path, ErrReadOnly, filepath.Base(path))
	}
	if err != nil {
		return nil, err
	}
	return ks, nil
}

func newKey() (Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return Key{}, err
	}
	return Key{ID: now.Format("20060102") + "-" + base64.RawURLEncoding.EncodeToString(id[:]), Created: now, private: priv}, nil
}

// read reads and parses the key file. The bytes come from one open file,
// and a writer replaces the file by rename, so they are one whole version
// of it, never a mix.
func (ks *KeySet) read() ([]Key, [32]byte, error) {
	b, err := os.ReadFile(ks.path)
	if err != nil {
		return nil, [32]byte{}, err
	}
	keys, err := ks.parse(b)
	return keys, sha256.Sum256(b), err
}

func (ks *KeySet) parse(b []byte) ([]Key, error) {
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("signing key file %s: %w", ks.path, err)
	}
	if len(f.Keys) == 0 {
		return nil, fmt.Errorf("signing key file %s holds no key: restore it from backup, or remove it to start with a new key (every token issued so far is then refused)", ks.path)
	}
	keys := make([]Key, 0, len(f.Keys))
	for i, k := range f.Keys {
		seed, err := base64.StdEncoding.DecodeString(k.Seed)
		if err != nil || len(seed) != ed25519.SeedSize || k.ID == "" {
			return nil, fmt.Errorf("signing key file %s: keys[%d] is damaged (needs an id and a base64 32-byte seed)", ks.path, i)
		}
		keys = append(keys, Key{ID: k.ID, Created: k.Created, private: ed25519.NewKeyFromSeed(seed)})
	}
	return keys, nil
}

// change applies fn to the keys on disk and writes its result, all under
// the file lock, then makes the result this set's keys. With create, a
// missing file is an empty key list; otherwise it is an error: the keys
// this process holds are not written back from memory, since they may be
// stale.
func (ks *KeySet) change(create bool, fn func(onDisk []Key) ([]Key, error)) error {
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(ks.path), 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(ks.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return fmt.Errorf("signing key file %s is %w to this server (%v): change the keys where the file comes from (with the Helm chart, its Secret: see docs/install.md); every server re-reads the file within seconds of a change", ks.path, ErrReadOnly, err)
	}
	if err != nil {
		return fmt.Errorf("lock the signing key file: %w", err)
	}
	defer lock.Close() // closing releases the lock
	if err := flock(lock); err != nil {
		return fmt.Errorf("lock the signing key file %s: %w", lock.Name(), err)
	}
	onDisk, _, err := ks.read()
	switch {
	case errors.Is(err, os.ErrNotExist) && !create:
		return fmt.Errorf("signing key file %s is gone: restore it from backup (a change is made to the file, never from memory)", ks.path)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return err
	}
	keys, err := fn(onDisk)
	if err != nil {
		return err
	}
	sum, err := ks.save(keys)
	if err != nil {
		return fmt.Errorf("write %s: %w", ks.path, err)
	}
	ks.mu.Lock()
	ks.keys, ks.sum = keys, sum
	ks.mu.Unlock()
	return nil
}

func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// save writes keys to the file atomically (temporary file, fsync, rename,
// fsync of the directory) and returns the SHA-256 of what it wrote.
func (ks *KeySet) save(keys []Key) ([32]byte, error) {
	var f keyFile
	for _, k := range keys {
		f.Keys = append(f.Keys, struct {
			ID      string    `json:"id"`
			Created time.Time `json:"created"`
			Seed    string    `json:"seed"`
		}{k.ID, k.Created, base64.StdEncoding.EncodeToString(k.private.Seed())})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return [32]byte{}, err
	}
	b = append(b, '\n')
	if err := WriteFileAtomic(ks.path, b); err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// WriteFileAtomic replaces the file at path with data, mode 0600 whatever
// the mode of the file it replaces: it writes a temporary file beside it,
// syncs it, renames it over path and syncs the directory. A crash leaves
// the old file or the new one, never a part of either.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Signer is the key that signs new tokens.
func (ks *KeySet) Signer() Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.keys[0]
}

// Lookup finds a verifying key by id. When the set does not hold it, it
// re-reads the file first (at most once per MinRefresh, waiting for that
// rather than refusing), so a token signed by a key that another replica
// made a moment ago verifies at once.
func (ks *KeySet) Lookup(id string) (Key, bool) {
	if k, ok := ks.lookup(id); ok {
		return k, true
	}
	ks.refresh(time.Now())
	return ks.lookup(id)
}

func (ks *KeySet) lookup(id string) (Key, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	for _, k := range ks.keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

// refresh re-reads the file for a key missed at missed, unless a re-read
// began after that (it saw everything on disk then). Errors keep the keys
// held: Reload reports them.
func (ks *KeySet) refresh(missed time.Time) {
	ks.refreshMu.Lock()
	defer ks.refreshMu.Unlock()
	if ks.lastRead.After(missed) {
		return
	}
	if wait := time.Until(ks.lastRead.Add(MinRefresh)); wait > 0 {
		time.Sleep(wait)
	}
	_, _ = ks.reread()
}

// reread reads the file and takes its keys when its content changed.
// Callers hold refreshMu.
func (ks *KeySet) reread() (changed bool, err error) {
	ks.lastRead = time.Now()
	keys, sum, err := ks.read()
	if err != nil {
		return false, err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if sum == ks.sum {
		return false, nil
	}
	ks.keys, ks.sum = keys, sum
	return true, nil
}

// Keys lists the keys, the signer first.
func (ks *KeySet) Keys() []Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return append([]Key(nil), ks.keys...)
}

// Rotate makes a new key the signer. Older keys keep verifying, so tokens
// they signed stay good until they expire. The new key goes before the
// keys on disk, which include those other replicas added.
func (ks *KeySet) Rotate() (Key, error) {
	key, err := newKey()
	if err != nil {
		return Key{}, err
	}
	err = ks.change(false, func(onDisk []Key) ([]Key, error) {
		return append([]Key{key}, onDisk...), nil
	})
	if err != nil {
		return Key{}, err
	}
	return key, nil
}

// Remove stops a key verifying. The signer (the first key on disk) cannot
// be removed: rotate first. Other replicas stop accepting the key when
// they next re-read the file (Reload).
func (ks *KeySet) Remove(id string) error {
	return ks.change(false, func(onDisk []Key) ([]Key, error) {
		if onDisk[0].ID == id {
			return nil, fmt.Errorf("key %s signs new tokens: rotate to a new key first, then remove it", id)
		}
		var keys []Key
		for _, k := range onDisk {
			if k.ID != id {
				keys = append(keys, k)
			}
		}
		if len(keys) == len(onDisk) {
			return nil, fmt.Errorf("no signing key %q: `flotilla auth keys list` shows the keys", id)
		}
		return keys, nil
	})
}

// Reload re-reads the file and takes its keys when its content changed
// (another replica rotated, or an operator restored it). It compares
// content, not modification times, which two quick writes can share. It
// keeps the keys it has when the file is unreadable, and says why.
func (ks *KeySet) Reload() (changed bool, err error) {
	ks.refreshMu.Lock()
	defer ks.refreshMu.Unlock()
	return ks.reread()
}
