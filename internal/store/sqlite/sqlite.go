// Package sqlite opens Flotilla's embedded store: one SQLite file in WAL mode
// with synchronous=FULL, so an acknowledged write survives a crash or a power
// cut. It uses modernc.org/sqlite (pure Go, no cgo).
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"flotilla.io/flotilla/internal/store/sqlstore"
)

// Open opens (creating if needed) the store at path and migrates it.
func Open(ctx context.Context, path string, opts ...sqlstore.Option) (*sqlstore.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate") // every write transaction takes the write lock at BEGIN
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	return sqlstore.New(ctx, db, Dialect, opts...)
}

// Dialect is SQLite's flavour of the shared SQL core.
var Dialect = sqlstore.Dialect{
	Name:         "sqlite",
	Migrations:   sqlstore.Migrations("sqlite"),
	SingleWriter: true,
	// The status feeds: one writer at a time, so a counter numbers the
	// writes in commit order.
	SeqTx: `UPDATE meta SET value = value + 1 WHERE key = 'feed'`,
	Seq:   `(SELECT value FROM meta WHERE key = 'feed')`,
	Mark:  `(SELECT value + 1 FROM meta WHERE key = 'feed')`,
}
