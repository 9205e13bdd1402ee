package sqlstore

// Migrations returns the schema history of a dialect ("postgres" or
// "sqlite"). Both take the same statements except where a version says
// otherwise. Append new versions; never edit a released one.
func Migrations(dialect string) []string {
	v1 := `
CREATE TABLE objects (
	fqn TEXT PRIMARY KEY,
	kind TEXT NOT NULL,
	name TEXT NOT NULL,
	parent TEXT NOT NULL,
	labels TEXT NOT NULL,
	annotations TEXT NOT NULL,
	spec TEXT NOT NULL,
	status TEXT NOT NULL,
	etag TEXT NOT NULL,
	revision BIGINT NOT NULL,
	create_time BIGINT NOT NULL,
	update_time BIGINT NOT NULL
);
CREATE INDEX objects_kind ON objects (kind, fqn);
CREATE INDEX objects_parent ON objects (parent);
CREATE TABLE events (
	revision BIGINT PRIMARY KEY,
	type INTEGER NOT NULL,
	fqn TEXT NOT NULL,
	kind TEXT NOT NULL,
	record TEXT NOT NULL
);
CREATE TABLE audit (
	revision BIGINT PRIMARY KEY,
	time BIGINT NOT NULL,
	actor TEXT NOT NULL,
	operation TEXT NOT NULL,
	kind TEXT NOT NULL,
	fqn TEXT NOT NULL,
	changes TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (time);
CREATE TABLE meta (
	key TEXT PRIMARY KEY,
	value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', 0);
INSERT INTO meta (key, value) VALUES ('compacted', 0)`
	v2 := `
CREATE TABLE credentials (
	hash TEXT PRIMARY KEY,
	cluster TEXT NOT NULL,
	kind TEXT NOT NULL,
	expires BIGINT NOT NULL,
	used INTEGER NOT NULL,
	create_time BIGINT NOT NULL
);
CREATE INDEX credentials_cluster ON credentials (cluster, kind)`
	v3 := `ALTER TABLE objects ADD COLUMN namespace TEXT NOT NULL DEFAULT ''`
	// v4 moves status out of the objects table (and so out of the event
	// log): one row per record, fenced by the epoch of its writer's session.
	v4 := `
CREATE TABLE status (
	fqn TEXT PRIMARY KEY,
	epoch BIGINT NOT NULL,
	body TEXT NOT NULL,
	update_time BIGINT NOT NULL
);
INSERT INTO status (fqn, epoch, body, update_time) SELECT fqn, 0, status, update_time FROM objects WHERE status <> '';
UPDATE objects SET status = ''`
	// v5 keeps requests the server refused (bad input, no credential, no
	// permission). They wrote nothing, so they take no revision.
	v5 := `
CREATE TABLE refused (
	time BIGINT NOT NULL,
	actor TEXT NOT NULL,
	operation TEXT NOT NULL,
	kind TEXT NOT NULL,
	fqn TEXT NOT NULL,
	reason TEXT NOT NULL
);
CREATE INDEX refused_time ON refused (time)`
	// v6 keeps each cluster's runtime snapshot (what runs in it, as its
	// agent reports it) beside its status, so that every server replica,
	// and a restarted server, knows the whole fleet's services. The meta
	// counter lets a reader tell in one read whether any snapshot changed.
	v6 := `
ALTER TABLE status ADD COLUMN runtime TEXT NOT NULL DEFAULT '';
ALTER TABLE status ADD COLUMN runtime_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE status ADD COLUMN runtime_time BIGINT NOT NULL DEFAULT 0;
INSERT INTO meta (key, value) VALUES ('runtime', 0)`
	// v7 numbers refused requests (seq), so that the audit can be read in
	// pages with a cursor that neither skips nor repeats a refusal of the
	// same instant. Existing refusals are numbered in time order. The
	// counter has a table of its own, not a meta key: a refusal changes no
	// intent, and meta is part of intent's state.
	v7 := `
CREATE TABLE refused_seq (
	seq BIGINT PRIMARY KEY,
	time BIGINT NOT NULL,
	actor TEXT NOT NULL,
	operation TEXT NOT NULL,
	kind TEXT NOT NULL,
	fqn TEXT NOT NULL,
	reason TEXT NOT NULL
);
INSERT INTO refused_seq (seq, time, actor, operation, kind, fqn, reason) SELECT ROW_NUMBER() OVER (ORDER BY time), time, actor, operation, kind, fqn, reason FROM refused;
DROP TABLE refused;
ALTER TABLE refused_seq RENAME TO refused;
CREATE INDEX refused_time ON refused (time);
CREATE TABLE refusals (last BIGINT NOT NULL);
INSERT INTO refusals (last) SELECT COALESCE(MAX(seq), 0) FROM refused`
	// v8 lets the log of requests that wrote no intent hold, beside the
	// refusals, the operations carried out on state outside the store
	// (signing keys, the bootstrap credential): done is 1 for those.
	v8 := `ALTER TABLE refused ADD COLUMN done INTEGER NOT NULL DEFAULT 0`
	// v9 pins byte order on the PostgreSQL columns that range scans and
	// ordered reads use: an ancestor's descendants are read as the range
	// ('<fqn>/', '<fqn>0'), which holds only if '/' sorts just before '0'
	// and nothing is ignored, as in the "C" collation but not in every
	// locale's. SQLite compares TEXT bytewise (BINARY) already.
	v9 := `SELECT 1`
	if dialect == "postgres" {
		v9 = `
ALTER TABLE objects ALTER COLUMN fqn TYPE TEXT COLLATE "C";
ALTER TABLE objects ALTER COLUMN kind TYPE TEXT COLLATE "C";
ALTER TABLE objects ALTER COLUMN parent TYPE TEXT COLLATE "C";
ALTER TABLE objects ALTER COLUMN namespace TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN fqn TYPE TEXT COLLATE "C";
ALTER TABLE audit ALTER COLUMN fqn TYPE TEXT COLLATE "C";
ALTER TABLE refused ALTER COLUMN fqn TYPE TEXT COLLATE "C";
ALTER TABLE status ALTER COLUMN fqn TYPE TEXT COLLATE "C";
ALTER TABLE credentials ALTER COLUMN cluster TYPE TEXT COLLATE "C"`
	}
	// v10 turns the status table into two change feeds, so that a replica
	// reads only the rows that moved instead of scanning the fleet: seq
	// numbers every claim, status write and renewal, body_seq every status
	// body written, runtime_seq every runtime snapshot written. A reader
	// asks for the rows at or above the mark its last read returned,
	// through an index. On PostgreSQL a row's number is the writing
	// transaction's ID and the mark the oldest transaction still running
	// when the reader looked, so no row is shared by the writers (v6's
	// counter row in meta was written by every runtime write of every
	// replica), and a transaction that commits late is still read, since
	// its ID is at or above that mark. SQLite has one writer at a time, so
	// a counter in meta numbers the writes. Runtime snapshots are stored as
	// bytes (runtime_bytes; v6 kept them as base64 text). SQLite has no
	// base64 decoder in SQL: its rows written before v10 keep their text
	// until their next write, and are read from it.
	v10 := `
ALTER TABLE status ADD COLUMN runtime_bytes BLOB;
ALTER TABLE status ADD COLUMN runtime_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE status ADD COLUMN seq BIGINT NOT NULL DEFAULT 1;
ALTER TABLE status ADD COLUMN body_seq BIGINT NOT NULL DEFAULT 1;
UPDATE status SET runtime_seq = 1 WHERE runtime_gen > 0;
UPDATE meta SET key = 'feed', value = 1 WHERE key = 'runtime';
CREATE INDEX status_runtime_seq ON status (runtime_seq);
CREATE INDEX status_seq ON status (seq)`
	if dialect == "postgres" {
		v10 = `
ALTER TABLE status ADD COLUMN runtime_bytes BYTEA;
ALTER TABLE status ADD COLUMN runtime_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE status ADD COLUMN seq BIGINT NOT NULL DEFAULT 1;
ALTER TABLE status ADD COLUMN body_seq BIGINT NOT NULL DEFAULT 1;
UPDATE status SET runtime_bytes = decode(runtime, 'base64'), runtime = '', runtime_seq = 1 WHERE runtime_gen > 0;
DELETE FROM meta WHERE key = 'runtime';
CREATE INDEX status_runtime_seq ON status (runtime_seq);
CREATE INDEX status_seq ON status (seq)`
	}
	return []string{v1, v2, v3, v4, v5, v6, v7, v8, v9, v10}
}
