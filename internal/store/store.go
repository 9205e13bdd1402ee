// Package store keeps Flotilla's intent, its change history and its audit
// log. It is the management plane's single source of truth.
//
//	apiserver ──Update(fn)──▶ Store ──one transaction──▶ objects + events + audit
//	watchers  ◀──Events(after)── Store (revision order, no gaps)
//
// The store knows nothing of kinds: it keeps opaque Records keyed by their
// fully qualified name (FQN). Writers are serialized, so the global revision
// grows by one per mutation, in commit order, and a reader that has seen
// revision r has seen every change up to r. Each mutation's event and audit
// record commit in the same transaction as the mutation itself.
//
// Two implementations share one SQL core (package sqlstore): SQLite (the
// embedded default) and PostgreSQL. The contract suite in storetest runs
// against both.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// Errors returned by stores. Callers test them with errors.Is.
var (
	ErrNotFound  = errors.New("not found")
	ErrCompacted = errors.New("revision compacted")
	// ErrUnavailable says the database could not be reached: a write
	// failing with it was not made.
	ErrUnavailable = errors.New("the store is unavailable")
	// ErrFenced refuses a status write from a session that a newer one
	// replaced (see Store.ClaimStatus).
	ErrFenced = errors.New("fenced by a newer status session")
)

// Record is one stored resource. Spec and Status are canonical JSON
// (sorted keys, no insignificant space), so equal content has equal bytes.
type Record struct {
	Kind        string
	FQN         string
	Name        string
	Parent      string // FQN of the parent; empty for a root
	Namespace   string // target namespace of a raw Istio object; usually empty
	Labels      map[string]string
	Annotations map[string]string
	Spec        json.RawMessage
	// Status is runtime state reported about the record (a cluster's
	// connection, acknowledgements and facts). It is written with PutStatus,
	// never by Put, and is not part of the event log or the audit (hence
	// the json tags: events are stored as JSON).
	Status json.RawMessage `json:"-"`
	// StatusEpoch is the status session that wrote Status (ClaimStatus).
	StatusEpoch int64 `json:"-"`
	// StatusTime is when Status was last written.
	StatusTime time.Time `json:"-"`
	ETag       string    // set by the store on every write
	Revision   int64     // set by the store: the revision of the last write
	CreateTime time.Time
	UpdateTime time.Time
}

// Query selects records. Empty fields match everything.
type Query struct {
	Kind     string
	Ancestor string // only descendants of this FQN
	Parent   string // only direct children of this FQN
	Name     string
	After    string // only FQNs after this one (paging)
	Limit    int    // at most this many; 0 means no bound
}

// EventType says what happened to a record.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one mutation at one revision. For a delete, Record holds the last state.
type Event struct {
	Revision int64
	Type     EventType
	Record   Record
}

// Change is one field of a field-level diff. Old is nil for an added field,
// New for a removed one.
type Change struct {
	Path string          `json:"path"`
	Old  json.RawMessage `json:"old,omitempty"`
	New  json.RawMessage `json:"new,omitempty"`
}

// AuditRecord describes one mutation: who, when, what and how; or one
// request that wrote no intent: a refused request, which changed nothing,
// or an operation on state the store does not hold (a signing-key
// rotation, the bootstrap credential's end).
type AuditRecord struct {
	Revision int64 // 0 for a request that wrote no intent
	// Refusal numbers a request that wrote no intent in the order they
	// were recorded (1, 2, ...); 0 for a change.
	Refusal   int64
	Time      time.Time
	Actor     string // see Actor
	Operation string // create, update or delete; for a refused request, its operation
	Kind      string
	FQN       string
	Changes   []Change
	// Refused is set on a request the server turned down; Reason says why.
	// On an operation (Refusal set, Refused not), Reason says what it did.
	Refused bool
	Reason  string
}

// Done reports whether r is an operation carried out on state outside the
// store (not a change, not a refusal).
func (r AuditRecord) Done() bool { return r.Refusal > 0 && !r.Refused }

// Actor names who made a change and how they proved it, as the audit
// keeps it: "user:alice@example.com via oidc". System writers pass a plain
// name and an empty method.
func Actor(subject, method string) string {
	if method == "" {
		return subject
	}
	return subject + " via " + method
}

// SplitActor undoes Actor.
func SplitActor(actor string) (subject, method string) {
	if i := strings.LastIndex(actor, " via "); i >= 0 {
		return actor[:i], actor[i+len(" via "):]
	}
	return actor, ""
}

