package apiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testauth"
)

// backends are the stores every API test runs against.
var backends = []struct {
	name string
	open func(t *testing.T) store.Store
}{
	{"sqlite", func(t *testing.T) store.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "flotilla.db"))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}},
	{"postgres", func(t *testing.T) store.Store {
		st, err := postgres.Open(context.Background(), pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}},
}

// eachBackend runs fn once per store.
func eachBackend(t *testing.T, fn func(t *testing.T, st store.Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			st := b.open(t)
			t.Cleanup(func() { st.Close() })
			fn(t, st)
		})
	}
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// running is a server on a real loopback socket.
type running struct {
	url    string
	auth   *apiserver.Auth
	token  string // the bootstrap administrator's
	stop   context.CancelFunc
	done   chan error
	client flotillav1alpha1connect.ResourceServiceClient
	audit  flotillav1alpha1connect.AuditServiceClient
}

func serve(t *testing.T, st store.Store, opts ...apiserver.Option) *running {
	t.Helper()
	auth, token := testauth.New(t)
	return serveAuth(t, st, auth, token, opts...)
}

// serveAuth is serve with the given authentication (replicas share one
// signing key file) and a bootstrap administrator's token of it.
func serveAuth(t *testing.T, st store.Store, auth *apiserver.Auth, token string, opts ...apiserver.Option) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
	srv := apiserver.New(resource.Builtin(), st, log, append([]apiserver.Option{apiserver.WithAuth(auth)}, opts...)...)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{url: "http://" + ln.Addr().String(), stop: cancel, done: make(chan error, 1), auth: auth, token: token}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	r.client = flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, r.url, testauth.Bearer(token))
	r.audit = flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, r.url, testauth.Bearer(token))
	return r
}

func res(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	s, err := structpb.NewStruct(spec)
	if err != nil {
		panic(err)
	}
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
}

func tenancy() []*pb.Resource {
	return []*pb.Resource{
		res("Workspace", &pb.Metadata{Name: "pay", Organization: "acme", Tenant: "fin"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/pay"}}}),
		res("Tenant", &pb.Metadata{Name: "fin", Organization: "acme"}, nil),
		res("Organization", &pb.Metadata{Name: "acme"}, nil),
		res("Group", &pb.Metadata{Name: "gw", Organization: "acme", Tenant: "fin", Workspace: "pay"}, map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"c1/pay"}}}),
	}
}

func apply(t *testing.T, c flotillav1alpha1connect.ResourceServiceClient, rs ...*pb.Resource) *pb.ApplyResponse {
	t.Helper()
	out, err := c.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: rs}))
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return out.Msg
}

func outcomes(r *pb.ApplyResponse) []string {
	var out []string
	for _, x := range r.GetResults() {
		out = append(out, x.GetResource().GetMetadata().GetFqn()+" "+x.GetOutcome().String())
	}
	return out
}

func TestApplyOrdersParentsFirstAndReportsOutcomes(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		first := outcomes(apply(t, s.client, tenancy()...))
		want := []string{
			"organizations/acme/tenants/fin/workspaces/pay OUTCOME_CREATED",
			"organizations/acme/tenants/fin OUTCOME_CREATED",
			"organizations/acme OUTCOME_CREATED",
			"organizations/acme/tenants/fin/workspaces/pay/groups/gw OUTCOME_CREATED",
		}
		if fmt.Sprint(first) != fmt.Sprint(want) {
			t.Fatalf("first apply:\n got %v\nwant %v", first, want)
		}
		again := apply(t, s.client, tenancy()...)
		for _, r := range again.GetResults() {
			if r.GetOutcome() != pb.Outcome_OUTCOME_UNCHANGED {
				t.Fatalf("reapplying the same intent gave %v for %s", r.GetOutcome(), r.GetResource().GetMetadata().GetFqn())
			}
		}
		changed := tenancy()[1]
		changed.Spec, _ = structpb.NewStruct(map[string]any{"displayName": "Finance"})
		if got := apply(t, s.client, changed).GetResults()[0].GetOutcome(); got != pb.Outcome_OUTCOME_CONFIGURED {
			t.Fatalf("changed tenant: %v, want CONFIGURED", got)
		}
	})
}

