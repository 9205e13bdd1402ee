// Package storetest is the contract every store.Store implementation must
// meet. Each implementation's tests call Run with a way to open a fresh
// database, and to open it again as a restarted server would.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"flotilla.io/flotilla/internal/store"
)

// Opener opens the same database every time it is called. Each test gets a
// new, empty database from the factory passed to Run.
type Opener func(t *testing.T) store.Store

// Run runs the contract suite. fresh returns an Opener for a new database.
func Run(t *testing.T, fresh func(t *testing.T) Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"a put record reads back with store-assigned etag revision and times", testPutGet},
		{"every mutation takes the next revision and one event, in order", testRevisions},
		{"a failed update writes nothing: no record, no event, no audit", testRollback},
		{"a transaction sees its own writes", testReadOwnWrites},
		{"list filters by kind, parent, ancestor and name without prefix confusion", testList},
		{"every write has an audit record with a field-level diff", testAudit},
		{"audit filters by since, kind and fqn subtree", testAuditFilters},
		{"delete records an event with the last state and an audit record", testDelete},
		{"status writes take no revision, event or audit, and spec writes keep them", testPutStatus},
		{"a status write of an older session is fenced by a newer claim", testStatusFencing},
		{"status goes with its record", testStatusDeleted},
		{"first status writes racing without a session all commit, one body each", testStatusFirstWritesRace},
		{"status and runtime batches of many rows, given in opposite orders at once, all commit", testStatusBatchesInAnyOrder},
		{"more transactions at once than the pool has connections, each preparing a statement, all commit", testTransactionsOutnumberThePool},
		{"runtime snapshots are fenced, counted, read when changed, survive reopening and go with their record", testRuntime},
		{"the runtime feed hands back only the snapshots written since the mark", testRuntimeFeed},
		{"the status feed hands back only the rows claimed, written or renewed since the mark", testStatusFeed},
		{"deleting a record revokes the credentials issued for it, in the same transaction", testDeleteRevokes},
		{"events never skip revisions while compaction runs", testEventsUnderCompaction},
		{"events after a compacted revision are refused", testCompact},
		{"changed fires on commit", testChanged},
		{"acknowledged writes survive closing and reopening", testReopen},
		{"concurrent updates get unique gap-free revisions", testConcurrent},
		{"an unchanged update with no writes does not take a revision", testNoopUpdate},
		{"credentials are stored by hash, updated, deleted and survive reopening", testCredentials},
		{"refused requests are audited apart, without a revision, and merge in time order", testRefused},
		{"audit pages read down from the top reach every change and refusal once, unshifted by later writes", testAuditPagesDown},
		{"audit read forward after a cursor and below a top is the whole audit, oldest first", testAuditPagesUp},
		{"audit keeps only records meeting one of the any-of terms", testAuditAnyOf},
		{"concurrent refusals take the numbers 1..n without gaps or repeats", testRefusalNumbers},
		{"operations outside the store are audited beside refusals and paged with them", testAuditOperations},
		{"kinds changed since a revision, in and out of a transaction", testKindsChanged},
		{"list pages by FQN with after and limit", testListPages},
		{"expired credentials are removed and counted per cluster and kind", testExpiredCredentials},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, fresh(t))
		})
	}
}

func rec(kind, fqn, parent, name string, spec string) store.Record {
	return store.Record{Kind: kind, FQN: fqn, Name: name, Parent: parent, Labels: map[string]string{"env": "prod"}, Spec: json.RawMessage(spec)}
}

var (
	org    = rec("Organization", "organizations/acme", "", "acme", `{}`)
	org2   = rec("Organization", "organizations/acme2", "", "acme2", `{}`)
	tenant = rec("Tenant", "organizations/acme/tenants/fin", "organizations/acme", "fin", `{"displayName":"Fin"}`)
	ws     = rec("Workspace", "organizations/acme/tenants/fin/workspaces/pay", "organizations/acme/tenants/fin", "pay", `{"namespaceSelector":{"names":["*/pay"]}}`)
)