// AuditQuery selects audit records. Audit returns them oldest first: the
// newest Limit that match, or with After set the oldest Limit after it.
//
// The audit is two logs, each in its own order: changes by revision, and
// requests that wrote no intent (refusals, and operations on state outside
// the store) by their number. Audit merges them by time, taking each log's records in that log's order, so that the
// records it returns are a prefix of each log (from the newest, or from
// After) and the cursor past the last record read (AuditCursor.Past) resumes
// exactly where it stopped, whatever the clocks did.
type AuditQuery struct {
	Since time.Time // zero: no lower bound
	Kind  string
	FQN   string // this resource and its descendants
	Limit int    // at most this many records; 0 means 1000
	// Refused adds the refused requests. Operations on state outside the
	// store are always read.
	Refused bool
	// Before, when set, keeps only records older than the cursor: pages
	// read from the newest down pass the cursor past the last record read.
	Before *AuditCursor
	// After, when set, keeps only records newer than the cursor, and the
	// oldest Limit of them are returned: reading forward, as an export
	// does.
	After *AuditCursor
	// AnyOf, when not nil, keeps only records that meet at least one of
	// its terms (an empty list keeps none). It narrows a scan to what a
	// caller could be shown; it decides nothing by itself.
	AnyOf []AuditMatch
}

// AuditMatch is one term of AuditQuery.AnyOf: a record meets it when it
// meets every field that is set.
type AuditMatch struct {
	Under string // the record's FQN is Under or lies below it
	Kind  string
	Actor string
	NoFQN bool // the record names no object (a refused request about none)
}

// AuditCursor is a position in the audit, between records. As Before, it
// keeps the changes whose revision is below Revision and the refusals
// whose number is below Refusal; as After, those above.
type AuditCursor struct {
	Revision int64
	Refusal  int64
}

// Past is the cursor just past r, in whichever direction it was read:
// r's own log moves to r, the other log stays.
func (c AuditCursor) Past(r AuditRecord) AuditCursor {
	if r.Refusal > 0 {
		c.Refusal = r.Refusal
	} else {
		c.Revision = r.Revision
	}
	return c
}

// Credential is a secret that lets an agent act for a cluster: a one-time
// join token, or the long-lived credential a join token is exchanged for.
// Only its hash is stored.
type Credential struct {
	Hash       string // hex SHA-256 of the secret
	Cluster    string // FQN of the cluster
	Kind       string // "join" or "agent"
	Expires    time.Time
	Used       bool
	CreateTime time.Time
}

// StatusWrite is one status write of PutStatus.
type StatusWrite struct {
	FQN   string
	Epoch int64 // the writer's session, from ClaimStatus
	// Status is the new body; nil renews the stored one: only its time
	// (Record.StatusTime) moves, which says its writer is alive.
	Status json.RawMessage
}

// StatusChange is a status row as the status feed (Store.Statuses) hands
// it back.
type StatusChange struct {
	FQN   string
	Epoch int64     // the latest claim (ClaimStatus)
	Time  time.Time // when the status was last written or renewed
	// Status is the body, when it was written since the mark read from;
	// nil when only the claim or the time moved.
	Status json.RawMessage
}

// RuntimeWrite is one write of PutRuntime.
type RuntimeWrite struct {
	FQN     string
	Epoch   int64 // the writer's session, from ClaimStatus
	Runtime []byte
}

// Runtime is a record's stored runtime snapshot.
type Runtime struct {
	FQN string
	// Epoch is the status session that wrote it; Gen grows with every
	// write of the record's snapshot.
	Epoch, Gen int64
	Runtime    []byte
	Time       time.Time
}

// Reader reads records. Records returned are the caller's to keep.
type Reader interface {
	Get(ctx context.Context, fqn string) (Record, error)
	// List returns matching records ordered by FQN.
	List(ctx context.Context, q Query) ([]Record, error)
}

// Tx is a serialized read-write transaction. It sees its own writes. It must
// not be used after the function it was passed to returns.
type Tx interface {
	Reader
	// Put creates or replaces rec (by FQN). The store sets ETag, Revision and
	// the times, records an event and an audit record, and returns the stored form.
	Put(ctx context.Context, rec Record) (Record, error)
	// Delete removes the record, with an event and an audit record, and
	// with it its status and the credentials issued for it.
	Delete(ctx context.Context, fqn string) (Record, error)
	// PutCredential creates or replaces a credential (by hash). It takes no
	// revision: credentials are not intent.
	PutCredential(ctx context.Context, c Credential) error
	// GetCredential reads a credential by hash.
	GetCredential(ctx context.Context, hash string) (Credential, error)
	// DeleteCredentials removes a cluster's credentials of one kind.
	DeleteCredentials(ctx context.Context, cluster, kind string) error
	// DeleteExpiredCredentials removes a cluster's credentials of one kind
	// that expired before now.
	DeleteExpiredCredentials(ctx context.Context, cluster, kind string, now time.Time) error
	// CountCredentials counts a cluster's credentials of one kind.
	CountCredentials(ctx context.Context, cluster, kind string) (int, error)
	// Revision is the store's revision as this transaction sees it: that of
	// its own last write, or the one it started from.
	Revision() int64
	// KindsChanged lists the kinds of the records written after revision
	// after, as this transaction sees them; ErrCompacted when events after
	// it were discarded. Caches of a few kinds use it to tell whether they
	// are still current.
	KindsChanged(ctx context.Context, after int64) ([]string, error)
}