// violationsOf returns "field: message" of every violation in err.
func violationsOf(t *testing.T, err error) []*pb.Violation {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want a connect error with violations, got %v", err)
	}
	var out []*pb.Violation
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			t.Fatal(derr)
		}
		if vs, ok := v.(*pb.Violations); ok {
			out = append(out, vs.GetViolations()...)
		}
	}
	if len(out) == 0 {
		t.Fatalf("error carries no violations: %v", err)
	}
	return out
}

// snapshot is every record, event and audit record: equal snapshots mean an
// unchanged store.
func snapshot(t *testing.T, st store.Store) string {
	t.Helper()
	ctx := context.Background()
	recs, err := st.List(ctx, store.Query{})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := st.Events(ctx, 0, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := st.Audit(ctx, store.AuditQuery{Limit: 1_000_000})
	if err != nil {
		t.Fatal(err)
	}
	rev, _ := st.Revision(ctx)
	b, _ := json.Marshal([]any{recs, evs, audit, rev})
	return string(b)
}

func TestBadInputIsRejectedWithItsFieldAndChangesNothing(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		apply(t, s.client, tenancy()...)
		stored, err := s.client.Get(context.Background(), connect.NewRequest(&pb.GetRequest{Kind: "Tenant", Fqn: "organizations/acme/tenants/fin"}))
		if err != nil {
			t.Fatal(err)
		}
		okTenant := res("Tenant", &pb.Metadata{Name: "ok", Organization: "acme"}, nil)
		cases := []struct {
			name      string
			batch     []*pb.Resource
			code      connect.Code
			index     int32
			field     string
			mentioned string
		}{
			{"unknown kind", []*pb.Resource{okTenant, res("Tenat", &pb.Metadata{Name: "x", Organization: "acme"}, nil)},
				connect.CodeInvalidArgument, 1, "kind", `did you mean "Tenant"`},
			{"unknown field", []*pb.Resource{okTenant, res("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "fin"}, map[string]any{"namespaceSelectr": map[string]any{}})},
				connect.CodeInvalidArgument, 1, "spec.namespaceSelectr", "unknown field"},
			{"missing parent", []*pb.Resource{okTenant, res("Tenant", &pb.Metadata{Name: "x", Organization: "nope"}, nil)},
				connect.CodeInvalidArgument, 1, "metadata.organization", "does not exist"},
			{"namespace owned by another workspace", []*pb.Resource{okTenant, res("Workspace", &pb.Metadata{Name: "w2", Organization: "acme", Tenant: "fin"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"c1/*"}}})},
				connect.CodeInvalidArgument, 1, "spec.namespaceSelector.names[0]", "overlaps"},
			{"stale etag", []*pb.Resource{okTenant, res("Tenant", &pb.Metadata{Name: "fin", Organization: "acme", Etag: "0000000000000000"}, map[string]any{"displayName": "x"})},
				connect.CodeAborted, 1, "metadata.etag", stored.Msg.GetResource().GetMetadata().GetEtag()},
			{"group selector outside its workspace", []*pb.Resource{okTenant, res("Group", &pb.Metadata{Name: "g2", Organization: "acme", Tenant: "fin", Workspace: "pay"}, map[string]any{"type": "traffic", "namespaceSelector": map[string]any{"names": []any{"*/*"}}})},
				connect.CodeInvalidArgument, 1, "spec.namespaceSelector.names[0]", "outside workspace"},
			{"bad name", []*pb.Resource{okTenant, res("Tenant", &pb.Metadata{Name: "Bad_Name", Organization: "acme"}, nil)},
				connect.CodeInvalidArgument, 1, "metadata.name", "not a valid name"},
			{"wrong type", []*pb.Resource{okTenant, res("Group", &pb.Metadata{Name: "g3", Organization: "acme", Tenant: "fin", Workspace: "pay"}, map[string]any{"type": "traffic", "namespaceSelector": map[string]any{"names": "*/pay"}})},
				connect.CodeInvalidArgument, 1, "spec.namespaceSelector.names", "expected a list"},
			{"bad selector syntax", []*pb.Resource{okTenant, res("Workspace", &pb.Metadata{Name: "w3", Organization: "acme", Tenant: "fin"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"no-slash"}}})},
				connect.CodeInvalidArgument, 1, "spec.namespaceSelector.names[0]", "<cluster>/<namespace>"},
			{"bad group type", []*pb.Resource{okTenant, res("Group", &pb.Metadata{Name: "g4", Organization: "acme", Tenant: "fin", Workspace: "pay"}, map[string]any{"type": "routing", "namespaceSelector": map[string]any{"names": []any{"c1/pay"}}})},
				connect.CodeInvalidArgument, 1, "spec.type", "not one of traffic, security, gateway"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := snapshot(t, st)
				_, err := s.client.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: c.batch}))
				if connect.CodeOf(err) != c.code {
					t.Fatalf("code = %v (%v), want %v", connect.CodeOf(err), err, c.code)
				}
				vs := violationsOf(t, err)
				found := false
				for _, v := range vs {
					if v.GetIndex() == c.index && v.GetField() == c.field && strings.Contains(v.GetMessage(), c.mentioned) {
						found = true
					}
				}
				if !found {
					t.Fatalf("no violation at index %d field %s mentioning %q; got %v", c.index, c.field, c.mentioned, vs)
				}
				if after := snapshot(t, st); after != before {
					t.Fatalf("a rejected request changed the store")
				}
			})
		}
	})
}

