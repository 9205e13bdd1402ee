package apiserver_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/testauth"
)

func auditClient(url, token string) flotillav1alpha1connect.AuditServiceClient {
	if token == "" {
		return flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, url)
	}
	return flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, url, testauth.Bearer(token))
}

// auditID names a record in either log.
func auditID(r *pb.AuditRecord) string {
	if r.GetRefused() {
		return fmt.Sprintf("s%d", r.GetRefusal())
	}
	return fmt.Sprintf("r%d", r.GetRevision())
}

func auditIDs(recs []*pb.AuditRecord) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, auditID(r))
	}
	return out
}

// auditPages follows ListAudit's page tokens to the end.
func auditPages(t *testing.T, c flotillav1alpha1connect.AuditServiceClient, req *pb.ListAuditRequest) [][]*pb.AuditRecord {
	t.Helper()
	var pages [][]*pb.AuditRecord
	for {
		if len(pages) > 1000 {
			t.Fatal("ListAudit's pages do not end")
		}
		out, err := c.ListAudit(context.Background(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("list audit (page %d): %v", len(pages)+1, err)
		}
		pages = append(pages, out.Msg.GetRecords())
		if out.Msg.GetNextPageToken() == "" {
			return pages
		}
		req.PageToken = out.Msg.GetNextPageToken()
	}
}

// exportAudit reads a whole ExportAudit stream.
func exportAudit(t *testing.T, c flotillav1alpha1connect.AuditServiceClient, req *pb.ExportAuditRequest) []*pb.AuditRecord {
	t.Helper()
	stream, err := c.ExportAudit(context.Background(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("export audit: %v", err)
	}
	defer stream.Close()
	var out []*pb.AuditRecord
	for stream.Receive() {
		if stream.Msg().GetResumeToken() == "" {
			t.Fatal("an export batch has no resume token")
		}
		out = append(out, stream.Msg().GetRecords()...)
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("export audit: %v", err)
	}
	return out
}

func reversed(recs []*pb.AuditRecord) []*pb.AuditRecord {
	out := slices.Clone(recs)
	slices.Reverse(out)
	return out
}

// storedAudit is the store's whole audit that matches q, oldest first: the
// truth the API's answers are held to.
func storedAudit(t *testing.T, st store.Store, q store.AuditQuery) []store.AuditRecord {
	t.Helper()
	q.Limit = 1_000_000
	recs, err := st.Audit(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func binding(name, target, role string, subjects ...string) *pb.Resource {
	var subs []any
	for _, s := range subjects {
		subs = append(subs, s)
	}
	return res("AccessBinding", md(name, "acme"), map[string]any{"target": target, "allow": []any{map[string]any{"role": role, "subjects": subs}}})
}

func TestAWorkspaceReaderPagesThroughOnlyItsOwnRecordsAmongThousandsAndTheExportIsThePages(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		w1 := "organizations/acme/tenants/t1/workspaces/w1"
		apply(t, s.client,
			res("Organization", md("acme"), nil),
			res("Tenant", md("t1", "acme"), nil),
			res("Workspace", md("w1", "acme", "t1"), selector("pay")),
			res("Group", md("g1", "acme", "t1", "w1"), map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"*/pay"}}}))
		apply(t, s.client, binding("w1-reader", w1, "reader", "user:rita@example.com"))
		// Ten rounds of 250 other tenants' records, then 20 of w1's.
		for round := range 10 {
			var others []*pb.Resource
			for i := range 250 {
				others = append(others, res("Tenant", md(fmt.Sprintf("other-%02d-%03d", round, i), "acme"), nil))
			}
			apply(t, s.client, others...)
			var own []*pb.Resource
			for i := range 20 {
				name := fmt.Sprintf("gw-%02d-%02d", round, i)
				own = append(own, gateway(name, name+".example.com"))
			}
			apply(t, s.client, own...)
		}
		// What rita may read, newest first, from the whole stored audit.
		all := storedAudit(t, st, store.AuditQuery{})
		var want []string
		for _, r := range slices.Backward(all) {
			if strings.HasPrefix(r.FQN, w1) || r.FQN == "organizations/acme/accessbindings/w1-reader" {
				want = append(want, fmt.Sprintf("r%d", r.Revision))
			}
		}
		if len(all) < 2700 || len(want) != 203 { // w1, g1, the binding and 200 gateways
			t.Fatalf("the audit has %d records, %d of them w1's; want over 2700 and 203", len(all), len(want))
		}

		rita := auditClient(s.url, testauth.Token(t, s.auth, "user:rita@example.com", authn.MethodOIDC))
		pages := auditPages(t, rita, &pb.ListAuditRequest{Limit: 50})
		var got []*pb.AuditRecord
		for i, p := range pages {
			if i < len(pages)-1 && len(p) != 50 {
				t.Errorf("page %d of %d has %d records; every page but the last must be full (50)", i+1, len(pages), len(p))
			}
			got = append(got, p...)
		}
		if diff := cmp.Diff(want, auditIDs(got)); diff != "" {
			t.Fatalf("rita's pages, newest first (-her records in the whole audit +pages):\n%s", diff)
		}
		if exported := exportAudit(t, rita, &pb.ExportAuditRequest{}); !slices.Equal(auditIDs(exported), auditIDs(reversed(got))) {
			t.Fatalf("rita's export (oldest first) is not her pages reversed:\n%v\n%v", auditIDs(exported), auditIDs(reversed(got)))
		}

		// The administrator's pages of 1000 cover the whole audit, and the
		// export is their concatenation, oldest first.
		var admin []*pb.AuditRecord
		for _, p := range auditPages(t, s.audit, &pb.ListAuditRequest{}) {
			admin = append(admin, p...)
		}
		exported := exportAudit(t, s.audit, &pb.ExportAuditRequest{})
		if len(admin) != len(all) || !slices.Equal(auditIDs(admin), auditIDs(reversed(exported))) {
			t.Fatalf("the administrator's %d paged records are not the %d exported, newest first, nor the %d stored", len(admin), len(exported), len(all))
		}
	})
}

