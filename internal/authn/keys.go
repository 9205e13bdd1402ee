package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
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
// backup: the store plus this file rebuild a server). Rotate and Remove
// rewrite the file atomically; Reload picks up a file another replica or an
// operator changed. Safe for concurrent use.
type KeySet struct {
	path string

	mu    sync.RWMutex
	keys  []Key // newest first
	mtime time.Time
	size  int64
}

// OpenKeySet reads the key file at path, creating it with one new key when
// it does not exist.
func OpenKeySet(path string) (*KeySet, error) {
	ks := &KeySet{path: path}
	err := ks.load()
	if errors.Is(err, os.ErrNotExist) {
		key, err := newKey()
		if err != nil {
			return nil, err
		}
		ks.keys = []Key{key}
		if err := ks.save(ks.keys); err != nil {
			return nil, err
		}
		return ks, ks.stat()
	}
	return ks, err
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

func (ks *KeySet) load() error {
	b, err := os.ReadFile(ks.path)
	if err != nil {
		return err
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("signing key file %s: %w", ks.path, err)
	}
	if len(f.Keys) == 0 {
		return fmt.Errorf("signing key file %s holds no key: restore it from backup, or remove it to start with a new key (every token issued so far is then refused)", ks.path)
	}
	keys := make([]Key, 0, len(f.Keys))
	for i, k := range f.Keys {
		seed, err := base64.StdEncoding.DecodeString(k.Seed)
		if err != nil || len(seed) != ed25519.SeedSize || k.ID == "" {
			return fmt.Errorf("signing key file %s: keys[%d] is damaged (needs an id and a base64 32-byte seed)", ks.path, i)
		}
		keys = append(keys, Key{ID: k.ID, Created: k.Created, private: ed25519.NewKeyFromSeed(seed)})
	}
	ks.mu.Lock()
	ks.keys = keys
	ks.mu.Unlock()
	return ks.stat()
}

func (ks *KeySet) stat() error {
	fi, err := os.Stat(ks.path)
	if err != nil {
		return err
	}
	ks.mu.Lock()
	ks.mtime, ks.size = fi.ModTime(), fi.Size()
	ks.mu.Unlock()
	return nil
}

// save writes keys to the file atomically (temporary file, fsync, rename).
func (ks *KeySet) save(keys []Key) error {
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
		return err
	}
	if err := os.MkdirAll(filepath.Dir(ks.path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(ks.path), ".signing-keys-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
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
	return os.Rename(tmp.Name(), ks.path)
}

// Signer is the key that signs new tokens.
func (ks *KeySet) Signer() Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.keys[0]
}

// Lookup finds a verifying key by id.
func (ks *KeySet) Lookup(id string) (Key, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	for _, k := range ks.keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

// Keys lists the keys, the signer first.
func (ks *KeySet) Keys() []Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return append([]Key(nil), ks.keys...)
}

// Rotate makes a new key the signer. Older keys keep verifying, so tokens
// they signed stay good until they expire.
func (ks *KeySet) Rotate() (Key, error) {
	key, err := newKey()
	if err != nil {
		return Key{}, err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	keys := append([]Key{key}, ks.keys...)
	if err := ks.save(keys); err != nil {
		return Key{}, fmt.Errorf("write %s: %w", ks.path, err)
	}
	ks.keys = keys
	return key, nil
}

// Remove stops a key verifying. The signer cannot be removed: rotate first.
func (ks *KeySet) Remove(id string) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.keys[0].ID == id {
		return fmt.Errorf("key %s signs new tokens: rotate to a new key first, then remove it", id)
	}
	var keys []Key
	for _, k := range ks.keys {
		if k.ID != id {
			keys = append(keys, k)
		}
	}
	if len(keys) == len(ks.keys) {
		return fmt.Errorf("no signing key %q: `flotilla auth keys list` shows the keys", id)
	}
	if err := ks.save(keys); err != nil {
		return fmt.Errorf("write %s: %w", ks.path, err)
	}
	ks.keys = keys
	return nil
}

// Reload re-reads the file when it changed on disk (another replica
// rotated, or an operator restored it). It keeps the keys it has when the
// file is unreadable, and says why.
func (ks *KeySet) Reload() (changed bool, err error) {
	fi, err := os.Stat(ks.path)
	if err != nil {
		return false, err
	}
	ks.mu.RLock()
	same := fi.ModTime().Equal(ks.mtime) && fi.Size() == ks.size
	ks.mu.RUnlock()
	if same {
		return false, nil
	}
	return true, ks.load()
}
