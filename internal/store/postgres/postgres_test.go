package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlstore"
	"flotilla.io/flotilla/internal/store/storetest"
)

func TestPostgresMeetsTheStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener { return pgtest.Fresh(t) })
}

func TestACommitInOneProcessWakesTheWatchersOfAnother(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	open := func() *sqlstore.DB {
		st, err := postgres.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	writer, watcher := open(), open()
	for i := range 20 {
		changed := watcher.Changed()
		err := writer.Update(ctx, "a", func(tx store.Tx) error {
			_, err := tx.Put(ctx, store.Record{Kind: "Organization", FQN: fmt.Sprintf("organizations/o%d", i), Name: fmt.Sprintf("o%d", i), Spec: json.RawMessage(`{}`)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("commit %d in one store did not wake the other's watchers", i)
		}
	}
}