func TestDeleteRefusesChildrenUnlessCascade(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		apply(t, s.client, tenancy()...)
		ctx := context.Background()
		_, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "org", Metadata: &pb.Metadata{Name: "acme"}}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "--cascade") {
			t.Fatalf("delete with children: %v", err)
		}
		out, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "org", Metadata: &pb.Metadata{Name: "acme"}, Cascade: true}))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			"organizations/acme/tenants/fin/workspaces/pay/groups/gw",
			"organizations/acme/tenants/fin/workspaces/pay",
			"organizations/acme/tenants/fin",
			"organizations/acme",
		}
		if fmt.Sprint(out.Msg.GetDeleted()) != fmt.Sprint(want) {
			t.Fatalf("cascade deleted %v, want children first %v", out.Msg.GetDeleted(), want)
		}
		if left, _ := st.List(ctx, store.Query{}); len(left) != 0 {
			t.Fatalf("%d records left after cascade", len(left))
		}
		_, err = s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "org", Metadata: &pb.Metadata{Name: "acme"}}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("deleting again: %v, want NotFound", err)
		}
	})
}

func TestListFiltersByKindParentAndLabel(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		rs := tenancy()
		rs = append(rs,
			res("Cluster", &pb.Metadata{Name: "c1", Organization: "acme", Labels: map[string]string{"env": "prod"}}, map[string]any{"region": "eu"}),
			res("Cluster", &pb.Metadata{Name: "c2", Organization: "acme", Labels: map[string]string{"env": "dev"}}, nil),
			res("Organization", &pb.Metadata{Name: "other"}, nil),
			res("Cluster", &pb.Metadata{Name: "c3", Organization: "other", Labels: map[string]string{"env": "prod"}}, nil))
		apply(t, s.client, rs...)
		list := func(req *pb.ListRequest) []string {
			out, err := s.client.List(context.Background(), connect.NewRequest(req))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range out.Msg.GetResources() {
				names = append(names, r.GetMetadata().GetFqn())
			}
			return names
		}
		check := func(req *pb.ListRequest, want ...string) {
			t.Helper()
			if got := list(req); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("List(%v) = %v, want %v", req, got, want)
			}
		}
		check(&pb.ListRequest{Kind: "clusters"}, "organizations/acme/clusters/c1", "organizations/acme/clusters/c2", "organizations/other/clusters/c3")
		check(&pb.ListRequest{Kind: "cl", Parent: "organizations/acme"}, "organizations/acme/clusters/c1", "organizations/acme/clusters/c2")
		check(&pb.ListRequest{Kind: "Cluster", LabelSelector: "env=prod"}, "organizations/acme/clusters/c1", "organizations/other/clusters/c3")
		check(&pb.ListRequest{Kind: "Cluster", LabelSelector: "env!=prod"}, "organizations/acme/clusters/c2")
		check(&pb.ListRequest{Kind: "ws", Parent: "organizations/acme"}, "organizations/acme/tenants/fin/workspaces/pay")
		_, err := s.client.List(context.Background(), connect.NewRequest(&pb.ListRequest{Kind: "Cluster", LabelSelector: "env in (("}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("bad selector: %v", err)
		}
	})
}

