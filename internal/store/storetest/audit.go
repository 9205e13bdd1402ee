package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"flotilla.io/flotilla/internal/store"
)

// auditKey names a record in either log: "r<revision>" or "s<number>".
func auditKey(r store.AuditRecord) string {
	if r.Refusal > 0 {
		return fmt.Sprintf("s%d", r.Refusal)
	}
	return fmt.Sprintf("r%d", r.Revision)
}

func auditKeys(recs []store.AuditRecord) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, auditKey(r))
	}
	return out
}

// fillAudit writes n workspaces, each followed by a refusal about it, and
// every third refusal about no object at all.
func fillAudit(t *testing.T, st store.Store, n int) {
	t.Helper()
	ctx := context.Background()
	put(t, st, "a", org, tenant)
	for i := range n {
		w := rec("Workspace", fmt.Sprintf("%s/workspaces/w%03d", tenant.FQN, i), tenant.FQN, fmt.Sprintf("w%03d", i), `{}`)
		put(t, st, "a", w)
		r := store.AuditRecord{Actor: "user:b", Operation: "Delete", Kind: "Workspace", FQN: w.FQN, Reason: "permission denied"}
		if i%3 == 0 {
			r = store.AuditRecord{Actor: "anonymous@127.0.0.1", Operation: "Apply", Reason: "no credential"}
		}
		if err := st.Refuse(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
}

func testAuditPagesDown(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	fillAudit(t, st, 10) // 12 changes, 10 refusals
	all, err := st.Audit(ctx, store.AuditQuery{Refused: true, Limit: 1000})
	if err != nil || len(all) != 22 {
		t.Fatalf("the whole audit: %d records, %v; want 22", len(all), err)
	}
	want := auditKeys(all)
	slices.Reverse(want) // pages read from the newest down
	top, err := st.AuditTop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if top != (store.AuditCursor{Revision: 13, Refusal: 11}) {
		t.Fatalf("top is %+v; want just above revision 12 and refusal 10", top)
	}
	var got []string
	cur := top
	for page := 0; ; page++ {
		if page > 20 {
			t.Fatal("paging does not end")
		}
		recs, err := st.Audit(ctx, store.AuditQuery{Refused: true, Limit: 4, Before: &cur})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		if page == 1 { // writes between pages do not shift the pages
			fillAudit(t, st, 2)
		}
		for i := len(recs) - 1; i >= 0; i-- { // oldest first, so newest is last
			got = append(got, auditKey(recs[i]))
			cur = cur.Past(recs[i])
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("pages of 4 from the top (-the whole audit, newest first +pages):\n%s", diff)
	}
}

func testAuditPagesUp(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	fillAudit(t, st, 7)
	all, err := st.Audit(ctx, store.AuditQuery{Refused: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	top, err := st.AuditTop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fillAudit(t, st, 1) // after the top: not read
	var (
		got []string
		cur store.AuditCursor
	)
	for page := 0; ; page++ {
		if page > 20 {
			t.Fatal("reading forward does not end")
		}
		recs, err := st.Audit(ctx, store.AuditQuery{Refused: true, Limit: 3, After: &cur, Before: &top})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			got = append(got, auditKey(r))
			cur = cur.Past(r)
		}
	}
	if diff := cmp.Diff(auditKeys(all), got); diff != "" {
		t.Fatalf("reading forward from the start up to the top (-the whole audit +read):\n%s", diff)
	}
	// Without refusals, the same cursor reads the changes alone.
	changes, err := st.Audit(ctx, store.AuditQuery{After: &store.AuditCursor{Revision: 5}, Limit: 2})
	if err != nil || fmt.Sprint(auditKeys(changes)) != "[r6 r7]" {
		t.Fatalf("the two changes after revision 5: %v %v", auditKeys(changes), err)
	}
}

func testAuditAnyOf(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	fillAudit(t, st, 3) // w000..w002; refusals: none-object, w001, w002
	put(t, st, "a", org2, rec("Workspace", tenant.FQN+"/workspaces/w001x", tenant.FQN, "w001x", `{}`))
	check := func(name string, anyOf []store.AuditMatch, want ...string) {
		t.Helper()
		recs, err := st.Audit(ctx, store.AuditQuery{Refused: true, AnyOf: anyOf})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, fmt.Sprintf("%s %s", auditKey(r), r.FQN))
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	w := func(i int) string { return fmt.Sprintf("%s/workspaces/w%03d", tenant.FQN, i) }
	check("a subtree and its root, not a name that shares its prefix",
		[]store.AuditMatch{{Under: w(1)}},
		"r4 "+w(1), "s2 "+w(1))
	check("a kind in a subtree, or refusals about nothing by one actor",
		[]store.AuditMatch{{Under: org.FQN, Kind: "Tenant"}, {Actor: "anonymous@127.0.0.1", NoFQN: true}},
		"r2 "+tenant.FQN, "s1 ")
	check("an organization's subtree leaves the other organization out",
		[]store.AuditMatch{{Under: org2.FQN}},
		"r6 "+org2.FQN)
	check("no terms keep nothing", []store.AuditMatch{})
}

func testRefusalNumbers(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	const writers, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- st.Refuse(ctx, store.AuditRecord{Actor: fmt.Sprintf("user:%d", w), Operation: "Get", Reason: fmt.Sprint(i)})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	recs, err := st.Audit(ctx, store.AuditQuery{Refused: true})
	if err != nil {
		t.Fatal(err)
	}
	var nums []int64
	for _, r := range recs {
		nums = append(nums, r.Refusal)
	}
	slices.Sort(nums)
	for i, n := range nums {
		if n != int64(i+1) {
			t.Fatalf("refusal numbers are not 1..%d without gaps or repeats: %v", writers*each, nums)
		}
	}
	if len(nums) != writers*each {
		t.Fatalf("%d refusals stored; want %d", len(nums), writers*each)
	}
	if top, err := st.AuditTop(ctx); err != nil || top.Refusal != writers*each+1 {
		t.Fatalf("top %+v, %v; want refusal %d", top, err, writers*each+1)
	}
}

// testAuditOperations: operations on state outside the store are in the
// audit whether or not refusals are asked for, numbered with the refusals,
// told apart from them, and paged like them.
func testAuditOperations(t *testing.T, open Opener) {
	st := open(t)
	ctx := context.Background()
	put(t, st, "a", org)
	if err := st.Refuse(ctx, store.AuditRecord{Actor: "user:b", Operation: "RotateSigningKey", Kind: "SigningKey", Reason: "permission denied"}); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordOperation(ctx, store.AuditRecord{Actor: "user:admin via bootstrap", Operation: "RotateSigningKey", Kind: "SigningKey", Reason: "key k2 signs"}); err != nil {
		t.Fatal(err)
	}
	recs, err := st.Audit(ctx, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if got := auditKeys(recs); !slices.Equal(got, []string{"r1", "s2"}) {
		t.Fatalf("audit without refusals = %v, want the change and the operation [r1 s2]", got)
	}
	op := recs[1]
	if !op.Done() || op.Refused || op.Reason != "key k2 signs" || op.Actor != "user:admin via bootstrap" || op.Kind != "SigningKey" {
		t.Errorf("operation read back as %+v", op)
	}
	all, err := st.Audit(ctx, store.AuditQuery{Refused: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := auditKeys(all); !slices.Equal(got, []string{"r1", "s1", "s2"}) {
		t.Fatalf("audit with refusals = %v, want [r1 s1 s2]", got)
	}
	if all[1].Done() || !all[1].Refused {
		t.Errorf("the refusal reads as an operation: %+v", all[1])
	}
	// Paging down from the newest: the cursor past the operation moves
	// its log's number, so the next page holds the change alone.
	page, err := st.Audit(ctx, store.AuditQuery{Limit: 1})
	if err != nil || len(page) != 1 || auditKey(page[0]) != "s2" {
		t.Fatalf("first page = %v, %v; want [s2]", auditKeys(page), err)
	}
	c := store.AuditCursor{Revision: 1 << 40, Refusal: 1 << 40}.Past(page[0])
	page, err = st.Audit(ctx, store.AuditQuery{Limit: 5, Before: &c})
	if err != nil || !slices.Equal(auditKeys(page), []string{"r1"}) {
		t.Fatalf("second page = %v, %v; want [r1]", auditKeys(page), err)
	}
}
