package postgres_test

import (
	"context"
	"database/sql"
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

// A database whose default collation ignores punctuation (ICU with
// alternate=shifted, as an operator's locale may) would sort "o/t" after
// "o0", so the range scan of an ancestor's descendants would miss them.
// The store pins byte order on its key columns, so it finds them.
func TestDescendantsAreFoundWhateverTheDatabaseCollation(t *testing.T) {
	url := pgtest.NewDatabaseWith(t, `TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und-u-ka-shifted'`)
	ctx := context.Background()
	st, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	raw, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var ignoresSlash bool
	if err := raw.QueryRowContext(ctx, `SELECT 'o/t' > 'o0'`).Scan(&ignoresSlash); err != nil {
		t.Fatal(err)
	}
	if !ignoresSlash {
		t.Fatal("setup: the database's collation should sort 'o/t' after 'o0'")
	}
	recs := []store.Record{
		{Kind: "Organization", FQN: "organizations/o", Name: "o", Spec: json.RawMessage(`{}`)},
		{Kind: "Tenant", FQN: "organizations/o/tenants/t", Name: "t", Parent: "organizations/o", Spec: json.RawMessage(`{}`)},
		{Kind: "Tenant", FQN: "organizations/o/tenants/t-2", Name: "t-2", Parent: "organizations/o", Spec: json.RawMessage(`{}`)},
	}
	err = st.Update(ctx, "a", func(tx store.Tx) error {
		for _, r := range recs {
			if _, err := tx.Put(ctx, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.List(ctx, store.Query{Ancestor: "organizations/o"})
	if err != nil {
		t.Fatal(err)
	}
	var fqns []string
	for _, r := range got {
		fqns = append(fqns, r.FQN)
	}
	if want := []string{"organizations/o/tenants/t", "organizations/o/tenants/t-2"}; fmt.Sprint(fqns) != fmt.Sprint(want) {
		t.Errorf("descendants of organizations/o = %v, want %v in byte order", fqns, want)
	}
	audit, err := st.Audit(ctx, store.AuditQuery{FQN: "organizations/o"})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 3 {
		t.Errorf("audit under organizations/o holds %d records, want 3", len(audit))
	}
}

// A runtime write whose transaction began before another's but commits
// after it is still in the feed: a reader's mark is the oldest transaction
// running when it read, not the newest write it saw.
func TestARuntimeWriteThatCommitsLateIsStillInTheFeed(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	st, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	epochs := map[string]int64{}
	for _, name := range []string{"late", "early"} {
		fqn := "organizations/" + name
		if err := st.Update(ctx, "a", func(tx store.Tx) error {
			_, err := tx.Put(ctx, store.Record{Kind: "Organization", FQN: fqn, Name: name, Spec: json.RawMessage(`{}`)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if epochs[fqn], err = st.ClaimStatus(ctx, fqn); err != nil {
			t.Fatal(err)
		}
	}
	_, mark, err := st.Runtimes(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// The late writer takes its transaction ID first and holds it open.
	late, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback()
	if _, err := late.ExecContext(ctx, `UPDATE status SET runtime_bytes = 'late', runtime_gen = runtime_gen + 1, runtime_time = 1, runtime_seq = `+postgres.Dialect.Seq+` WHERE fqn = 'organizations/late'`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutRuntime(ctx, []store.RuntimeWrite{{FQN: "organizations/early", Epoch: epochs["organizations/early"], Runtime: []byte("early")}}); err != nil {
		t.Fatal(err)
	}
	got, mark, err := st.Runtimes(ctx, mark, nil)
	if err != nil || len(got) != 1 || got[0].FQN != "organizations/early" {
		t.Fatalf("with the late writer still open, the feed holds %+v, %v; want the early write alone", got, err)
	}
	have := map[string]int64{got[0].FQN: got[0].Gen}
	if err := late.Commit(); err != nil {
		t.Fatal(err)
	}
	got, _, err = st.Runtimes(ctx, mark, have)
	if err != nil || len(got) != 1 || got[0].FQN != "organizations/late" || string(got[0].Runtime) != "late" {
		t.Fatalf("after the late writer commits, the feed since the last mark holds %+v, %v; want the late write", got, err)
	}
}

// The listener survives losing its connection: after the server ends it
// (as a restart or a failover would), it connects and listens again, so
// another process's commits still wake this one's watchers.
func TestWatchersAreWokenAfterTheListenersConnectionIsCut(t *testing.T) {
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
	admin, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for i := range 3 {
		// End every listening session of this database: the writer's and
		// the watcher's.
		var cut int
		if err := admin.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'listen%'`).Scan(&cut); err != nil {
			t.Fatal(err)
		}
		if cut == 0 {
			t.Fatalf("round %d: no listening session to cut", i)
		}
		// Commit until one wakes the watcher: the first may land before its
		// listener is back, and then only the LISTEN's own wake-up tells.
		changed := watcher.Changed()
		deadline := time.After(10 * time.Second)
		for n := 0; ; n++ {
			err := writer.Update(ctx, "a", func(tx store.Tx) error {
				_, err := tx.Put(ctx, store.Record{Kind: "Organization", FQN: fmt.Sprintf("organizations/r%d-%d", i, n), Name: "o", Spec: json.RawMessage(`{}`)})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-changed:
			case <-time.After(100 * time.Millisecond):
				continue
			case <-deadline:
				t.Fatalf("round %d: no wake-up within 10 s of the listener's connection being cut", i)
			}
			break
		}
	}
}