func put(t *testing.T, st store.Store, actor string, recs ...store.Record) []store.Record {
	t.Helper()
	var out []store.Record
	err := st.Update(context.Background(), actor, func(tx store.Tx) error {
		for _, r := range recs {
			got, err := tx.Put(context.Background(), r)
			if err != nil {
				return err
			}
			out = append(out, got)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	return out
}

func testPutGet(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	before := time.Now().Add(-time.Second)
	stored := put(t, st, "alice", org)[0]
	if stored.ETag == "" || stored.Revision != 1 || stored.CreateTime.Before(before) || !stored.CreateTime.Equal(stored.UpdateTime) {
		t.Fatalf("store did not assign etag, revision and times: %+v", stored)
	}
	got, err := st.Get(ctx, org.FQN)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored, got); diff != "" {
		t.Fatalf("read back differs (-put +get):\n%s", diff)
	}
	again := put(t, st, "alice", org)[0]
	if again.ETag == stored.ETag || !again.CreateTime.Equal(stored.CreateTime) || again.Revision != 2 {
		t.Fatalf("second put should keep create time and change etag and revision: first %+v, second %+v", stored, again)
	}
	if _, err := st.Get(ctx, "organizations/none"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get of a missing record: got %v, want ErrNotFound", err)
	}
}

func testRevisions(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, tenant)
	put(t, st, "a", ws)
	if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Delete(ctx, ws.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	rev, err := st.Revision(ctx)
	if err != nil || rev != 4 {
		t.Fatalf("revision = %d, %v; want 4", rev, err)
	}
	evs, err := st.Events(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%d %d %s", e.Revision, e.Type, e.Record.FQN))
	}
	want := []string{
		"1 1 " + org.FQN, "2 1 " + tenant.FQN, "3 1 " + ws.FQN, "4 2 " + ws.FQN,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	tail, err := st.Events(ctx, 2, 1)
	if err != nil || len(tail) != 1 || tail[0].Revision != 3 {
		t.Fatalf("Events(after=2, limit=1) = %+v, %v; want revision 3 only", tail, err)
	}
}

func testRollback(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	boom := errors.New("boom")
	err := st.Update(ctx, "a", func(tx store.Tx) error {
		if _, err := tx.Put(ctx, tenant); err != nil {
			return err
		}
		if _, err := tx.Delete(ctx, org.FQN); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("update returned %v; want the function's error", err)
	}
	if _, err := st.Get(ctx, tenant.FQN); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("rolled-back put is visible: %v", err)
	}
	if _, err := st.Get(ctx, org.FQN); err != nil {
		t.Fatalf("rolled-back delete took effect: %v", err)
	}
	if rev, _ := st.Revision(ctx); rev != 1 {
		t.Fatalf("revision moved to %d after a rollback", rev)
	}
	evs, _ := st.Events(ctx, 0, 100)
	audit, _ := st.Audit(ctx, store.AuditQuery{})
	if len(evs) != 1 || len(audit) != 1 {
		t.Fatalf("rollback left %d events and %d audit records; want 1 and 1", len(evs), len(audit))
	}
}

func testReadOwnWrites(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	err := st.Update(ctx, "a", func(tx store.Tx) error {
		if _, err := tx.Put(ctx, org); err != nil {
			return err
		}
		if _, err := tx.Get(ctx, org.FQN); err != nil {
			return fmt.Errorf("get own write: %w", err)
		}
		l, err := tx.List(ctx, store.Query{Kind: "Organization"})
		if err != nil || len(l) != 1 {
			return fmt.Errorf("list own write: %d, %v", len(l), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func fqns(recs []store.Record) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, r.FQN)
	}
	return out
}

func testList(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	t2 := rec("Tenant", "organizations/acme2/tenants/fin", "organizations/acme2", "fin", `{}`)
	put(t, st, "a", org, org2, tenant, ws, t2)
	cases := []struct {
		q    store.Query
		want []string
	}{
		{store.Query{Kind: "Tenant"}, []string{tenant.FQN, t2.FQN}},
		{store.Query{Ancestor: org.FQN}, []string{tenant.FQN, ws.FQN}},
		{store.Query{Parent: org.FQN}, []string{tenant.FQN}},
		{store.Query{Kind: "Tenant", Name: "fin"}, []string{tenant.FQN, t2.FQN}},
		{store.Query{Kind: "Tenant", Ancestor: org2.FQN}, []string{t2.FQN}},
		{store.Query{}, []string{org.FQN, tenant.FQN, ws.FQN, org2.FQN, t2.FQN}},
	}
	for _, c := range cases {
		got, err := st.List(ctx, c.q)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c.want, fqns(got)); diff != "" {
			t.Errorf("List(%+v) (-want +got):\n%s", c.q, diff)
		}
	}
}

func testAudit(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "alice", tenant)
	changed := tenant
	changed.Spec = json.RawMessage(`{"displayName":"Finance","description":"money"}`)
	changed.Labels = map[string]string{"env": "dev"}
	put(t, st, "bob", changed)
	recs, err := st.Audit(ctx, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d audit records, want 2", len(recs))
	}
	if recs[0].Actor != "alice" || recs[0].Operation != "create" || recs[1].Actor != "bob" || recs[1].Operation != "update" {
		t.Fatalf("actors/operations wrong: %+v", recs)
	}
	want := []store.Change{
		{Path: "metadata.labels.env", Old: json.RawMessage(`"prod"`), New: json.RawMessage(`"dev"`)},
		{Path: "spec.description", New: json.RawMessage(`"money"`)},
		{Path: "spec.displayName", Old: json.RawMessage(`"Fin"`), New: json.RawMessage(`"Finance"`)},
	}
	if diff := cmp.Diff(want, recs[1].Changes); diff != "" {
		t.Fatalf("update diff (-want +got):\n%s", diff)
	}
	if recs[1].Kind != "Tenant" || recs[1].FQN != tenant.FQN || recs[1].Time.IsZero() {
		t.Fatalf("audit record lacks kind, fqn or time: %+v", recs[1])
	}
}

func testAuditFilters(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2, tenant)
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	put(t, st, "a", ws)
	check := func(q store.AuditQuery, want ...string) {
		t.Helper()
		recs, err := st.Audit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, r.FQN)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Audit(%+v) (-want +got):\n%s", q, diff)
		}
	}
	check(store.AuditQuery{Kind: "Organization"}, org.FQN, org2.FQN)
	check(store.AuditQuery{FQN: org.FQN}, org.FQN, tenant.FQN, ws.FQN)
	check(store.AuditQuery{Since: mid}, ws.FQN)
	check(store.AuditQuery{Limit: 2}, tenant.FQN, ws.FQN)
}