func TestConcurrentWritersLoseNoUpdateAndAuditEverySuccess(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		apply(t, s.client, tenancy()[1:3]...)
		ctx := context.Background()
		initial, err := st.Get(ctx, "organizations/acme/tenants/fin")
		if err != nil {
			t.Fatal(err)
		}
		const writers = 50
		var (
			wg                   sync.WaitGroup
			mu                   sync.Mutex
			successes, conflicts int
			others               []error
			chain                = map[string]string{} // a success's precondition etag -> its resulting etag
			reused               []string
		)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := s.client.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Tenant", Fqn: "organizations/acme/tenants/fin"}))
				if err != nil {
					mu.Lock()
					others = append(others, err)
					mu.Unlock()
					return
				}
				md := got.Msg.GetResource().GetMetadata()
				upd := res("Tenant", &pb.Metadata{Name: "fin", Organization: "acme", Etag: md.GetEtag()}, map[string]any{"displayName": fmt.Sprintf("writer %d", w)})
				out, err := s.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{upd}}))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					successes++
					if _, dup := chain[md.GetEtag()]; dup {
						reused = append(reused, md.GetEtag())
					}
					chain[md.GetEtag()] = out.Msg.GetResults()[0].GetResource().GetMetadata().GetEtag()
				case connect.CodeOf(err) == connect.CodeAborted:
					conflicts++
				default:
					others = append(others, err)
				}
			}()
		}
		wg.Wait()
		if len(others) > 0 {
			t.Fatalf("writes failed other than by conflict: %v", others)
		}
		if successes == 0 || successes+conflicts != writers {
			t.Fatalf("%d successes + %d conflicts != %d writers", successes, conflicts, writers)
		}
		audit, err := s.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{Fqn: "organizations/acme/tenants/fin", Kind: "Tenant"}))
		if err != nil {
			t.Fatal(err)
		}
		updates := 0
		for _, a := range audit.Msg.GetRecords() {
			if a.GetOperation() == "update" {
				updates++
			}
		}
		if updates != successes {
			t.Fatalf("%d update audit records for %d successful writes", updates, successes)
		}
		// No lost update: no two successes started from the same etag (one
		// would have overwritten the other), and following each success's
		// precondition to its result, from the etag before the race, passes
		// through every success and ends at the stored etag.
		if len(reused) > 0 {
			t.Fatalf("two writes succeeded on the same etag %v: one update was lost", reused)
		}
		final, _ := st.Get(ctx, "organizations/acme/tenants/fin")
		cur, walked := initial.ETag, 0
		for next, ok := chain[cur]; ok; next, ok = chain[cur] {
			cur = next
			walked++
		}
		if walked != successes || cur != final.ETag {
			t.Fatalf("the etag chain from %s covers %d of %d successes and ends at %s; the store is at %s", initial.ETag, walked, successes, cur, final.ETag)
		}
	})
}