func TestAuditPagesStayPutWhileRecordsAreWritten(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	apply(t, s.client, res("Organization", md("acme"), nil))
	for i := range 30 {
		apply(t, s.client, res("Tenant", md(fmt.Sprintf("t%02d", i), "acme"), nil))
	}
	req := &pb.ListAuditRequest{Limit: 10}
	var got []string
	for page := 0; ; page++ {
		if page > 10 {
			t.Fatal("pages do not end")
		}
		out, err := s.audit.ListAudit(context.Background(), connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, auditIDs(out.Msg.GetRecords())...)
		// A write between pages is newer than every page: it is on none.
		apply(t, s.client, res("Tenant", md(fmt.Sprintf("late%02d", page), "acme"), nil))
		if req.PageToken = out.Msg.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	var want []string
	for rev := 31; rev >= 1; rev-- {
		want = append(want, fmt.Sprintf("r%d", rev))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("pages read while tenants were added (-revisions 31..1 +read):\n%s", diff)
	}
}

func TestAccessBindingRecordsAreShownByTheirTargetToEveryRoleAtEveryLevel(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	const (
		org = "organizations/acme"
		t1  = org + "/tenants/t1"
		t2  = org + "/tenants/t2"
		w1  = t1 + "/workspaces/w1"
		w2  = t1 + "/workspaces/w2"
		w3  = t2 + "/workspaces/w3"
	)
	apply(t, s.client,
		res("Organization", md("acme"), nil),
		res("Tenant", md("t1", "acme"), nil),
		res("Tenant", md("t2", "acme"), nil),
		res("Workspace", md("w1", "acme", "t1"), selector("pay")),
		res("Workspace", md("w2", "acme", "t1"), selector("ledger")),
		res("Workspace", md("w3", "acme", "t2"), selector("books")))
	// The bindings of the test, with the targets each record of them is
	// about (a move is about both).
	targets := map[string][]string{}
	write := func(r *pb.Resource, about ...string) {
		t.Helper()
		out := apply(t, s.client, r)
		targets[fmt.Sprintf("r%d", out.GetRevision())] = about
	}
	write(binding("on-w1", w1, "reader", "user:x@example.com"), w1)
	write(binding("on-w1", w1, "reader", "user:x@example.com", "user:y@example.com"), w1) // target unchanged
	write(binding("on-w1", w1, "writer", "user:y@example.com"), w1)                       // and again
	write(binding("on-w2", w2, "reader", "user:x@example.com"), w2)
	write(binding("on-w3", w3, "reader", "user:x@example.com"), w3)
	write(binding("on-t2", t2, "reader", "user:x@example.com"), t2)
	write(binding("on-org", org, "reader", "user:x@example.com"), org)
	write(binding("mover", w2, "reader", "user:x@example.com"), w2)
	write(binding("mover", w1, "reader", "user:x@example.com"), w2, w1) // moved from w2 to w1
	write(binding("mover", w1, "reader", "user:z@example.com"), w1)
	write(binding("gone", w3, "reader", "user:x@example.com"), w3)
	del, err := s.client.Delete(context.Background(), connect.NewRequest(&pb.DeleteRequest{Kind: "AccessBinding", Fqn: org + "/accessbindings/gone"}))
	if err != nil {
		t.Fatal(err)
	}
	targets[fmt.Sprintf("r%d", del.Msg.GetRevision())] = []string{w3}
	// A binding re-created under an old name with another target is
	// judged by the new one, and its old records by the old one.
	write(binding("gone", w1, "reader", "user:x@example.com"), w1)
	write(binding("gone", w1, "reader", "user:q@example.com"), w1)

	levels := map[string]string{"organization": org, "tenant": t1, "workspace": w1}
	for _, level := range []string{"organization", "tenant", "workspace"} {
		for _, role := range []string{"admin", "editor", "creator", "writer", "reader"} {
			subject := "user:" + role + "-" + level + "@example.com"
			write(binding(role+"-"+level, levels[level], role, subject), levels[level])
		}
	}
	// Someone bound on t2 only, and someone bound nowhere.
	write(binding("t2-admin", t2, "admin", "user:t2-admin@example.com"), t2)

	under := func(node string, fqns []string) bool {
		for _, f := range fqns {
			if f == node || strings.HasPrefix(f, node+"/") {
				return true
			}
		}
		return false
	}
	check := func(who, node string) {
		t.Helper()
		c := auditClient(s.url, testauth.Token(t, s.auth, who, authn.MethodOIDC))
		var got []string
		for _, p := range auditPages(t, c, &pb.ListAuditRequest{Kind: "AccessBinding", Limit: 7}) {
			got = append(got, auditIDs(p)...)
		}
		var want []string
		for _, r := range slices.Backward(storedAudit(t, st, store.AuditQuery{Kind: "AccessBinding"})) {
			if id := fmt.Sprintf("r%d", r.Revision); node != "" && under(node, targets[id]) {
				want = append(want, id)
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (bound on %q) reads these access-binding records (-the records on or below %q +read):\n%s", who, node, node, diff)
		}
		if node != "" && len(got) == 0 {
			t.Errorf("%s reads no access-binding record at all", who)
		}
		if exported := auditIDs(reversed(exportAudit(t, c, &pb.ExportAuditRequest{Kind: "AccessBinding"}))); !slices.Equal(exported, got) {
			t.Errorf("%s exports access-binding records %v; pages %v", who, exported, got)
		}
	}
	for level, node := range levels {
		for _, role := range []string{"admin", "editor", "creator", "writer", "reader"} {
			check("user:"+role+"-"+level+"@example.com", node)
		}
	}
	check("user:t2-admin@example.com", t2)
	check("user:nobody@example.com", "")
}

func TestABadAuditPageTokenOrLimitIsRefusedClearly(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	apply(t, s.client, res("Organization", md("acme"), nil))
	ctx := context.Background()
	for _, tok := range []string{"%%%", "bm90IGEgdG9rZW4", "YTEuMTI"} { // not base64; "not a token"; "a1.12" (no refusal part)
		_, err := s.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{PageToken: tok}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "page_token is damaged") {
			t.Errorf("page token %q: %v; want InvalidArgument naming page_token", tok, err)
		}
		stream, err := s.audit.ExportAudit(ctx, connect.NewRequest(&pb.ExportAuditRequest{AfterToken: tok}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
			stream.Close()
		}
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "after_token is damaged") {
			t.Errorf("after token %q: %v; want InvalidArgument naming after_token", tok, err)
		}
	}
	if _, err := s.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{Limit: -1})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "limit -1") {
		t.Errorf("limit -1: %v; want InvalidArgument naming the limit", err)
	}
}

