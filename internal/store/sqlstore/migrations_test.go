package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "modernc.org/sqlite"             // the "sqlite" driver

	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/store/sqlstore"
)

// refusalsBeforeV7 migrates a database to v6, writes three refusals out of
// time order as a v6 server did (no number), then migrates to the newest
// version and checks that they are numbered in time order and that the
// next refusal follows them.
func refusalsBeforeV7(t *testing.T, driver, url string, dialect sqlstore.Dialect) {
	ctx := context.Background()
	open := func(migrations []string) *sqlstore.DB {
		t.Helper()
		db, err := sql.Open(driver, url)
		if err != nil {
			t.Fatal(err)
		}
		d := dialect
		d.Migrations = migrations
		st, err := sqlstore.New(ctx, db, d)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	open(sqlstore.Migrations(dialect.Name)[:6]).Close()
	raw, err := sql.Open(driver, url)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []struct {
		time   int64
		reason string
	}{{300, "third"}, {100, "first"}, {200, "second"}} {
		if _, err := raw.ExecContext(ctx, `INSERT INTO refused (time, actor, operation, kind, fqn, reason) VALUES ($1, 'user:a', 'Get', '', '', $2)`, row.time, row.reason); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()
	st := open(sqlstore.Migrations(dialect.Name))
	defer st.Close()
	if err := st.Refuse(ctx, store.AuditRecord{Actor: "user:a", Operation: "Get", Reason: "fourth"}); err != nil {
		t.Fatal(err)
	}
	recs, err := st.Audit(ctx, store.AuditQuery{Refused: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, r := range recs {
		if r.Refusal != int64(i+1) {
			t.Errorf("refusal %q is number %d; want %d", r.Reason, r.Refusal, i+1)
		}
		got = append(got, r.Reason)
	}
	if len(got) != 4 || got[0] != "first" || got[1] != "second" || got[2] != "third" || got[3] != "fourth" {
		t.Fatalf("refusals after the migration: %v; want first, second, third, fourth", got)
	}
}

func TestRefusalsWrittenBeforeNumberingAreNumberedInTimeOrderOnSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.db")
	refusalsBeforeV7(t, "sqlite", "file:"+path+"?_txlock=immediate", sqlite.Dialect)
}

func TestRefusalsWrittenBeforeNumberingAreNumberedInTimeOrderOnPostgres(t *testing.T) {
	refusalsBeforeV7(t, "pgx", pgtest.NewDatabase(t), postgres.Dialect)
}

// snapshotsBeforeV10 writes a runtime snapshot as a v9 server did (base64
// text, counted in meta), migrates to the newest version, and checks that
// the snapshot reads back as its bytes and that the next write follows it
// in the feed.
func snapshotsBeforeV10(t *testing.T, driver, url string, dialect sqlstore.Dialect) {
	ctx := context.Background()
	open := func(migrations []string) *sqlstore.DB {
		t.Helper()
		db, err := sql.Open(driver, url)
		if err != nil {
			t.Fatal(err)
		}
		d := dialect
		d.Migrations = migrations
		st, err := sqlstore.New(ctx, db, d)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	const fqn = "organizations/o"
	old := open(sqlstore.Migrations(dialect.Name)[:9])
	if err := old.Update(ctx, "a", func(tx store.Tx) error {
		_, err := tx.Put(ctx, store.Record{Kind: "Organization", FQN: fqn, Name: "o", Spec: []byte(`{}`)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	raw, err := sql.Open(driver, url)
	if err != nil {
		t.Fatal(err)
	}
	// A claim and "snap\x00shot\xff" in base64, as v6 to v9 stored them.
	const epoch = 1
	if _, err := raw.ExecContext(ctx, `INSERT INTO status (fqn, epoch, body, update_time, runtime, runtime_gen, runtime_time) VALUES ($1, 1, '', 0, 'c25hcABzaG90/w==', 1, 5)`, fqn); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, `UPDATE meta SET value = value + 1 WHERE key = 'runtime'`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	st := open(sqlstore.Migrations(dialect.Name))
	defer st.Close()
	got, mark, err := st.Runtimes(ctx, 0, nil)
	if err != nil || len(got) != 1 || string(got[0].Runtime) != "snap\x00shot\xff" || got[0].Gen != 1 || got[0].Epoch != epoch {
		t.Fatalf("the snapshot of v9 after the migration: %+v, %v", got, err)
	}
	if _, err := st.PutRuntime(ctx, []store.RuntimeWrite{{FQN: fqn, Epoch: epoch, Runtime: []byte("new")}}); err != nil {
		t.Fatal(err)
	}
	got, _, err = st.Runtimes(ctx, mark, map[string]int64{fqn: 1})
	if err != nil || len(got) != 1 || string(got[0].Runtime) != "new" || got[0].Gen != 2 {
		t.Fatalf("the write after the migration, since the mark: %+v, %v", got, err)
	}
}

func TestRuntimeSnapshotsOfV9ReadBackAsBytesOnSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.db")
	snapshotsBeforeV10(t, "sqlite", "file:"+path+"?_txlock=immediate", sqlite.Dialect)
}

func TestRuntimeSnapshotsOfV9ReadBackAsBytesOnPostgres(t *testing.T) {
	snapshotsBeforeV10(t, "pgx", pgtest.NewDatabase(t), postgres.Dialect)
}
