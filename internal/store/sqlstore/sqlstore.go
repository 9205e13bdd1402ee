// Package sqlstore implements store.Store over database/sql. One SQL core
// serves SQLite and PostgreSQL; a Dialect supplies what differs: how to open
// the database, how writers are serialized across processes, and the
// migrations' column types.
package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla.io/flotilla/internal/store"
)

// Dialect is what differs between databases.
type Dialect struct {
	// Name is "sqlite" or "postgres".
	Name string
	// LockTx runs first in every write transaction and blocks until no
	// other process writes (nil when BEGIN already takes the write lock).
	LockTx string
	// Migrations are applied in order; migration i has version i+1.
	Migrations []string
	// SingleWriter says the database takes one writer at a time whatever
	// the rows (SQLite): status transactions then queue on the process's
	// writer mutex rather than on the database's busy handler, which
	// backs off by sleeping and gives up under a storm of writers.
	SingleWriter bool
	// NotifyTx, when set, runs in every write transaction that takes a
	// revision, so that other processes on the same database learn of the
	// commit (PostgreSQL's NOTIFY is delivered at commit).
	NotifyTx string
	// The status table's change feeds (migration v10). SeqTx, when set,
	// runs first in each status transaction; Seq numbers a row it writes;
	// Mark, read in the same statement as the changed rows, is at or below
	// the number of every row written after that statement.
	SeqTx, Seq, Mark string
}

// DB is a store.Store over a *sql.DB.
type DB struct {
	db      *sql.DB
	dialect Dialect
	now     func() time.Time

	writeMu sync.Mutex // serializes writers in this process

	notifyMu sync.Mutex
	changed  chan struct{} // closed and replaced on every commit

	stmts sync.Map // query text -> *sql.Stmt, prepared once (parsing SQL costs more than a commit)

	closeMu sync.Mutex
	onClose []func() // run by Close, before the database closes
}

var _ store.Store = (*DB)(nil)

// Option configures a DB.
type Option func(*DB)

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(d *DB) { d.now = now } }

// New wraps db, applies pending migrations and returns the store. It takes
// ownership of db.
func New(ctx context.Context, db *sql.DB, dialect Dialect, opts ...Option) (*DB, error) {
	d := &DB{db: db, dialect: dialect, now: time.Now, changed: make(chan struct{})}
	for _, o := range opts {
		o(d)
	}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s store: %w", dialect.Name, err)
	}
	return d, nil
}

func (d *DB) migrate(ctx context.Context) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	tx, err := d.beginWrite(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return err
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return err
	}
	if current > len(d.dialect.Migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d: upgrade flotilla", current, len(d.dialect.Migrations))
	}
	for v := current + 1; v <= len(d.dialect.Migrations); v++ {
		for _, stmt := range splitStatements(d.dialect.Migrations[v-1]) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, v, d.now().UnixNano()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// beginWrite starts a transaction that holds the database's write lock, so
// no writer of another process overlaps it. Callers hold writeMu.
func (d *DB) beginWrite(ctx context.Context) (*sql.Tx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w: %w", store.ErrUnavailable, err)
	}
	if d.dialect.LockTx != "" {
		if _, err := tx.ExecContext(ctx, d.dialect.LockTx); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("take the write lock: %w: %w", store.ErrUnavailable, err)
		}
	}
	return tx, nil
}

func splitStatements(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ";") {
		if p := strings.TrimSpace(part); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// querier runs statements through the DB's prepared-statement cache, in a
// transaction when tx is set.
type querier struct {
	d  *DB
	tx *sql.Tx
	// missed holds the statements a transaction prepared on its own
	// connection (see stmt), by query: for the rest of the transaction,
	// and for the pool's cache once it ended (cacheMissed).
	missed map[string]*sql.Stmt
}

// cacheMissed prepares on the pool, for the cache, the queries a
// transaction that has ended prepared on its own connection.
func (d *DB) cacheMissed(missed map[string]*sql.Stmt) {
	for query := range missed {
		if _, ok := d.stmts.Load(query); ok {
			continue
		}
		s, err := d.db.PrepareContext(context.Background(), query)
		if err != nil {
			return // closed meanwhile: the next use prepares again
		}
		if _, loaded := d.stmts.LoadOrStore(query, s); loaded {
			s.Close()
		}
	}
}

func (q querier) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	v, ok := q.d.stmts.Load(query)
	if !ok && q.tx != nil {
		// Preparing on the pool would wait for a connection while this
		// transaction holds one: with every connection in a transaction
		// that prepares, none would ever come back. Prepare on the
		// transaction's own connection, and cache it for the pool once
		// the transaction ended (cacheMissed).
		if s, ok := q.missed[query]; ok {
			return s, nil
		}
		s, err := q.tx.PrepareContext(ctx, query)
		if err == nil && q.missed != nil {
			q.missed[query] = s
		}
		return s, err
	}
	if !ok {
		s, err := q.d.db.PrepareContext(ctx, query)
		if err != nil {
			return nil, err
		}
		if v, ok = q.d.stmts.LoadOrStore(query, s); ok {
			s.Close() // another goroutine prepared it first
		}
	}
	s := v.(*sql.Stmt)
	if q.tx != nil {
		return q.tx.StmtContext(ctx, s), nil
	}
	return s, nil
}

