package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/store/storetest"
)

func TestSQLiteMeetsTheStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		path := filepath.Join(t.TempDir(), "flotilla.db")
		return func(t *testing.T) store.Store {
			st, err := sqlite.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
	})
}