func testDelete(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	stored := put(t, st, "a", org)[0]
	if err := st.Update(ctx, "carol", func(tx store.Tx) error { _, err := tx.Delete(ctx, org.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, org.FQN); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted record still readable: %v", err)
	}
	evs, _ := st.Events(ctx, 1, 10)
	if len(evs) != 1 || evs[0].Type != store.EventDelete || evs[0].Record.ETag != stored.ETag {
		t.Fatalf("delete event should carry the last state: %+v", evs)
	}
	recs, _ := st.Audit(ctx, store.AuditQuery{})
	if len(recs) != 2 || recs[1].Operation != "delete" || recs[1].Actor != "carol" {
		t.Fatalf("delete not audited: %+v", recs)
	}
	err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Delete(ctx, org.FQN); return err })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleting a missing record: got %v, want ErrNotFound", err)
	}
}

func putStatus(t *testing.T, st store.Store, fqn string, epoch int64, body string) []string {
	t.Helper()
	fenced, err := st.PutStatus(context.Background(), []store.StatusWrite{{FQN: fqn, Epoch: epoch, Status: json.RawMessage(body)}})
	if err != nil {
		t.Fatalf("put status of %s: %v", fqn, err)
	}
	return fenced
}

func testPutStatus(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	stored := put(t, st, "a", org)[0]
	changed := st.Changed()
	epoch, err := st.ClaimStatus(ctx, org.FQN)
	if err != nil || epoch != 1 {
		t.Fatalf("first claim: epoch %d, %v; want 1", epoch, err)
	}
	if fenced := putStatus(t, st, org.FQN, epoch, `{"connected":true}`); len(fenced) != 0 {
		t.Fatalf("write of the latest session fenced: %v", fenced)
	}
	read, _ := st.Get(ctx, org.FQN)
	if string(read.Status) != `{"connected":true}` || read.StatusEpoch != 1 || read.StatusTime.IsZero() || read.ETag != stored.ETag || read.Revision != 1 {
		t.Fatalf("status write wrong: %+v", read)
	}
	if rev, _ := st.Revision(ctx); rev != 1 {
		t.Fatalf("status write took a revision: store at %d, want 1", rev)
	}
	if evs, _ := st.Events(ctx, 0, 10); len(evs) != 1 {
		t.Fatalf("status write is in the event log: %d events, want 1", len(evs))
	}
	if recs, _ := st.Audit(ctx, store.AuditQuery{}); len(recs) != 1 {
		t.Fatalf("status write was audited: %d records", len(recs))
	}
	select {
	case <-changed:
		t.Fatal("a status write woke watchers of intent")
	default:
	}
	listed, _ := st.List(ctx, store.Query{Kind: org.Kind})
	if len(listed) != 1 || string(listed[0].Status) != `{"connected":true}` {
		t.Fatalf("list lacks the status: %+v", listed)
	}
	// A spec write keeps the status, and neither its event nor its audit
	// carries status.
	put(t, st, "a", org)
	read, _ = st.Get(ctx, org.FQN)
	if string(read.Status) != `{"connected":true}` {
		t.Fatalf("spec write dropped the status: %q", read.Status)
	}
	evs, _ := st.Events(ctx, 1, 10)
	if len(evs) != 1 || evs[0].Record.Status != nil {
		t.Fatalf("spec write's event carries status: %+v", evs)
	}
	recs, _ := st.Audit(ctx, store.AuditQuery{})
	if len(recs) != 2 || len(recs[1].Changes) != 0 {
		t.Fatalf("an unchanged spec write has audited changes (status leaked into the diff?): %+v", recs)
	}
	if _, err := st.ClaimStatus(ctx, "organizations/missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim of a missing record: %v, want ErrNotFound", err)
	}
}