// watchAll collects events from one stream until n events arrived.
func watchN(t *testing.T, c flotillav1alpha1connect.ResourceServiceClient, from int64, n int) []*pb.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.Watch(ctx, connect.NewRequest(&pb.WatchRequest{FromRevision: from}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var out []*pb.WatchResponse
	for len(out) < n && stream.Receive() {
		if stream.Msg().GetType() != pb.EventType_EVENT_TYPE_BOOKMARK {
			out = append(out, stream.Msg())
		}
	}
	if len(out) < n {
		t.Fatalf("watch from %d ended after %d of %d events: %v", from, len(out), n, stream.Err())
	}
	return out
}

func TestWatchResumesFromARevisionMissingNothingExactlyOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		ctx := context.Background()
		apply(t, s.client, tenancy()[2]) // revision 1: the organization

		// A client watches, takes the first event, and disconnects.
		first := watchN(t, s.client, 0, 1)
		last := first[0].GetRevision()

		// While it is away, 20 changes land.
		for i := range 20 {
			apply(t, s.client, res("Tenant", &pb.Metadata{Name: fmt.Sprintf("t%d", i), Organization: "acme"}, nil))
		}
		// Three deletes too.
		for i := range 3 {
			if _, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "Tenant", Fqn: fmt.Sprintf("organizations/acme/tenants/t%d", i)})); err != nil {
				t.Fatal(err)
			}
		}

		// It resumes from its last revision; a change made while it resumes
		// arrives too, whether it lands before or after the watch starts.
		done := make(chan []*pb.WatchResponse)
		go func() { done <- watchN(t, s.client, last, 24) }()
		apply(t, s.client, res("Tenant", &pb.Metadata{Name: "live", Organization: "acme"}, nil))
		got := <-done

		seen := map[int64]bool{}
		for i, ev := range got {
			if seen[ev.GetRevision()] {
				t.Fatalf("revision %d delivered twice", ev.GetRevision())
			}
			seen[ev.GetRevision()] = true
			if want := last + int64(i) + 1; ev.GetRevision() != want {
				t.Fatalf("event %d has revision %d, want %d: a change was missed or reordered", i, ev.GetRevision(), want)
			}
		}
		if got[20].GetType() != pb.EventType_EVENT_TYPE_DELETE || got[20].GetResource().GetMetadata().GetName() != "t0" {
			t.Fatalf("event 21 should delete t0: %v", got[20])
		}
		if got[23].GetResource().GetMetadata().GetName() != "live" {
			t.Fatalf("last event should be the live change: %v", got[23])
		}
	})
}