func TestRefusalsAboutNoObjectAreShownOnlyToTheBootstrapAdministratorAndTheirActor(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	apply(t, s.client, res("Organization", md("acme"), nil))
	apply(t, s.client, binding("org-reader", "organizations/acme", "reader", "user:bob@example.com"))
	mallory := testauth.Token(t, s.auth, "user:mallory@example.com", authn.MethodOIDC)
	if _, err := clientFor(s.url, mallory).Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{res("Tenant", md("evil", "acme"), nil)}})); connect.CodeOf(err) != connect.CodeNotFound && connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("mallory's apply: %v; want it refused", err)
	}
	if _, err := clientFor(s.url, "").Kinds(ctx, connect.NewRequest(&pb.KindsRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("a call without a token: %v", err)
	}
	// Bury both refusals under more than a page of newer changes.
	var many []*pb.Resource
	for i := range 1100 {
		many = append(many, res("Tenant", md(fmt.Sprintf("t%04d", i), "acme"), nil))
	}
	apply(t, s.client, many...)

	refusalsOf := func(token string) []string {
		t.Helper()
		c := auditClient(s.url, token)
		var paged []string
		for _, p := range auditPages(t, c, &pb.ListAuditRequest{Refused: true}) {
			for _, r := range p {
				if r.GetRefused() {
					paged = append(paged, r.GetActor()+" "+r.GetOperation())
				}
			}
		}
		var exported []string
		for _, r := range reversed(exportAudit(t, c, &pb.ExportAuditRequest{Refused: true})) {
			if r.GetRefused() {
				exported = append(exported, r.GetActor()+" "+r.GetOperation())
			}
		}
		if !slices.Equal(paged, exported) {
			t.Errorf("paged refusals %v differ from exported %v", paged, exported)
		}
		return paged
	}
	if got := refusalsOf(s.token); !slices.Equal(got, []string{"anonymous@127.0.0.1 Kinds", "user:mallory@example.com Apply"}) {
		t.Errorf("the bootstrap administrator reads refusals %v; want the anonymous one and mallory's", got)
	}
	if got := refusalsOf(mallory); !slices.Equal(got, []string{"user:mallory@example.com Apply"}) {
		t.Errorf("mallory reads refusals %v; want her own alone", got)
	}
	if got := refusalsOf(testauth.Token(t, s.auth, "user:bob@example.com", authn.MethodOIDC)); len(got) != 0 {
		t.Errorf("bob, an organization reader, reads refusals about no object: %v", got)
	}
}