func testStatusFencing(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	// A record never claimed takes writes of epoch 0 (a writer with no
	// session, e.g. a restarted server marking a cluster disconnected).
	putStatus(t, st, org.FQN, 0, `{"who":"nobody"}`)
	old, err := st.ClaimStatus(ctx, org.FQN)
	if err != nil {
		t.Fatal(err)
	}
	putStatus(t, st, org.FQN, old, `{"who":"old"}`)
	newer, err := st.ClaimStatus(ctx, org.FQN)
	if err != nil || newer <= old {
		t.Fatalf("second claim: epoch %d (first %d), %v", newer, old, err)
	}
	for _, epoch := range []int64{old, 0} {
		if fenced := putStatus(t, st, org.FQN, epoch, `{"who":"stale"}`); len(fenced) != 1 || fenced[0] != org.FQN {
			t.Fatalf("write of epoch %d after a claim of %d: fenced %v, want [%s]", epoch, newer, fenced, org.FQN)
		}
	}
	if read, _ := st.Get(ctx, org.FQN); string(read.Status) != `{"who":"old"}` {
		t.Fatalf("a fenced write changed the status: %s", read.Status)
	}
	// One batch: the fenced write is skipped, the others commit.
	put(t, st, "a", org2)
	e2, _ := st.ClaimStatus(ctx, org2.FQN)
	fenced, err := st.PutStatus(ctx, []store.StatusWrite{
		{FQN: org.FQN, Epoch: old, Status: json.RawMessage(`{"who":"stale"}`)},
		{FQN: org2.FQN, Epoch: e2, Status: json.RawMessage(`{"who":"new"}`)},
	})
	if err != nil || len(fenced) != 1 {
		t.Fatalf("batch: fenced %v, %v", fenced, err)
	}
	if read, _ := st.Get(ctx, org2.FQN); string(read.Status) != `{"who":"new"}` {
		t.Fatalf("the unfenced write of a batch was lost: %s", read.Status)
	}
	// A renewal (no body) moves the time and keeps the body; it is fenced
	// like a write.
	before, _ := st.Get(ctx, org2.FQN)
	time.Sleep(time.Millisecond)
	if fenced, err := st.PutStatus(ctx, []store.StatusWrite{{FQN: org2.FQN, Epoch: e2}, {FQN: org.FQN, Epoch: old}}); err != nil || len(fenced) != 1 || fenced[0] != org.FQN {
		t.Fatalf("renewals: fenced %v, %v", fenced, err)
	}
	if after, _ := st.Get(ctx, org2.FQN); string(after.Status) != `{"who":"new"}` || !after.StatusTime.After(before.StatusTime) {
		t.Fatalf("a renewal: body %s (want it kept), time %v (was %v)", after.Status, after.StatusTime, before.StatusTime)
	}
	if read, _ := st.Get(ctx, org.FQN); string(read.Status) != `{"who":"old"}` {
		t.Fatalf("a fenced renewal changed the status: %s", read.Status)
	}
	// Claims survive a restart.
	st.Close()
	st = open(t)
	if e, err := st.ClaimStatus(ctx, org.FQN); err != nil || e != newer+1 {
		t.Fatalf("claim after reopening: %d, %v; want %d", e, err, newer+1)
	}
}

// Replicas that serve none of a new record's sessions may both write its
// first status (epoch 0) at once: neither write fails, and the record has
// one of their bodies.
func testStatusFirstWritesRace(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	var recs []store.Record
	for i := range 40 {
		recs = append(recs, rec("Organization", fmt.Sprintf("organizations/race%02d", i), "", fmt.Sprintf("race%02d", i), `{}`))
	}
	put(t, st, "a", recs...)
	const writers = 4
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			var batch []store.StatusWrite
			for i := range recs {
				r := recs[(i*(w+1))%len(recs)] // each writer in its own order
				batch = append(batch, store.StatusWrite{FQN: r.FQN, Status: json.RawMessage(fmt.Sprintf(`{"writer":%d}`, w))})
			}
			_, err := st.PutStatus(ctx, batch)
			errs <- err
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatalf("a first status write failed under a race: %v", err)
		}
	}
	for _, r := range recs {
		if read, _ := st.Get(ctx, r.FQN); !strings.HasPrefix(string(read.Status), `{"writer":`) {
			t.Fatalf("%s has status %q, want one writer's", r.FQN, read.Status)
		}
	}
}

// A fresh store's first status writes, more at once than its pool has
// connections: each transaction's statements are new, and preparing them
// must not wait for a connection that another open transaction holds.
func testTransactionsOutnumberThePool(t *testing.T, open Opener) {
	st := open(t)
	var recs []store.Record
	for i := range 48 {
		recs = append(recs, rec("Organization", fmt.Sprintf("organizations/pool%02d", i), "", fmt.Sprintf("pool%02d", i), `{}`))
	}
	put(t, st, "a", recs...)
	st.Close()
	st = open(t) // no statement prepared yet
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, len(recs))
	for _, r := range recs {
		go func() {
			_, err := st.PutStatus(ctx, []store.StatusWrite{{FQN: r.FQN, Status: json.RawMessage(`{"ok":true}`)}})
			errs <- err
		}()
	}
	for range recs {
		if err := <-errs; err != nil {
			t.Fatalf("a status write failed (the pool starved?): %v", err)
		}
	}
}

