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

// A runtime snapshot written by one replica wakes the others, so that they
// read it at once rather than at their next tick.
func TestARuntimeWriteInOneProcessWakesAnother(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	writer, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	watcher, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	err = writer.Update(ctx, "a", func(tx store.Tx) error {
		_, err := tx.Put(ctx, store.Record{Kind: "Organization", FQN: "organizations/o", Name: "o", Spec: json.RawMessage(`{}`)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	epoch, err := writer.ClaimStatus(ctx, "organizations/o")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		changed := watcher.Changed()
		if _, err := writer.PutRuntime(ctx, []store.RuntimeWrite{{FQN: "organizations/o", Epoch: epoch, Runtime: fmt.Appendf(nil, "state %d", i)}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("runtime write %d in one store did not wake the other", i)
		}
		got, _, err := watcher.Runtimes(ctx, -1, nil)
		if err != nil || len(got) != 1 || string(got[0].Runtime) != fmt.Sprintf("state %d", i) {
			t.Fatalf("after write %d the other store reads %+v, %v", i, got, err)
		}
	}
}