func TestAnExportCutShortResumesFromItsLastBatchWithoutRepeatingOrSkipping(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	apply(t, s.client, res("Organization", md("acme"), nil))
	var many []*pb.Resource
	for i := range 1200 {
		many = append(many, res("Tenant", md(fmt.Sprintf("t%04d", i), "acme"), nil))
	}
	apply(t, s.client, many...)
	whole := exportAudit(t, s.audit, &pb.ExportAuditRequest{})
	stream, err := s.audit.ExportAudit(context.Background(), connect.NewRequest(&pb.ExportAuditRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatalf("no first batch: %v", stream.Err())
	}
	first, token := stream.Msg().GetRecords(), stream.Msg().GetResumeToken()
	stream.Close() // the archiver breaks off after one batch
	if len(first) == 0 || len(first) >= len(whole) {
		t.Fatalf("the first batch has %d of %d records; want some, not all", len(first), len(whole))
	}
	rest := exportAudit(t, s.audit, &pb.ExportAuditRequest{AfterToken: token})
	if got := append(auditIDs(first), auditIDs(rest)...); !slices.Equal(got, auditIDs(whole)) {
		t.Fatalf("first batch + resumed export has %d records; the whole export %d", len(got), len(whole))
	}
}

// A signing-key rotation is server-wide: the bootstrap administrator and
// every administrator of all organizations read its record; a reader of
// an organization, or an administrator of one organization of two, does
// not.
func TestSigningKeyOperationsAreReadByServerAdministratorsOnly(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	apply(t, s.client, res("Organization", md("acme"), nil), res("Organization", md("zeta"), nil))
	apply(t, s.client,
		binding("ops", "organizations/acme", "admin", "user:ops@example.com"),
		binding("rita", "organizations/acme", "reader", "user:rita@example.com"),
		binding("ada", "organizations/acme", "admin", "user:ada@example.com"),
		res("AccessBinding", md("ops", "zeta"), map[string]any{"target": "organizations/zeta", "allow": []any{map[string]any{"role": "admin", "subjects": []any{"user:ops@example.com"}}}}))
	if _, err := identityClient(s.url, s.token).RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{})); err != nil {
		t.Fatal(err)
	}
	sees := func(who string) bool {
		t.Helper()
		c := flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, s.url, testauth.Bearer(testauth.Token(t, s.auth, who, authn.MethodOIDC)))
		var list, export bool
		out, err := c.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{}))
		if err != nil {
			t.Fatalf("%s lists the audit: %v", who, err)
		}
		for _, r := range out.Msg.GetRecords() {
			list = list || r.GetOperation() == "RotateSigningKey"
		}
		for _, r := range exportAudit(t, c, &pb.ExportAuditRequest{}) {
			export = export || r.GetOperation() == "RotateSigningKey"
		}
		if list != export {
			t.Errorf("%s: the list shows the rotation %v, the export %v", who, list, export)
		}
		return list
	}
	// The operations of one kind of server-wide state are filtered by it.
	for kind, want := range map[string]int{"SigningKey": 1, "signingkey": 1, "BootstrapCredential": 0} {
		out, err := s.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{Kind: kind}))
		if err != nil {
			t.Fatalf("audit of kind %s: %v", kind, err)
		}
		if got := len(out.Msg.GetRecords()); got != want {
			t.Errorf("audit of kind %s: %d records, want %d", kind, got, want)
		}
	}
	for who, want := range map[string]bool{"user:ops@example.com": true, "user:rita@example.com": false, "user:ada@example.com": false} {
		if got := sees(who); got != want {
			t.Errorf("%s reads the rotation's record: %v, want %v", who, got, want)
		}
	}
}