func (q querier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := q.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

func (q querier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := q.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

// scanOne runs a query expected to return one row and scans it.
func (q querier) scanOne(ctx context.Context, query string, args []any, dest ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
}

// objectColumns are the objects table's columns, in scanRecord's order up
// to namespace; selectRecord adds the status row's.
const objectColumns = `fqn, kind, name, parent, labels, annotations, spec, etag, revision, create_time, update_time, namespace`

// selectRecord reads records with their status (from the status table).
const selectRecord = `SELECT o.fqn, o.kind, o.name, o.parent, o.labels, o.annotations, o.spec, o.etag, o.revision, o.create_time, o.update_time, o.namespace,
	COALESCE(s.body, ''), COALESCE(s.epoch, 0), COALESCE(s.update_time, 0)
	FROM objects o LEFT JOIN status s ON s.fqn = o.fqn`

func scanRecord(scan func(...any) error) (store.Record, error) {
	var (
		r                                    store.Record
		labels, annotations                  string
		spec, status                         string
		createNanos, updateNanos, statusTime int64
	)
	if err := scan(&r.FQN, &r.Kind, &r.Name, &r.Parent, &labels, &annotations, &spec, &r.ETag, &r.Revision, &createNanos, &updateNanos, &r.Namespace, &status, &r.StatusEpoch, &statusTime); err != nil {
		return store.Record{}, err
	}
	if err := json.Unmarshal([]byte(labels), &r.Labels); err != nil {
		return store.Record{}, fmt.Errorf("decode labels of %s: %w", r.FQN, err)
	}
	if err := json.Unmarshal([]byte(annotations), &r.Annotations); err != nil {
		return store.Record{}, fmt.Errorf("decode annotations of %s: %w", r.FQN, err)
	}
	if len(r.Labels) == 0 {
		r.Labels = nil
	}
	if len(r.Annotations) == 0 {
		r.Annotations = nil
	}
	r.Spec = json.RawMessage(spec)
	if status != "" {
		r.Status = json.RawMessage(status)
		r.StatusTime = time.Unix(0, statusTime).UTC()
	}
	r.CreateTime = time.Unix(0, createNanos).UTC()
	r.UpdateTime = time.Unix(0, updateNanos).UTC()
	return r, nil
}

func get(ctx context.Context, q querier, fqn string) (store.Record, error) {
	r, err := scanRecord(func(dest ...any) error {
		return q.scanOne(ctx, selectRecord+` WHERE o.fqn = $1`, []any{fqn}, dest...)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return store.Record{}, fmt.Errorf("%s: %w", fqn, store.ErrNotFound)
	}
	return r, err
}

func list(ctx context.Context, q querier, query store.Query) ([]store.Record, error) {
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if query.Kind != "" {
		add("o.kind = ?", query.Kind)
	}
	if query.Parent != "" {
		add("o.parent = ?", query.Parent)
	}
	if query.Name != "" {
		add("o.name = ?", query.Name)
	}
	if query.Ancestor != "" {
		// Descendants share the prefix "<ancestor>/". A range scan on the
		// primary key avoids LIKE and its escaping: '/'+1 is '0'.
		add("o.fqn > ?", query.Ancestor+"/")
		add("o.fqn < ?", query.Ancestor+"0")
	}
	if query.After != "" {
		add("o.fqn > ?", query.After)
	}
	sqlText := selectRecord
	if len(where) > 0 {
		sqlText += ` WHERE ` + strings.Join(where, " AND ")
	}
	sqlText += ` ORDER BY o.fqn`
	if query.Limit > 0 {
		sqlText += ` LIMIT ` + strconv.Itoa(query.Limit)
	}
	rows, err := q.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Record
	for rows.Next() {
		r, err := scanRecord(rows.Scan)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Get implements store.Reader.
func (d *DB) Get(ctx context.Context, fqn string) (store.Record, error) {
	return get(ctx, querier{d: d}, fqn)
}

// List implements store.Reader.
func (d *DB) List(ctx context.Context, q store.Query) ([]store.Record, error) {
	return list(ctx, querier{d: d}, q)
}

// Revision implements store.Store.
func (d *DB) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := d.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'revision'`).Scan(&rev)
	return rev, err
}

// Changed implements store.Store.
func (d *DB) Changed() <-chan struct{} {
	d.notifyMu.Lock()
	defer d.notifyMu.Unlock()
	return d.changed
}

// Wake wakes the store's watchers (Changed) for a commit made by another
// process, as a dialect's listener learns of it.
func (d *DB) Wake() { d.notify() }

// OnClose registers fn to run when the store closes, before the database
// does: a dialect stops its listener with it.
func (d *DB) OnClose(fn func()) {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	d.onClose = append(d.onClose, fn)
}

func (d *DB) notify() {
	d.notifyMu.Lock()
	close(d.changed)
	d.changed = make(chan struct{})
	d.notifyMu.Unlock()
}

// Ping implements store.Store.
func (d *DB) Ping(ctx context.Context) error { return d.db.PingContext(ctx) }

// Close implements store.Store.
func (d *DB) Close() error {
	d.closeMu.Lock()
	fns := d.onClose
	d.onClose = nil
	d.closeMu.Unlock()
	for _, fn := range fns {
		fn()
	}
	d.stmts.Range(func(_, v any) bool { v.(*sql.Stmt).Close(); return true })
	return d.db.Close()
}

// Update implements store.Store.
func (d *DB) Update(ctx context.Context, actor string, fn func(tx store.Tx) error) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	sqlTx, err := d.beginWrite(ctx)
	if err != nil {
		return err
	}
	missed := map[string]*sql.Stmt{}
	defer d.cacheMissed(missed) // after the rollback below: no connection held
	defer sqlTx.Rollback()
	t := &tx{q: querier{d: d, tx: sqlTx, missed: missed}, actor: actor, now: d.now().UTC()}
	if err := t.q.scanOne(ctx, `SELECT value FROM meta WHERE key = 'revision'`, nil, &t.rev); err != nil {
		return fmt.Errorf("read revision: %w", err)
	}
	start := t.rev
	if err := fn(t); err != nil {
		return err
	}
	if t.rev == start && !t.wrote {
		return nil // nothing written; nothing to commit
	}
	if t.rev != start {
		if _, err := t.q.ExecContext(ctx, `UPDATE meta SET value = $1 WHERE key = 'revision'`, t.rev); err != nil {
			return fmt.Errorf("write revision: %w", err)
		}
		if d.dialect.NotifyTx != "" {
			if _, err := sqlTx.ExecContext(ctx, d.dialect.NotifyTx); err != nil {
				return fmt.Errorf("notify: %w", err)
			}
		}
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	d.notify()
	return nil
}

// Events implements store.Store.
func (d *DB) Events(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT revision, type, record FROM events WHERE revision > $1 ORDER BY revision LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out, err := scanEvents(rows)
	if err != nil {
		return nil, err
	}
	// The compaction mark is read after the events: it only grows, and a
	// compaction deletes events and raises it in one transaction, so if it
	// is still at or below after, no event the query should have seen was
	// missing. Reading it first would let a compaction in between pass off
	// a gap as the full history.
	var compacted int64
	if err := d.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'compacted'`).Scan(&compacted); err != nil {
		return nil, err
	}
	if after < compacted {
		return nil, fmt.Errorf("events after revision %d were compacted (oldest kept: %d): re-list and watch from the list's revision: %w", after, compacted+1, store.ErrCompacted)
	}
	return out, nil
}

func scanEvents(rows *sql.Rows) ([]store.Event, error) {
	var out []store.Event
	for rows.Next() {
		var (
			ev  store.Event
			typ int
			rec string
		)
		if err := rows.Scan(&ev.Revision, &typ, &rec); err != nil {
			return nil, err
		}
		ev.Type = store.EventType(typ)
		if err := json.Unmarshal([]byte(rec), &ev.Record); err != nil {
			return nil, fmt.Errorf("decode event %d: %w", ev.Revision, err)
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

// Compact implements store.Store.
func (d *DB) Compact(ctx context.Context, rev int64) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	tx, err := d.beginWrite(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE revision <= $1`, rev); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = $1 WHERE key = 'compacted' AND value < $1`, rev); err != nil {
		return err
	}
	return tx.Commit()
}

// Audit implements store.Store.
func (d *DB) Audit(ctx context.Context, q store.AuditQuery) ([]store.AuditRecord, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	up := q.After != nil
	out, err := d.auditRows(ctx, q, limit, false)
	if err != nil {
		return nil, err
	}
	// The second log: refusals when asked for, operations always.
	refused, err := d.auditRows(ctx, q, limit, true)
	if err != nil {
		return nil, err
	}
	out = mergeAudit(out, refused, limit, up)
	if !up {
		slices.Reverse(out)
	}
	return out, nil
}

// mergeAudit merges changes and refusals, each in reading order (newest
// first, or with up oldest first), by time, and keeps the first limit. It
// takes each list in its own order, so what it keeps is a prefix of both.
// Of the same instant, a change reads before a refusal going down and
// after it going up, so that reading up is reading down reversed.
func mergeAudit(changes, refused []store.AuditRecord, limit int, up bool) []store.AuditRecord {
	out := make([]store.AuditRecord, 0, min(limit, len(changes)+len(refused)))
	i, j := 0, 0
	for len(out) < limit && (i < len(changes) || j < len(refused)) {
		var change bool
		switch {
		case j == len(refused):
			change = true
		case i == len(changes):
			change = false
		case up:
			change = changes[i].Time.Before(refused[j].Time)
		default:
			change = !changes[i].Time.Before(refused[j].Time)
		}
		if change {
			out = append(out, changes[i])
			i++
		} else {
			out = append(out, refused[j])
			j++
		}
	}
	return out
}

// auditRows reads, in reading order, the first limit rows matching q of the
// changes (ordered by revision) or of the refusals (ordered by number).
func (d *DB) auditRows(ctx context.Context, q store.AuditQuery, limit int, refused bool) ([]store.AuditRecord, error) {
	var (
		where []string
		args  []any
	)
	// arg adds a parameter and returns its placeholder.
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	under := func(fqn string) string {
		// Descendants share the prefix "<fqn>/"; '/'+1 is '0'.
		return "(fqn = " + arg(fqn) + " OR (fqn > " + arg(fqn+"/") + " AND fqn < " + arg(fqn+"0") + "))"
	}
	sqlText, id := `SELECT revision, 0, time, actor, operation, kind, fqn, changes FROM audit`, "revision"
	if refused {
		sqlText, id = `SELECT 0, seq, time, actor, operation, kind, fqn, reason, done FROM refused`, "seq"
		if !q.Refused {
			where = append(where, "done = 1")
		}
	}
	if !q.Since.IsZero() {
		where = append(where, "time >= "+arg(q.Since.UnixNano()))
	}
	if q.Kind != "" {
		where = append(where, "kind = "+arg(q.Kind))
	}
	if q.FQN != "" {
		where = append(where, under(q.FQN))
	}
	if c := q.Before; c != nil {
		where = append(where, id+" < "+arg(pick(refused, c.Refusal, c.Revision)))
	}
	if c := q.After; c != nil {
		where = append(where, id+" > "+arg(pick(refused, c.Refusal, c.Revision)))
	}
	if q.AnyOf != nil {
		terms := []string{"1 = 0"}
		for _, m := range q.AnyOf {
			conds := []string{"1 = 1"}
			if m.Under != "" {
				conds = append(conds, under(m.Under))
			}
			if m.Kind != "" {
				conds = append(conds, "kind = "+arg(m.Kind))
			}
			if m.Actor != "" {
				conds = append(conds, "actor = "+arg(m.Actor))
			}
			if m.NoFQN {
				conds = append(conds, "fqn = ''")
			}
			terms = append(terms, "("+strings.Join(conds, " AND ")+")")
		}
		where = append(where, "("+strings.Join(terms, " OR ")+")")
	}
	if len(where) > 0 {
		sqlText += ` WHERE ` + strings.Join(where, " AND ")
	}
	order := " DESC"
	if q.After != nil {
		order = " ASC"
	}
	sqlText += ` ORDER BY ` + id + order + ` LIMIT ` + strconv.Itoa(limit)
	rows, err := d.db.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.AuditRecord
	for rows.Next() {
		var (
			a     store.AuditRecord
			nanos int64
			last  string
			done  int64
		)
		dest := []any{&a.Revision, &a.Refusal, &nanos, &a.Actor, &a.Operation, &a.Kind, &a.FQN, &last}
		if refused {
			dest = append(dest, &done)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		a.Time = time.Unix(0, nanos).UTC()
		if refused {
			a.Refused, a.Reason = done == 0, last
		} else if err := json.Unmarshal([]byte(last), &a.Changes); err != nil {
			return nil, fmt.Errorf("decode audit %d: %w", a.Revision, err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func pick(cond bool, a, b int64) int64 {
	if cond {
		return a
	}
	return b
}

// AuditTop implements store.Store.
func (d *DB) AuditTop(ctx context.Context) (store.AuditCursor, error) {
	var c store.AuditCursor
	err := querier{d: d}.scanOne(ctx, `SELECT (SELECT COALESCE(MAX(revision), 0) FROM audit), (SELECT COALESCE(MAX(seq), 0) FROM refused)`, nil, &c.Revision, &c.Refusal)
	if err != nil {
		return store.AuditCursor{}, fmt.Errorf("read the newest audit records: %w", err)
	}
	c.Revision++
	c.Refusal++
	return c, nil
}

// Refuse implements store.Store. A refusal takes the next number of the
// refusals counter, whose row lock (PostgreSQL) or the single writer
// (SQLite) orders concurrent refusals; it takes no intent lock.
func (d *DB) Refuse(ctx context.Context, r store.AuditRecord) error {
	if err := d.noIntent(ctx, r, 0); err != nil {
		return fmt.Errorf("record a refused request: %w", err)
	}
	return nil
}

// RecordOperation implements store.Store, numbered as Refuse numbers.
func (d *DB) RecordOperation(ctx context.Context, r store.AuditRecord) error {
	if err := d.noIntent(ctx, r, 1); err != nil {
		return fmt.Errorf("record %s in the audit: %w", r.Operation, err)
	}
	return nil
}

// noIntent appends r to the log of requests that wrote no intent.
func (d *DB) noIntent(ctx context.Context, r store.AuditRecord, done int) error {
	return d.statusTx(ctx, func(q querier) error {
		var n int64
		if _, err := q.ExecContext(ctx, `UPDATE refusals SET last = last + 1`); err != nil {
			return err
		}
		if err := q.scanOne(ctx, `SELECT last FROM refusals`, nil, &n); err != nil {
			return err
		}
		_, err := q.ExecContext(ctx, `INSERT INTO refused (seq, time, actor, operation, kind, fqn, reason, done) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			n, d.now().UTC().UnixNano(), r.Actor, r.Operation, r.Kind, r.FQN, r.Reason, done)
		return err
	})
}

// KindsChanged implements store.Store.
func (d *DB) KindsChanged(ctx context.Context, after int64) ([]string, error) {
	return kindsChanged(ctx, querier{d: d}, after)
}

// KindsChanged implements store.Tx.
func (t *tx) KindsChanged(ctx context.Context, after int64) ([]string, error) {
	return kindsChanged(ctx, t.q, after)
}

func kindsChanged(ctx context.Context, q querier, after int64) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT DISTINCT kind FROM events WHERE revision > $1`, after)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// As in Events, the mark is read after the rows.
	var compacted int64
	if err := q.scanOne(ctx, `SELECT value FROM meta WHERE key = 'compacted'`, nil, &compacted); err != nil {
		return nil, err
	}
	if after < compacted {
		return nil, fmt.Errorf("events after revision %d were compacted: %w", after, store.ErrCompacted)
	}
	return out, nil
}

// tx implements store.Tx inside Update.
type tx struct {
	wrote bool // a write that takes no revision (credentials) must still commit
	q     querier
	actor string
	now   time.Time
	rev   int64
}

func (t *tx) Get(ctx context.Context, fqn string) (store.Record, error) { return get(ctx, t.q, fqn) }

func (t *tx) Revision() int64 { return t.rev }

func (t *tx) List(ctx context.Context, q store.Query) ([]store.Record, error) {
	return list(ctx, t.q, q)
}

func etag(fqn string, rev int64) string {
	sum := sha256.Sum256([]byte(fqn + "\x00" + strconv.FormatInt(rev, 10)))
	return hex.EncodeToString(sum[:8])
}

func (t *tx) Put(ctx context.Context, rec store.Record) (store.Record, error) {
	old, err := get(ctx, t.q, rec.FQN)
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Record{}, err
	}
	t.rev++
	rec.Revision = t.rev
	rec.ETag = etag(rec.FQN, t.rev)
	if len(rec.Labels) == 0 {
		rec.Labels = nil
	}
	if len(rec.Annotations) == 0 {
		rec.Annotations = nil
	}
	rec.UpdateTime = t.now
	// Status is not intent: Put never writes it (PutStatus does).
	rec.Status, rec.StatusEpoch, rec.StatusTime = nil, 0, time.Time{}
	if exists {
		rec.CreateTime = old.CreateTime
	} else {
		rec.CreateTime = t.now
	}
	if err := t.upsert(ctx, rec, exists); err != nil {
		return store.Record{}, err
	}
	op, changes := "create", store.Diff(store.Record{}, rec)
	if exists {
		old.Status, old.StatusEpoch, old.StatusTime = nil, 0, time.Time{}
		op, changes = "update", store.Diff(old, rec)
	}
	if err := t.event(ctx, store.EventPut, rec); err != nil {
		return store.Record{}, err
	}
	return rec, t.audit(ctx, op, rec, changes)
}

func (t *tx) Delete(ctx context.Context, fqn string) (store.Record, error) {
	old, err := get(ctx, t.q, fqn)
	if err != nil {
		return store.Record{}, err
	}
	t.rev++
	if _, err := t.q.ExecContext(ctx, `DELETE FROM objects WHERE fqn = $1`, fqn); err != nil {
		return store.Record{}, fmt.Errorf("delete %s: %w", fqn, err)
	}
	if _, err := t.q.ExecContext(ctx, `DELETE FROM status WHERE fqn = $1`, fqn); err != nil {
		return store.Record{}, fmt.Errorf("delete status of %s: %w", fqn, err)
	}
	// Credentials issued for the record (a cluster's join tokens and agent
	// credential) stop working in the same transaction.
	if _, err := t.q.ExecContext(ctx, `DELETE FROM credentials WHERE cluster = $1`, fqn); err != nil {
		return store.Record{}, fmt.Errorf("revoke credentials of %s: %w", fqn, err)
	}
	old.Status, old.StatusEpoch, old.StatusTime = nil, 0, time.Time{}
	if err := t.event(ctx, store.EventDelete, old); err != nil {
		return store.Record{}, err
	}
	return old, t.audit(ctx, "delete", old, store.Diff(old, store.Record{}))
}

func (t *tx) upsert(ctx context.Context, r store.Record, exists bool) error {
	labels, err := json.Marshal(nonNil(r.Labels))
	if err != nil {
		return err
	}
	annotations, err := json.Marshal(nonNil(r.Annotations))
	if err != nil {
		return err
	}
	args := []any{r.FQN, r.Kind, r.Name, r.Parent, string(labels), string(annotations), string(r.Spec), r.ETag, r.Revision, r.CreateTime.UnixNano(), r.UpdateTime.UnixNano(), r.Namespace}
	q := `INSERT INTO objects (` + objectColumns + `, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, '')`
	if exists {
		q = `UPDATE objects SET kind = $2, name = $3, parent = $4, labels = $5, annotations = $6, spec = $7, etag = $8, revision = $9, create_time = $10, update_time = $11, namespace = $12 WHERE fqn = $1`
	}
	if _, err := t.q.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("write %s: %w", r.FQN, err)
	}
	return nil
}

func (t *tx) event(ctx context.Context, typ store.EventType, r store.Record) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := t.q.ExecContext(ctx, `INSERT INTO events (revision, type, fqn, kind, record) VALUES ($1, $2, $3, $4, $5)`, t.rev, int(typ), r.FQN, r.Kind, string(body)); err != nil {
		return fmt.Errorf("record event for %s: %w", r.FQN, err)
	}
	return nil
}

func (t *tx) audit(ctx context.Context, op string, r store.Record, changes []store.Change) error {
	body, err := json.Marshal(nonNilChanges(changes))
	if err != nil {
		return err
	}
	if _, err := t.q.ExecContext(ctx, `INSERT INTO audit (revision, time, actor, operation, kind, fqn, changes) VALUES ($1, $2, $3, $4, $5, $6, $7)`, t.rev, t.now.UnixNano(), t.actor, op, r.Kind, r.FQN, string(body)); err != nil {
		return fmt.Errorf("record audit for %s: %w", r.FQN, err)
	}
	return nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilChanges(c []store.Change) []store.Change {
	if c == nil {
		return []store.Change{}
	}
	return c
}

func getCredential(ctx context.Context, q querier, hash string) (store.Credential, error) {
	var (
		c                store.Credential
		expires, created int64
		used             int
	)
	err := q.scanOne(ctx, `SELECT hash, cluster, kind, expires, used, create_time FROM credentials WHERE hash = $1`, []any{hash}, &c.Hash, &c.Cluster, &c.Kind, &expires, &used, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Credential{}, fmt.Errorf("credential: %w", store.ErrNotFound)
	} else if err != nil {
		return store.Credential{}, err
	}
	c.Expires, c.CreateTime, c.Used = time.Unix(0, expires).UTC(), time.Unix(0, created).UTC(), used != 0
	return c, nil
}

// Credential implements store.Store.
func (d *DB) Credential(ctx context.Context, hash string) (store.Credential, error) {
	return getCredential(ctx, querier{d: d}, hash)
}

func (t *tx) GetCredential(ctx context.Context, hash string) (store.Credential, error) {
	return getCredential(ctx, t.q, hash)
}

func (t *tx) PutCredential(ctx context.Context, c store.Credential) error {
	if c.CreateTime.IsZero() {
		c.CreateTime = t.now
	}
	used := 0
	if c.Used {
		used = 1
	}
	if _, err := t.q.ExecContext(ctx, `DELETE FROM credentials WHERE hash = $1`, c.Hash); err != nil {
		return err
	}
	_, err := t.q.ExecContext(ctx, `INSERT INTO credentials (hash, cluster, kind, expires, used, create_time) VALUES ($1, $2, $3, $4, $5, $6)`,
		c.Hash, c.Cluster, c.Kind, c.Expires.UnixNano(), used, c.CreateTime.UnixNano())
	if err != nil {
		return fmt.Errorf("write credential for %s: %w", c.Cluster, err)
	}
	t.wrote = true
	return nil
}

func (t *tx) DeleteCredentials(ctx context.Context, cluster, kind string) error {
	if _, err := t.q.ExecContext(ctx, `DELETE FROM credentials WHERE cluster = $1 AND kind = $2`, cluster, kind); err != nil {
		return fmt.Errorf("delete %s credentials of %s: %w", kind, cluster, err)
	}
	t.wrote = true
	return nil
}

// statusTx runs fn in a transaction of its own. Status writes do not take
// the intent write lock (LockTx): they take no revision, so they need not
// be ordered with intent, and on PostgreSQL a status flush never waits
// behind an apply (rows they touch are locked as usual). On a single-writer
// database they queue on writeMu with everything else.
func (d *DB) statusTx(ctx context.Context, fn func(q querier) error) error {
	if d.dialect.SingleWriter {
		d.writeMu.Lock()
		defer d.writeMu.Unlock()
	}
	sqlTx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w: %w", store.ErrUnavailable, err)
	}
	missed := map[string]*sql.Stmt{}
	defer d.cacheMissed(missed) // after the rollback below: no connection held
	defer sqlTx.Rollback()
	if d.dialect.SeqTx != "" {
		if _, err := sqlTx.ExecContext(ctx, d.dialect.SeqTx); err != nil {
			return fmt.Errorf("number the status write: %w", err)
		}
	}
	if err := fn(querier{d: d, tx: sqlTx, missed: missed}); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// ClaimStatus implements store.Store.
func (d *DB) ClaimStatus(ctx context.Context, fqn string) (int64, error) {
	var epoch int64
	err := d.statusTx(ctx, func(q querier) error {
		var n int
		if err := q.scanOne(ctx, `SELECT COUNT(*) FROM objects WHERE fqn = $1`, []any{fqn}, &n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("claim status of %s: %w", fqn, store.ErrNotFound)
		}
		if _, err := q.ExecContext(ctx, `INSERT INTO status (fqn, epoch, body, update_time) VALUES ($1, 0, '', 0) ON CONFLICT (fqn) DO NOTHING`, fqn); err != nil {
			return fmt.Errorf("claim status of %s: %w", fqn, err)
		}
		if _, err := q.ExecContext(ctx, `UPDATE status SET epoch = epoch + 1, seq = `+d.dialect.Seq+` WHERE fqn = $1`, fqn); err != nil {
			return fmt.Errorf("claim status of %s: %w", fqn, err)
		}
		return q.scanOne(ctx, `SELECT epoch FROM status WHERE fqn = $1`, []any{fqn}, &epoch)
	})
	return epoch, err
}

// byFQN returns the writes sorted by FQN: every transaction that writes
// several status rows locks them in one order, so two replicas' writes
// (status and runtime alike) wait for each other instead of deadlocking.
func byFQN[W any](writes []W, fqn func(W) string) []W {
	out := slices.Clone(writes)
	slices.SortStableFunc(out, func(a, b W) int { return strings.Compare(fqn(a), fqn(b)) })
	return out
}

// PutStatus implements store.Store.
func (d *DB) PutStatus(ctx context.Context, writes []store.StatusWrite) ([]string, error) {
	var fenced []string
	now := d.now().UnixNano()
	writes = byFQN(writes, func(w store.StatusWrite) string { return w.FQN })
	err := d.statusTx(ctx, func(q querier) error {
		fenced = fenced[:0]
		for _, w := range writes {
			var (
				res sql.Result
				err error
			)
			if w.Status == nil { // a renewal: the body stands
				res, err = q.ExecContext(ctx, `UPDATE status SET update_time = $1, seq = `+d.dialect.Seq+` WHERE fqn = $2 AND epoch = $3`, now, w.FQN, w.Epoch)
			} else {
				res, err = q.ExecContext(ctx, `UPDATE status SET body = $1, update_time = $2, seq = `+d.dialect.Seq+`, body_seq = `+d.dialect.Seq+` WHERE fqn = $3 AND epoch = $4`,
					string(w.Status), now, w.FQN, w.Epoch)
			}
			if err != nil {
				return fmt.Errorf("write status of %s: %w", w.FQN, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				continue
			}
			if w.Epoch == 0 && w.Status != nil {
				// A writer with no session, and no row at epoch 0: the record
				// never had a status, or another writer without one (another
				// replica) is creating it now, or a session claimed it. One
				// upsert settles the first two; the last fences this write.
				res, err := q.ExecContext(ctx, `INSERT INTO status (fqn, epoch, body, update_time, seq, body_seq) SELECT fqn, 0, $1, $2, `+d.dialect.Seq+`, `+d.dialect.Seq+` FROM objects WHERE fqn = $3
ON CONFLICT (fqn) DO UPDATE SET body = excluded.body, update_time = excluded.update_time, seq = excluded.seq, body_seq = excluded.body_seq WHERE status.epoch = 0`,
					string(w.Status), now, w.FQN)
				if err != nil {
					return fmt.Errorf("write status of %s: %w", w.FQN, err)
				}
				if n, err := res.RowsAffected(); err != nil {
					return err
				} else if n == 1 {
					continue
				}
			}
			// No row at this epoch: a newer session holds the record, or the
			// record is gone (or, for a renewal, it never had a status).
			newer, _, err := missedWrite(ctx, q, "status", w.FQN, w.Epoch)
			switch {
			case err != nil:
				return err
			case newer:
				fenced = append(fenced, w.FQN)
			} // else deleted with its record, or nothing to renew
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fenced, nil
}

// PutRuntime implements store.Store. Each written row's runtime_seq puts
// it in the change feed that Runtimes reads.
func (d *DB) PutRuntime(ctx context.Context, writes []store.RuntimeWrite) ([]string, error) {
	var fenced []string
	now := d.now().UnixNano()
	update := `UPDATE status SET runtime_bytes = $1, runtime = '', runtime_gen = runtime_gen + 1, runtime_time = $2, runtime_seq = ` +
		d.dialect.Seq + ` WHERE fqn = $3 AND epoch = $4`
	writes = byFQN(writes, func(w store.RuntimeWrite) string { return w.FQN })
	err := d.statusTx(ctx, func(q querier) error {
		fenced = fenced[:0]
		wrote := false
		for _, w := range writes {
			res, err := q.ExecContext(ctx, update, w.Runtime, now, w.FQN, w.Epoch)
			if err != nil {
				return fmt.Errorf("write runtime of %s: %w", w.FQN, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				wrote = true
				continue
			}
			newer, _, err := missedWrite(ctx, q, "runtime", w.FQN, w.Epoch)
			if err != nil {
				return err
			}
			if newer {
				fenced = append(fenced, w.FQN)
			} // else deleted with its record
		}
		if !wrote {
			return nil
		}
		if d.dialect.NotifyTx != "" {
			if _, err := q.tx.ExecContext(ctx, d.dialect.NotifyTx); err != nil {
				return fmt.Errorf("notify: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fenced, nil
}

// missedWrite tells why a write of what (status or runtime) at epoch
// matched no status row: a newer session holds the record (newer), or the
// record has no status row (gone: deleted, or never claimed). An older
// stored epoch means the writer used an epoch nobody claimed: an error.
func missedWrite(ctx context.Context, q querier, what, fqn string, epoch int64) (newer, gone bool, err error) {
	var stored int64
	err = q.scanOne(ctx, `SELECT epoch FROM status WHERE fqn = $1`, []any{fqn}, &stored)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, true, nil
	case err != nil:
		return false, false, err
	case stored > epoch:
		return true, false, nil
	}
	return false, false, fmt.Errorf("write %s of %s at epoch %d: no session claimed it (latest claim %d)", what, fqn, epoch, stored)
}

// Runtimes implements store.Store: one indexed read of the rows written
// at or after since (the feed may hand back a row again while an older
// transaction is still open; have filters it out).
func (d *DB) Runtimes(ctx context.Context, since int64, have map[string]int64) ([]store.Runtime, int64, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT m.mark, s.fqn, s.epoch, s.runtime_gen, s.runtime_bytes, s.runtime, s.runtime_time
FROM (SELECT `+d.dialect.Mark+` AS mark) m
LEFT JOIN status s ON s.runtime_seq >= $1 AND s.runtime_gen > 0
ORDER BY s.fqn`, since)
	if err != nil {
		return nil, 0, fmt.Errorf("read the runtime snapshots written since %d: %w", since, err)
	}
	defer rows.Close()
	var (
		out  []store.Runtime
		mark int64
	)
	for rows.Next() {
		var (
			fqn, legacy    sql.NullString
			epoch, gen, at sql.NullInt64
			snapshot       []byte
		)
		if err := rows.Scan(&mark, &fqn, &epoch, &gen, &snapshot, &legacy, &at); err != nil {
			return nil, 0, err
		}
		if !fqn.Valid || have[fqn.String] == gen.Int64 {
			continue // no row changed (the join's one row), or one the caller has
		}
		if snapshot == nil && legacy.String != "" { // written before v10 on SQLite
			if snapshot, err = base64.StdEncoding.DecodeString(legacy.String); err != nil {
				return nil, 0, fmt.Errorf("read the runtime snapshot of %s: %w", fqn.String, err)
			}
		}
		out = append(out, store.Runtime{FQN: fqn.String, Epoch: epoch.Int64, Gen: gen.Int64, Runtime: snapshot, Time: time.Unix(0, at.Int64).UTC()})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return out, mark, nil
}

// Statuses implements store.Store: one indexed read of the rows claimed or
// written at or after since, with the body only where it was written then.
func (d *DB) Statuses(ctx context.Context, since int64) ([]store.StatusChange, int64, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT m.mark, s.fqn, s.epoch, s.update_time, CASE WHEN s.body_seq >= $1 THEN s.body END
FROM (SELECT `+d.dialect.Mark+` AS mark) m
LEFT JOIN status s ON s.seq >= $1
ORDER BY s.fqn`, since)
	if err != nil {
		return nil, 0, fmt.Errorf("read the statuses written since %d: %w", since, err)
	}
	defer rows.Close()
	var (
		out  []store.StatusChange
		mark int64
	)
	for rows.Next() {
		var (
			fqn, body sql.NullString
			epoch, at sql.NullInt64
		)
		if err := rows.Scan(&mark, &fqn, &epoch, &at, &body); err != nil {
			return nil, 0, err
		}
		if !fqn.Valid {
			continue // nothing changed: the join's one row
		}
		c := store.StatusChange{FQN: fqn.String, Epoch: epoch.Int64, Time: time.Unix(0, at.Int64).UTC()}
		if body.Valid {
			c.Status = json.RawMessage(body.String)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return out, mark, nil
}

// CountCredentials implements store.Tx.
func (t *tx) CountCredentials(ctx context.Context, cluster, kind string) (int, error) {
	var n int
	err := t.q.scanOne(ctx, `SELECT COUNT(*) FROM credentials WHERE cluster = $1 AND kind = $2`, []any{cluster, kind}, &n)
	return n, err
}

// DeleteExpiredCredentials implements store.Tx.
func (t *tx) DeleteExpiredCredentials(ctx context.Context, cluster, kind string, now time.Time) error {
	if _, err := t.q.ExecContext(ctx, `DELETE FROM credentials WHERE cluster = $1 AND kind = $2 AND expires < $3`, cluster, kind, now.UnixNano()); err != nil {
		return fmt.Errorf("delete expired %s credentials of %s: %w", kind, cluster, err)
	}
	t.wrote = true
	return nil
}
