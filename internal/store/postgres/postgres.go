// Package postgres opens Flotilla's production store on PostgreSQL through
// jackc/pgx/v5. Writers from any number of server processes are serialized
// with a transaction-scoped advisory lock, so revisions stay gap-free and in
// commit order. Every commit that takes a revision sends a NOTIFY, and each
// store LISTENs, so watchers in every process wake on every process's
// commits without polling.
package postgres

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"github.com/jackc/pgxlisten"

	"flotilla.io/flotilla/internal/store/sqlstore"
)

// channel is the NOTIFY channel of commits.
const channel = "flotilla_commits"

// Open connects to the database at url (postgres://…), migrates it, and
// starts listening for other processes' commits until the store closes.
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
	// Each store tags its notifications, so that it wakes only for other
	// processes' commits (its own wake it directly).
	idb := make([]byte, 8)
	rand.Read(idb)
	id := hex.EncodeToString(idb)
	dialect := Dialect
	dialect.NotifyTx = "NOTIFY " + channel + ", '" + id + "'"
	d, err := sqlstore.New(ctx, db, dialect, opts...)
	if err != nil {
		return nil, err
	}
	lctx, stop := context.WithCancel(context.Background())
	done, listening := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); listen(lctx, url, id, d, listening) }()
	d.OnClose(func() { stop(); <-done })
	// The store is open once its watchers hear other processes' commits
	// (bounded: a listener that cannot connect yet keeps trying, and its
	// first LISTEN wakes the watchers anyway).
	select {
	case <-listening:
	case <-time.After(listenWait):
	case <-ctx.Done():
	}
	return d, nil
}

// listenWait bounds how long Open waits for its first LISTEN.
const listenWait = 5 * time.Second

// listen wakes d's watchers on every NOTIFY of the channel but its own
// (id), until ctx ends. pgxlisten reconnects after a lost connection (every
// reconnectDelay: a wake-up then comes at most that long after the database
// is back). The watchers are woken once each time LISTEN takes effect, the
// first time included: commits made before that (since Open returned, or
// while disconnected) sent notifications nobody heard, and a watcher woken
// for nothing only re-reads.
func listen(ctx context.Context, url, id string, d *sqlstore.DB, listening chan struct{}) {
	l := &pgxlisten.Listener{
		Connect:        func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		ReconnectDelay: reconnectDelay,
	}
	l.Handle(channel, &waker{id: id, d: d, listening: listening})
	_ = l.Listen(ctx) // returns when ctx ends
}

// reconnectDelay is how long the listener waits before it connects again.
const reconnectDelay = 250 * time.Millisecond

// waker wakes a store's watchers on others' notifications and after each
// LISTEN.
type waker struct {
	id        string
	d         *sqlstore.DB
	listening chan struct{} // closed after the first LISTEN
	once      sync.Once
}

func (w *waker) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	if n.Payload != w.id {
		w.d.Wake()
	}
	return nil
}

func (w *waker) HandleBacklog(context.Context, string, *pgx.Conn) error {
	w.d.Wake()
	w.once.Do(func() { close(w.listening) })
	return nil
}

// Dialect is PostgreSQL's flavour of the shared SQL core.
var Dialect = sqlstore.Dialect{
	Name: "postgres",
	// 0x466c6f74 is "Flot": one lock for every Flotilla writer of this database.
	LockTx:     `SELECT pg_advisory_xact_lock(1181511540)`,
	Migrations: sqlstore.Migrations("postgres"),
	NotifyTx:   `NOTIFY ` + channel,
	// The status feeds: a row carries its writer's transaction ID; a
	// reader's mark is the oldest transaction running when it read (every
	// later write, and every write still uncommitted then, is at or above it).
	Seq:  `pg_current_xact_id()::text::bigint`,
	Mark: `pg_snapshot_xmin(pg_current_snapshot())::text::bigint`,
}
