// Package pgtest gives tests a fresh PostgreSQL database on the server named
// by FLOTILLA_TEST_POSTGRES (default: the local server on 127.0.0.1:5432 as
// user postgres). A test fails, never skips, when the server is unreachable:
// run .ci/run, or start PostgreSQL, first.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
)

// DefaultURL is used when FLOTILLA_TEST_POSTGRES is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL is the URL of the server's maintenance database.
func AdminURL() string {
	if u := os.Getenv("FLOTILLA_TEST_POSTGRES"); u != "" {
		return u
	}
	return DefaultURL
}

// NewDatabase creates an empty database, dropped when the test ends, and
// returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return NewDatabaseWith(t, "")
}

// NewDatabaseWith is NewDatabase with options of CREATE DATABASE, such as
// another template and locale.
func NewDatabaseWith(t testing.TB, options string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := sql.Open("pgx", AdminURL())
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		t.Fatalf("postgres at %s is unreachable (%v): start it (see .ci/run) or set FLOTILLA_TEST_POSTGRES", AdminURL(), err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	name := "flotilla_test_" + hex.EncodeToString(b)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name+" "+options); err != nil {
		admin.Close()
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		admin.Close()
	})
	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("FLOTILLA_TEST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Fresh returns an opener of a new database for the store contract suite.
func Fresh(t *testing.T) func(t *testing.T) store.Store {
	dbURL := NewDatabase(t)
	return func(t *testing.T) store.Store {
		st, err := postgres.Open(context.Background(), dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
}