// Store is the durable store. Its methods are safe for concurrent use.
type Store interface {
	Reader
	// Update runs fn in a transaction that no other writer overlaps. When fn
	// returns nil, every write made through tx commits atomically, durably,
	// with its events and audit records, attributed to actor. When fn returns
	// an error, nothing is written and that error is returned.
	Update(ctx context.Context, actor string, fn func(tx Tx) error) error
	// Revision is the newest committed revision.
	Revision(ctx context.Context) (int64, error)
	// Events returns up to limit events with revision > after, in revision
	// order. It fails with ErrCompacted when events after `after` were
	// discarded by Compact.
	Events(ctx context.Context, after int64, limit int) ([]Event, error)
	// Changed is closed on the next commit after it was called; callers
	// re-call it to wait again. It lets watchers sleep between commits.
	Changed() <-chan struct{}
	// ClaimStatus opens a new status session for the record fqn and returns
	// its epoch, higher than every earlier one. From then on, status writes
	// of older sessions are refused, so a writer that lost the record (an
	// agent that moved to another server replica) cannot overwrite the new
	// writer's status. ErrNotFound when the record does not exist.
	ClaimStatus(ctx context.Context, fqn string) (int64, error)
	// PutStatus writes statuses in one transaction, outside the event log
	// and the audit: status is runtime state, not intent, so it takes no
	// revision and watchers of intent never see it. A write whose epoch is
	// older than the record's latest claim is skipped and its FQN returned
	// in fenced; a write for a record that no longer exists is skipped.
	PutStatus(ctx context.Context, writes []StatusWrite) (fenced []string, err error)
	// Statuses is a change feed of status: it returns the rows claimed,
	// written or renewed since the call that returned since as its mark
	// (every row when since is 0 or less), ordered by FQN, and the mark to
	// pass next. It reads only those rows; the feed may hand a row back
	// again, and the mark may move when nothing was written.
	Statuses(ctx context.Context, since int64) (out []StatusChange, mark int64, err error)
	// PutRuntime writes runtime snapshots (what a cluster runs, as its
	// agent reports it) in one transaction, fenced by the status session as
	// PutStatus is, and outside the event log: one row per record,
	// overwritten, deleted with the record. Other processes on the same
	// database are woken (Changed), so that they read it soon.
	PutRuntime(ctx context.Context, writes []RuntimeWrite) (fenced []string, err error)
	// Runtimes is a change feed of the stored snapshots: it returns those
	// written since the call that returned since as its mark (every one
	// when since is 0 or less) whose Gen differs from have's (an FQN missing
	// from have: every one), ordered by FQN, and the mark to pass next. It
	// reads only those rows, so a caller may ask on every wake-up; the mark
	// may move when nothing was written.
	Runtimes(ctx context.Context, since int64, have map[string]int64) (out []Runtime, mark int64, err error)
	// Compact discards events at or below rev; audit records are kept.
	Compact(ctx context.Context, rev int64) error
	// Audit lists audit records, oldest first (see AuditQuery).
	Audit(ctx context.Context, q AuditQuery) ([]AuditRecord, error)
	// AuditTop returns the cursor just above the newest change and the
	// newest refusal: as Before, it bounds a reader to what existed when it
	// began, so that records written meanwhile neither shift its pages nor
	// keep an export from ending.
	AuditTop(ctx context.Context) (AuditCursor, error)
	// Refuse records a refused request in the audit (Refused and Revision
	// are ignored). It writes nothing else.
	Refuse(ctx context.Context, r AuditRecord) error
	// RecordOperation records in the audit an operation carried out on
	// state the store does not hold, such as the signing keys (Refused and
	// Revision are ignored; Reason says what was done). It writes nothing
	// else.
	RecordOperation(ctx context.Context, r AuditRecord) error
	// KindsChanged is Tx.KindsChanged outside a transaction.
	KindsChanged(ctx context.Context, after int64) ([]string, error)
	// Credential reads a credential by hash, outside any transaction.
	Credential(ctx context.Context, hash string) (Credential, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	Close() error
}