func TestWatchFiltersByKindAndBookmarksSkippedRevisions(t *testing.T) {
	st := backends[0].open(t)
	defer st.Close()
	s := serve(t, st)
	apply(t, s.client, tenancy()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := s.client.Watch(ctx, connect.NewRequest(&pb.WatchRequest{Kinds: []string{"ws"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var got []string
	for stream.Receive() {
		m := stream.Msg()
		got = append(got, fmt.Sprintf("%s@%d", m.GetType(), m.GetRevision()))
		if m.GetType() == pb.EventType_EVENT_TYPE_BOOKMARK {
			break
		}
	}
	want := "[EVENT_TYPE_PUT@3 EVENT_TYPE_BOOKMARK@4]"
	if fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %s", got, want)
	}
}

func TestWatchOfACompactedRevisionIsOutOfRange(t *testing.T) {
	st := backends[0].open(t)
	defer st.Close()
	s := serve(t, st)
	apply(t, s.client, tenancy()...)
	if err := st.Compact(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	stream, err := s.client.Watch(context.Background(), connect.NewRequest(&pb.WatchRequest{FromRevision: 1}))
	if err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
	}
	if connect.CodeOf(stream.Err()) != connect.CodeOutOfRange || !strings.Contains(stream.Err().Error(), "re-list") {
		t.Fatalf("watch from a compacted revision: %v", stream.Err())
	}
}

func TestOnePortServesGRPCGRPCWebAndJSON(t *testing.T) {
	st := backends[0].open(t)
	defer st.Close()
	s := serve(t, st)
	apply(t, s.client, tenancy()[2])
	h2c := &http.Client{Transport: &http.Transport{Protocols: func() *http.Protocols {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		return p
	}()}}
	for name, c := range map[string]flotillav1alpha1connect.ResourceServiceClient{
		"grpc":     flotillav1alpha1connect.NewResourceServiceClient(h2c, s.url, connect.WithGRPC(), testauth.Bearer(s.token)),
		"grpc-web": flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, s.url, connect.WithGRPCWeb(), testauth.Bearer(s.token)),
	} {
		out, err := c.Get(context.Background(), connect.NewRequest(&pb.GetRequest{Kind: "org", Fqn: "organizations/acme"}))
		if err != nil || out.Msg.GetResource().GetMetadata().GetName() != "acme" {
			t.Fatalf("%s: %v %v", name, out, err)
		}
	}
	req, _ := http.NewRequest("POST", s.url+"/flotilla.v1alpha1.ResourceService/Get", bytes.NewBufferString(`{"kind":"Organization","fqn":"organizations/acme"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"name":"acme"`) {
		t.Fatalf("JSON: %d %s", resp.StatusCode, body)
	}
}

func TestHealthReadinessAndMetricsEndpoints(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	apply(t, s.client, tenancy()[2])
	get := func(path string, token ...string) (int, string) {
		req, _ := http.NewRequest("GET", s.url+path, nil)
		for _, tok := range token {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	if code, _ := get("/metrics"); code != http.StatusUnauthorized {
		t.Fatalf("metrics without a token = %d, want 401", code)
	}
	code, body := get("/metrics", s.token)
	if code != 200 || !strings.Contains(body, `flotilla_api_requests_total{code="ok",procedure="/flotilla.v1alpha1.ResourceService/Apply"} 1`) {
		t.Fatalf("metrics %d lacks the apply counter:\n%s", code, body)
	}
	st.Close() // the store goes away: not ready, still alive
	if code, body := get("/readyz"); code != 503 || strings.Contains(body, "closed") || !strings.Contains(body, "store is unavailable") {
		t.Fatalf("readyz with a closed store = %d %q, want 503 without the internal error", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz with a closed store = %d, want 200", code)
	}
}

// gate is a store whose Update waits at a gate: it injects a slow write, which
// the real store cannot produce on demand.
type gate struct {
	store.Store
	entered chan struct{}
	release chan struct{}
}

func (g *gate) Update(ctx context.Context, actor string, fn func(tx store.Tx) error) error {
	close(g.entered)
	<-g.release
	return g.Store.Update(ctx, actor, fn)
}

func TestShutdownLetsRequestsInFlightFinish(t *testing.T) {
	real := backends[0].open(t)
	defer real.Close()
	g := &gate{Store: real, entered: make(chan struct{}), release: make(chan struct{})}
	s := serve(t, g)
	result := make(chan error, 1)
	go func() {
		_, err := s.client.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: tenancy()[2:3]}))
		result <- err
	}()
	<-g.entered
	s.stop() // what SIGTERM does
	select {
	case err := <-s.done:
		t.Fatalf("server exited with a request in flight: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(g.release)
	if err := <-result; err != nil {
		t.Fatalf("the request in flight failed: %v", err)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	s.done <- nil // for the cleanup
	if _, err := real.Get(context.Background(), "organizations/acme"); err != nil {
		t.Fatalf("the in-flight write was not stored: %v", err)
	}
	if _, err := http.Get(s.url + "/healthz"); err == nil {
		t.Fatal("server still accepts connections after shutdown")
	}
}

func TestTheEventLogIsCompactedBeyondItsRetention(t *testing.T) {
	st := backends[0].open(t)
	defer st.Close()
	s := serve(t, st, apiserver.WithEventRetention(3, 20*time.Millisecond))
	apply(t, s.client, tenancy()...) // revisions 1..4
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := st.Events(context.Background(), 0, 10)
		if errors.Is(err, store.ErrCompacted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events were not compacted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	evs, err := st.Events(context.Background(), 1, 10)
	if err != nil || len(evs) != 3 {
		t.Fatalf("the newest 3 events should be kept: %d, %v", len(evs), err)
	}
	if audit, _ := st.Audit(context.Background(), store.AuditQuery{}); len(audit) != 4 {
		t.Fatalf("compaction touched the audit log: %d records", len(audit))
	}
}
