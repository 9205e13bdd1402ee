// Package postgres opens Flotilla's production store on PostgreSQL through
// jackc/pgx/v5. Writers from any number of server processes are serialized
// with a transaction-scoped advisory lock, so revisions stay gap-free and in
// commit order.
package postgres

import (
	"context"
	"database/sql"
	"fmt"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver

	"flotilla.io/flotilla/internal/store/sqlstore"
)

// Open connects to the database at url (postgres://…) and migrates it.
func Open(ctx context.Context, url string, opts ...sqlstore.Option) (*sqlstore.DB, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	db.SetMaxOpenConns(16)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres store: %w", err)
	}
	return sqlstore.New(ctx, db, Dialect, opts...)
}

// Dialect is PostgreSQL's flavour of the shared SQL core.
var Dialect = sqlstore.Dialect{
	Name: "postgres",
	// 0x466c6f74 is "Flot": one lock for every Flotilla writer of this database.
	LockTx:     `SELECT pg_advisory_xact_lock(1181511540)`,
	Migrations: sqlstore.Migrations(),
}
