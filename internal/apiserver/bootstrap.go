package apiserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
)

// EnsureBootstrap creates the bootstrap administrator credential once per
// store: when the store has none, it makes one, writes it to path (0600)
// and returns it, so the caller can print it with the path, once. Later
// starts return "".
func (a *Auth) EnsureBootstrap(ctx context.Context, st store.Store, path string) (string, error) {
	var secret string
	err := st.Update(ctx, "server:bootstrap", func(tx store.Tx) error {
		n, err := tx.CountCredentials(ctx, bootstrapCluster, bootstrapKind)
		if err != nil || n > 0 {
			return err
		}
		s, hash := authn.NewSecret("fla_")
		if err := tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: bootstrapCluster, Kind: bootstrapKind, Expires: time.Now().AddDate(100, 0, 0)}); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
			return fmt.Errorf("write the bootstrap credential: %w", err)
		}
		secret = s
		return nil
	})
	return secret, err
}

// ResetBootstrap replaces the bootstrap credential (the old one stops
// working) and writes the new one to path.
func (a *Auth) ResetBootstrap(ctx context.Context, st store.Store, path string) (string, error) {
	if err := st.Update(ctx, "server:bootstrap", func(tx store.Tx) error {
		return tx.DeleteCredentials(ctx, bootstrapCluster, bootstrapKind)
	}); err != nil {
		return "", err
	}
	return a.EnsureBootstrap(ctx, st, path)
}
