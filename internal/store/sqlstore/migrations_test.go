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