// Two replicas write status and runtime snapshots of the same clusters in
// batches at once, each batch in its own order: no write fails (on
// PostgreSQL, rows locked in two orders deadlocked).
func testStatusBatchesInAnyOrder(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	var recs []store.Record
	for i := range 30 {
		recs = append(recs, rec("Organization", fmt.Sprintf("organizations/batch%02d", i), "", fmt.Sprintf("batch%02d", i), `{}`))
	}
	put(t, st, "a", recs...)
	epochs := map[string]int64{}
	for _, r := range recs {
		e, err := st.ClaimStatus(ctx, r.FQN)
		if err != nil {
			t.Fatal(err)
		}
		epochs[r.FQN] = e
	}
	errs := make(chan error, 2)
	go func() {
		for range 20 {
			var batch []store.StatusWrite
			for _, r := range recs {
				batch = append(batch, store.StatusWrite{FQN: r.FQN, Epoch: epochs[r.FQN], Status: json.RawMessage(`{"ok":true}`)})
			}
			if _, err := st.PutStatus(ctx, batch); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for range 20 {
			var batch []store.RuntimeWrite
			for i := len(recs) - 1; i >= 0; i-- {
				batch = append(batch, store.RuntimeWrite{FQN: recs[i].FQN, Epoch: epochs[recs[i].FQN], Runtime: []byte("snapshot")})
			}
			if _, err := st.PutRuntime(ctx, batch); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("a batch failed: %v", err)
		}
	}
}

func testStatusDeleted(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	e, _ := st.ClaimStatus(ctx, org.FQN)
	putStatus(t, st, org.FQN, e, `{"connected":true}`)
	if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Delete(ctx, org.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	// A late write for the deleted record is dropped, not an error.
	if fenced := putStatus(t, st, org.FQN, e, `{"connected":true}`); len(fenced) != 0 {
		t.Fatalf("late write fenced: %v", fenced)
	}
	put(t, st, "a", org)
	if read, _ := st.Get(ctx, org.FQN); read.Status != nil {
		t.Fatalf("a re-created record inherited the old status: %s", read.Status)
	}
}

func putRuntime(t *testing.T, st store.Store, fqn string, epoch int64, data string) []string {
	t.Helper()
	fenced, err := st.PutRuntime(context.Background(), []store.RuntimeWrite{{FQN: fqn, Epoch: epoch, Runtime: []byte(data)}})
	if err != nil {
		t.Fatalf("put runtime of %s: %v", fqn, err)
	}
	return fenced
}

func testRuntime(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	runtimes := func(since int64, have map[string]int64) ([]store.Runtime, int64) {
		t.Helper()
		out, mark, err := st.Runtimes(ctx, since, have)
		if err != nil {
			t.Fatalf("runtimes: %v", err)
		}
		return out, mark
	}
	none, m0 := runtimes(-1, nil)
	if len(none) != 0 {
		t.Fatalf("snapshots before any write: %+v", none)
	}
	epoch, _ := st.ClaimStatus(ctx, org.FQN)
	putStatus(t, st, org.FQN, epoch, `{"connected":true}`)
	changed := st.Changed()
	data := "snap\x00shot\xff" // binary, with a NUL
	if fenced := putRuntime(t, st, org.FQN, epoch, data); len(fenced) != 0 {
		t.Fatalf("write of the latest session fenced: %v", fenced)
	}
	got, m1 := runtimes(m0, nil)
	if len(got) != 1 || got[0].FQN != org.FQN || string(got[0].Runtime) != data || got[0].Gen != 1 || got[0].Epoch != epoch || got[0].Time.IsZero() || m1 == m0 {
		t.Fatalf("after one write: %+v, mark %d (was %d)", got, m1, m0)
	}
	if again, _ := runtimes(m1, nil); len(again) != 0 {
		t.Fatalf("nothing written since the mark, yet: %+v", again)
	}
	if again, _ := runtimes(-1, map[string]int64{org.FQN: 1}); len(again) != 0 {
		t.Fatalf("a snapshot the caller has was read again: %+v", again)
	}
	// Runtime is not intent: no revision, event, audit or wake-up of this
	// process's watchers; the status stays.
	if rev, _ := st.Revision(ctx); rev != 1 {
		t.Fatalf("a runtime write took a revision: store at %d, want 1", rev)
	}
	if evs, _ := st.Events(ctx, 0, 10); len(evs) != 1 {
		t.Fatalf("a runtime write is in the event log: %d events", len(evs))
	}
	if recs, _ := st.Audit(ctx, store.AuditQuery{}); len(recs) != 1 {
		t.Fatalf("a runtime write was audited: %d records", len(recs))
	}
	select {
	case <-changed:
		t.Fatal("a runtime write woke this process's watchers of intent")
	default:
	}
	if read, _ := st.Get(ctx, org.FQN); string(read.Status) != `{"connected":true}` {
		t.Fatalf("a runtime write changed the status: %s", read.Status)
	}
	// A newer session fences the older one's writes.
	newer, _ := st.ClaimStatus(ctx, org.FQN)
	if fenced := putRuntime(t, st, org.FQN, epoch, "stale"); len(fenced) != 1 || fenced[0] != org.FQN {
		t.Fatalf("write of epoch %d after a claim of %d: fenced %v", epoch, newer, fenced)
	}
	if got, _ := runtimes(m1, nil); len(got) != 0 {
		t.Fatalf("a fenced write counted: %+v", got)
	}
	putRuntime(t, st, org.FQN, newer, "second")
	// Survives reopening.
	st.Close()
	st = open(t)
	got, _ = runtimes(m1, map[string]int64{org.FQN: 1})
	if len(got) != 1 || string(got[0].Runtime) != "second" || got[0].Gen != 2 || got[0].Epoch != newer {
		t.Fatalf("after reopening: %+v", got)
	}
	// Deleted with its record; a late write is dropped.
	if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Delete(ctx, org.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	if fenced := putRuntime(t, st, org.FQN, newer, "late"); len(fenced) != 0 {
		t.Fatalf("late write fenced: %v", fenced)
	}
	if got, _ := runtimes(-1, nil); len(got) != 0 {
		t.Fatalf("snapshots of a deleted record: %+v", got)
	}
}

func testRuntimeFeed(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2)
	epochs := map[string]int64{}
	for _, fqn := range []string{org.FQN, org2.FQN} {
		epochs[fqn], _ = st.ClaimStatus(ctx, fqn)
		putRuntime(t, st, fqn, epochs[fqn], "first "+fqn)
	}
	read := func(since int64) (map[string]string, int64) {
		t.Helper()
		out, mark, err := st.Runtimes(ctx, since, nil) // no have: what comes back is what the feed holds
		if err != nil {
			t.Fatalf("runtimes: %v", err)
		}
		got := map[string]string{}
		for _, r := range out {
			got[r.FQN] = string(r.Runtime)
		}
		return got, mark
	}
	all, mark := read(0)
	if len(all) != 2 {
		t.Fatalf("the whole feed: %v", all)
	}
	for i := range 3 {
		data := fmt.Sprintf("write %d", i)
		putRuntime(t, st, org2.FQN, epochs[org2.FQN], data)
		var got map[string]string
		got, mark = read(mark)
		if len(got) != 1 || got[org2.FQN] != data {
			t.Fatalf("after writing %s alone, the feed since the last mark holds %v", org2.FQN, got)
		}
	}
	// The mark outlives the process.
	st.Close()
	st = open(t)
	putRuntime(t, st, org.FQN, epochs[org.FQN], "after reopening")
	if got, _ := read(mark); len(got) != 1 || got[org.FQN] != "after reopening" {
		t.Fatalf("after reopening: %v", got)
	}
}

func testStatusFeed(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2)
	epochs := map[string]int64{}
	for _, fqn := range []string{org.FQN, org2.FQN} {
		epochs[fqn], _ = st.ClaimStatus(ctx, fqn)
		putStatus(t, st, fqn, epochs[fqn], `{"n":0}`)
	}
	read := func(since int64) (map[string]store.StatusChange, int64) {
		t.Helper()
		out, mark, err := st.Statuses(ctx, since)
		if err != nil {
			t.Fatalf("statuses: %v", err)
		}
		got := map[string]store.StatusChange{}
		for _, c := range out {
			got[c.FQN] = c
		}
		return got, mark
	}
	all, mark := read(0)
	if len(all) != 2 || string(all[org.FQN].Status) != `{"n":0}` || all[org2.FQN].Epoch != epochs[org2.FQN] || all[org2.FQN].Time.IsZero() {
		t.Fatalf("the whole feed: %+v", all)
	}
	if got, _ := read(mark); len(got) != 0 {
		t.Fatalf("nothing written since the mark, yet: %+v", got)
	}
	// A renewal: the row, without its body.
	renewed := all[org2.FQN].Time
	if _, err := st.PutStatus(ctx, []store.StatusWrite{{FQN: org2.FQN, Epoch: epochs[org2.FQN]}}); err != nil {
		t.Fatal(err)
	}
	got, mark := read(mark)
	if c, ok := got[org2.FQN]; len(got) != 1 || !ok || c.Status != nil || c.Time.Before(renewed) {
		t.Fatalf("after a renewal of %s: %+v", org2.FQN, got)
	}
	// A body: the row with it.
	putStatus(t, st, org.FQN, epochs[org.FQN], `{"n":1}`)
	got, mark = read(mark)
	if len(got) != 1 || string(got[org.FQN].Status) != `{"n":1}` {
		t.Fatalf("after a status write of %s: %+v", org.FQN, got)
	}
	// A claim: the new epoch, without the body. The mark outlives the process.
	st.Close()
	st = open(t)
	newer, _ := st.ClaimStatus(ctx, org2.FQN)
	got, _ = read(mark)
	if c := got[org2.FQN]; len(got) != 1 || c.Epoch != newer || c.Status != nil {
		t.Fatalf("after a claim of %s: %+v", org2.FQN, got)
	}
}

func testDeleteRevokes(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2)
	err := st.Update(ctx, "a", func(tx store.Tx) error {
		for _, c := range []store.Credential{
			{Hash: "h1", Cluster: org.FQN, Kind: "agent", Expires: time.Now().Add(time.Hour)},
			{Hash: "h2", Cluster: org.FQN, Kind: "join", Expires: time.Now().Add(time.Hour)},
			{Hash: "h3", Cluster: org2.FQN, Kind: "agent", Expires: time.Now().Add(time.Hour)},
		} {
			if err := tx.PutCredential(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Delete(ctx, org.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		if _, err := st.Credential(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("credential %s of the deleted record still works: %v", h, err)
		}
	}
	if _, err := st.Credential(ctx, "h3"); err != nil {
		t.Errorf("another record's credential was revoked: %v", err)
	}
}

func testEventsUnderCompaction(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	const n = 300
	for i := range n {
		put(t, st, "a", rec("Organization", fmt.Sprintf("organizations/o%03d", i), "", fmt.Sprintf("o%03d", i), `{}`))
	}
	var finished atomic.Bool
	done := make(chan error, 1)
	go func() {
		defer finished.Store(true)
		for rev := int64(1); rev < n; rev += 3 {
			if err := st.Compact(ctx, rev); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// A reader stays at the compaction's edge: every answer is either
	// ErrCompacted or starts right after the asked revision.
	for after, reads := int64(0), 0; !finished.Load() && reads < 100_000; reads++ {
		evs, err := st.Events(ctx, after, 5)
		if errors.Is(err, store.ErrCompacted) {
			after++
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		if len(evs) > 0 && evs[0].Revision != after+1 {
			t.Fatalf("Events(after=%d) began at %d: a gap passed off as history", after, evs[0].Revision)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func testCompact(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2, tenant)
	if err := st.Compact(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Events(ctx, 1, 10); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("Events after a compacted revision: got %v, want ErrCompacted", err)
	}
	evs, err := st.Events(ctx, 2, 10)
	if err != nil || len(evs) != 1 || evs[0].Revision != 3 {
		t.Fatalf("Events(after=2) = %+v, %v; want revision 3", evs, err)
	}
	if recs, _ := st.Audit(ctx, store.AuditQuery{}); len(recs) != 3 {
		t.Fatalf("compaction removed audit records: %d left", len(recs))
	}
}

func testChanged(t *testing.T, open Opener) {
	st := open(t)
	ch := st.Changed()
	select {
	case <-ch:
		t.Fatal("changed fired before any commit")
	default:
	}
	put(t, st, "a", org)
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("changed did not fire after a commit")
	}
}

func testReopen(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	stored := put(t, st, "a", org, tenant)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2 := open(t)
	for _, want := range stored {
		got, err := st2.Get(ctx, want.FQN)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("after reopen (-before +after):\n%s", diff)
		}
	}
	if rev, _ := st2.Revision(ctx); rev != 2 {
		t.Fatalf("revision after reopen = %d, want 2", rev)
	}
	next := put(t, st2, "a", ws)[0]
	if next.Revision != 3 {
		t.Fatalf("first write after reopen took revision %d, want 3", next.Revision)
	}
}

func testConcurrent(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r := rec("Organization", fmt.Sprintf("organizations/o%d-%d", w, i), "", fmt.Sprintf("o%d-%d", w, i), `{}`)
				if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Put(ctx, r); return err }); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	evs, err := st.Events(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != writers*each {
		t.Fatalf("%d events, want %d", len(evs), writers*each)
	}
	for i, e := range evs {
		if e.Revision != int64(i+1) {
			t.Fatalf("event %d has revision %d: revisions must be gap-free", i, e.Revision)
		}
	}
}

func testNoopUpdate(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	if err := st.Update(ctx, "a", func(tx store.Tx) error { _, err := tx.Get(ctx, org.FQN); return err }); err != nil {
		t.Fatal(err)
	}
	if rev, _ := st.Revision(ctx); rev != 1 {
		t.Fatalf("a read-only update moved the revision to %d", rev)
	}
}

func testCredentials(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	c := store.Credential{Hash: "h1", Cluster: "organizations/acme/clusters/c1", Kind: "join", Expires: exp}
	if err := st.Update(ctx, "a", func(tx store.Tx) error { return tx.PutCredential(ctx, c) }); err != nil {
		t.Fatal(err)
	}
	got, err := st.Credential(ctx, "h1")
	if err != nil || got.Cluster != c.Cluster || got.Kind != "join" || !got.Expires.Equal(exp) || got.Used || got.CreateTime.IsZero() {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if rev, _ := st.Revision(ctx); rev != 0 {
		t.Fatalf("a credential took revision %d", rev)
	}
	err = st.Update(ctx, "a", func(tx store.Tx) error {
		cur, err := tx.GetCredential(ctx, "h1")
		if err != nil {
			return err
		}
		cur.Used = true
		return tx.PutCredential(ctx, cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = open(t)
	if got, err := st.Credential(ctx, "h1"); err != nil || !got.Used {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if err := st.Update(ctx, "a", func(tx store.Tx) error { return tx.DeleteCredentials(ctx, c.Cluster, "join") }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Credential(ctx, "h1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted credential: %v", err)
	}
}

func testRefused(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, store.Actor("user:a", "oidc"), org)
	if err := st.Refuse(ctx, store.AuditRecord{Actor: store.Actor("user:b", "oidc"), Operation: "Apply", Kind: "Tenant", FQN: tenant.FQN, Reason: "permission denied"}); err != nil {
		t.Fatal(err)
	}
	put(t, st, "system", tenant)
	rev, _ := st.Revision(ctx)
	plain, err := st.Audit(ctx, store.AuditQuery{})
	if err != nil || len(plain) != 2 {
		t.Fatalf("audit without refusals: %v %v", plain, err)
	}
	all, err := st.Audit(ctx, store.AuditQuery{Refused: true})
	if err != nil || len(all) != 3 {
		t.Fatalf("audit with refusals: %v %v", all, err)
	}
	if !all[1].Refused || all[1].Revision != 0 || all[1].Reason != "permission denied" || all[0].Refused || all[2].Refused {
		t.Fatalf("the refusal is not between the two writes, or lacks its reason: %+v", all)
	}
	if sub, method := store.SplitActor(all[1].Actor); sub != "user:b" || method != "oidc" {
		t.Fatalf("actor %q splits into %q %q", all[1].Actor, sub, method)
	}
	if now, _ := st.Revision(ctx); now != rev {
		t.Fatalf("a refusal took a revision: %d → %d", rev, now)
	}
	scoped, err := st.Audit(ctx, store.AuditQuery{Refused: true, FQN: org.FQN + "/tenants", Limit: 1})
	if err != nil || len(scoped) != 1 || scoped[0].FQN != tenant.FQN || scoped[0].Refused {
		t.Fatalf("newest record under the tenants: %+v %v", scoped, err)
	}
}

func testKindsChanged(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	rev, _ := st.Revision(ctx)
	put(t, st, "a", tenant)
	put(t, st, "a", ws)
	got, err := st.KindsChanged(ctx, rev)
	sort.Strings(got)
	if err != nil || strings.Join(got, ",") != "Tenant,Workspace" {
		t.Fatalf("kinds changed after %d: %v %v", rev, got, err)
	}
	err = st.Update(ctx, "a", func(tx store.Tx) error {
		kinds, err := tx.KindsChanged(ctx, tx.Revision())
		if err != nil || len(kinds) != 0 {
			t.Errorf("nothing changed after the transaction's own start: %v %v", kinds, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	now, _ := st.Revision(ctx)
	if err := st.Compact(ctx, now); err != nil {
		t.Fatal(err)
	}
	if _, err := st.KindsChanged(ctx, rev); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("kinds changed across a compaction: %v, want ErrCompacted", err)
	}
}

func testListPages(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org, org2, tenant, ws)
	var got []string
	after := ""
	for range 10 {
		page, err := st.List(ctx, store.Query{After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.FQN)
			after = r.FQN
		}
		if len(page) < 3 {
			break
		}
	}
	if strings.Join(got, " ") != strings.Join([]string{org.FQN, tenant.FQN, ws.FQN, org2.FQN}, " ") {
		t.Fatalf("pages of 3 gave %v", got)
	}
}

func testExpiredCredentials(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	now := time.Now()
	err := st.Update(ctx, "a", func(tx store.Tx) error {
		for i, exp := range []time.Time{now.Add(-time.Hour), now.Add(-time.Minute), now.Add(time.Hour)} {
			if err := tx.PutCredential(ctx, store.Credential{Hash: fmt.Sprint("h", i), Cluster: org.FQN, Kind: "agent", Expires: exp}); err != nil {
				return err
			}
		}
		return tx.PutCredential(ctx, store.Credential{Hash: "other", Cluster: org.FQN, Kind: "join", Expires: now.Add(-time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	count := func(kind string) int {
		var n int
		if err := st.Update(ctx, "a", func(tx store.Tx) error {
			var err error
			n, err = tx.CountCredentials(ctx, org.FQN, kind)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count("agent") != 3 || count("join") != 1 {
		t.Fatalf("counts before: agent %d join %d", count("agent"), count("join"))
	}
	if err := st.Update(ctx, "a", func(tx store.Tx) error { return tx.DeleteExpiredCredentials(ctx, org.FQN, "agent", now) }); err != nil {
		t.Fatal(err)
	}
	if count("agent") != 1 || count("join") != 1 {
		t.Fatalf("counts after removing expired agent credentials: agent %d join %d", count("agent"), count("join"))
	}
	if _, err := st.Credential(ctx, "h2"); err != nil {
		t.Fatalf("the live credential went too: %v", err)
	}
}
