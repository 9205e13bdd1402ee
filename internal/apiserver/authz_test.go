package apiserver_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/testauth"
)

// An object of the authorization matrix: where it sits and how to write it.
type mobj struct {
	name string // the table's name for it
	res  *pb.Resource
}

func md(name string, parents ...string) *pb.Metadata {
	m := &pb.Metadata{Name: name}
	for i, p := range parents {
		switch i {
		case 0:
			m.Organization = p
		case 1:
			m.Tenant = p
		case 2:
			m.Workspace = p
		case 3:
			m.Group = p
		}
	}
	return m
}

func gateway(name, host string) *pb.Resource {
	return res("IngressGateway", md(name, "acme", "t1", "w1", "g1"), map[string]any{
		"workloadSelector": map[string]any{"namespace": "pay", "labels": map[string]any{"istio": "ingressgateway"}},
		"http": []any{map[string]any{"name": "web", "hostname": host, "port": 80, "routing": map[string]any{"rules": []any{
			map[string]any{"route": map[string]any{"host": "pay/web.pay.svc.cluster.local", "port": 8080}},
		}}}},
	})
}

func selector(ns string) map[string]any {
	return map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + ns}}}
}

// matrixObjects exist before every case (the bootstrap administrator makes them).
func matrixObjects() []mobj {
	g := func(typ, mode string) map[string]any {
		s := selector("pay")
		s["type"], s["configMode"] = typ, mode
		return s
	}
	return append([]mobj{
		{"org", res("Organization", md("acme"), nil)},
		{"t1", res("Tenant", md("t1", "acme"), nil)},
		{"t2", res("Tenant", md("t2", "acme"), nil)},
		{"w1", res("Workspace", md("w1", "acme", "t1"), selector("pay"))},
		{"w2", res("Workspace", md("w2", "acme", "t1"), selector("ledger"))},
		{"g1", res("Group", md("g1", "acme", "t1", "w1"), g("gateway", "BRIDGED"))},
		{"g2", res("Group", md("g2", "acme", "t1", "w1"), g("traffic", "DIRECT"))},
		{"wss", res("WorkspaceSetting", md("mc", "acme", "t1", "w1"), map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}})},
		{"igw", gateway("shop", "shop.example.com")},
		{"c1", res("Cluster", md("c1", "acme"), nil)},
		{"c2", res("Cluster", md("c2", "acme"), nil)},
		{"team", res("Team", md("devs", "acme"), map[string]any{"members": []any{"nobody@example.com"}})},
		{"sa", res("ServiceAccount", md("ci", "acme"), nil)},
		{"role", res("Role", md("viewer", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Read"}, "kinds": []any{"*"}}}})},
		// The mesh's control plane is the organization's: no tenant,
		// workspace or cluster binding reaches it.
		{"ii", res("IstioInstallation", md("stable", "acme"), map[string]any{"clusters": map[string]any{"names": []any{"*"}}, "version": "1.31"})},
	}, istioObjects("")...)
}

// istioObjects is one object of every raw Istio kind, in the DIRECT group
// g2 of workspace w1, named after its kind (with prefix); the table calls
// them "<prefix>istio".
func istioObjects(prefix string) []mobj {
	var out []mobj
	for _, k := range resource.Builtin().Kinds() {
		if !k.Namespaced { // Istio's own kinds
			continue
		}
		r := res(k.Name, md(prefix+strings.ToLower(k.Name), "acme", "t1", "w1", "g2"), minimalIstioSpecs[k.Name])
		r.ApiVersion, r.Metadata.Namespace = k.APIVersion(), "pay"
		out = append(out, mobj{prefix + "istio", r})
	}
	return out
}

// minimalIstioSpecs are the smallest specs Istio's validation accepts, by
// kind; the security kinds accept an empty spec.
var minimalIstioSpecs = map[string]map[string]any{
	"DestinationRule": {"host": "web.pay.svc.cluster.local"},
	"Gateway":         {"servers": []any{map[string]any{"port": map[string]any{"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": []any{"*"}}}},
	"ServiceEntry":    {"hosts": []any{"x.example.com"}, "ports": []any{map[string]any{"number": 443, "name": "https", "protocol": "TLS"}}, "resolution": "DNS"},
	"Sidecar":         {"egress": []any{map[string]any{"hosts": []any{"./*"}}}},
	"VirtualService":  {"hosts": []any{"web"}, "http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web"}}}}}},
	"WorkloadEntry":   {"address": "10.0.0.1"},
}

// matrixNew are objects a case tries to create, one of each kind.
func matrixNew() []mobj {
	g := selector("pay")
	g["type"] = "gateway"
	return append([]mobj{
		{"new-tenant", res("Tenant", md("t9", "acme"), nil)},
		{"new-ws", res("Workspace", md("w9", "acme", "t1"), selector("other"))},
		{"new-group", res("Group", md("g9", "acme", "t1", "w1"), g)},
		{"new-wss", res("WorkspaceSetting", md("mc9", "acme", "t1", "w1"), map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}})},
		{"new-igw", gateway("shop9", "shop9.example.com")},
		{"new-cluster", res("Cluster", md("c9", "acme"), nil)},
		{"new-team", res("Team", md("ops", "acme"), nil)},
		{"new-sa", res("ServiceAccount", md("deploy", "acme"), nil)},
		{"new-role", res("Role", md("auditor", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Read"}, "kinds": []any{"*"}}}})},
		{"new-ii", res("IstioInstallation", md("canary", "acme"), map[string]any{"clusters": map[string]any{"names": []any{"c1"}}, "version": "1.31", "revision": "canary"})},
	}, istioObjects("new-")...)
}

// The expected outcomes, written out rather than derived: where each
// binding level reaches, and what each role may do there.
var (
	levels = map[string]string{ // level → the node its binding targets
		"organization": "organizations/acme",
		"tenant":       "organizations/acme/tenants/t1",
		"workspace":    "organizations/acme/tenants/t1/workspaces/w1",
		"group":        "organizations/acme/tenants/t1/workspaces/w1/groups/g1",
		"cluster":      "organizations/acme/clusters/c1",
	}
	reach = map[string][]string{ // level → the objects (existing and new) a binding there covers
		"organization": {"org", "t1", "t2", "w1", "w2", "g1", "g2", "wss", "igw", "istio", "c1", "c2", "team", "sa", "role", "ii",
			"new-tenant", "new-ws", "new-group", "new-wss", "new-igw", "new-istio", "new-cluster", "new-team", "new-sa", "new-role", "new-ii"},
		"tenant":    {"t1", "w1", "w2", "g1", "g2", "wss", "igw", "istio", "new-ws", "new-group", "new-wss", "new-igw", "new-istio"},
		"workspace": {"w1", "g1", "g2", "wss", "igw", "istio", "new-group", "new-wss", "new-igw", "new-istio"},
		"group":     {"g1", "igw", "new-igw"},
		"cluster":   {"c1"},
	}
	identity  = map[string]bool{"team": true, "sa": true, "role": true}
	roleVerbs = map[string][]string{
		"admin":   {"get", "list", "update", "delete", "create", "setpolicy"},
		"editor":  {"get", "list", "update", "delete", "create"},
		"creator": {"get", "list", "create"},
		"writer":  {"get", "list", "update"},
		"reader":  {"get", "list"},
	}
)

func clientFor(url, token string) flotillav1alpha1connect.ResourceServiceClient {
	return flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url, testauth.Bearer(token))
}

func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func TestAuthorizationMatrix(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	admin := s.client
	objs := matrixObjects()
	var all []*pb.Resource
	for _, o := range objs {
		all = append(all, o.res)
	}
	apply(t, admin, all...)
	fqnOf := func(r *pb.Resource) string {
		got, err := admin.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: r.GetKind(), Metadata: r.GetMetadata()}))
		if err != nil {
			t.Fatalf("get %s %s: %v", r.GetKind(), r.GetMetadata().GetName(), err)
		}
		return got.Msg.GetResource().GetMetadata().GetFqn()
	}
	fqns := map[*pb.Resource]string{}
	for _, o := range objs {
		fqns[o.res] = fqnOf(o.res)
	}
	restore := func(r *pb.Resource) { // put back what a case deleted (a leaf: containers refuse a plain delete)
		t.Helper()
		apply(t, admin, r)
	}
	deleteNew := func(r *pb.Resource) {
		t.Helper()
		if _, err := admin.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: r.GetKind(), Metadata: r.GetMetadata(), Cascade: true})); err != nil {
			t.Fatalf("clean up %s: %v", r.GetMetadata().GetName(), err)
		}
	}

	failures := 0
	for _, role := range []string{"admin", "editor", "creator", "writer", "reader"} {
		for _, level := range []string{"organization", "tenant", "workspace", "group", "cluster"} {
			user := fmt.Sprintf("user:%s-at-%s@example.com", role, level)
			binding := res("AccessBinding", md("b-"+role+"-"+level, "acme"), map[string]any{
				"target": levels[level], "allow": []any{map[string]any{"role": role, "subjects": []any{user}}}})
			apply(t, admin, binding)
			c := clientFor(s.url, testauth.Token(t, s.auth, user, authn.MethodOIDC))
			may := func(verb, obj string) bool {
				if identity[strings.TrimPrefix(obj, "new-")] && verb != "get" && verb != "list" {
					verb = "setpolicy" // who may do what is SetPolicy's to change
				}
				return slices.Contains(roleVerbs[role], verb) && slices.Contains(reach[level], obj)
			}
			var cur string // the kind being checked, for messages
			check := func(verb, obj, got string, ok bool) {
				t.Helper()
				if want := may(verb, obj); ok != want {
					failures++
					t.Errorf("%s at %s: %s %s (%s) = %s, want allowed=%v", role, level, verb, obj, cur, got, want)
				}
			}
			for _, o := range objs {
				r := o.res
				cur = r.GetKind()
				// get: a hidden object is NotFound, like a missing one
				_, err := c.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: r.GetKind(), Fqn: fqns[o.res]}))
				if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
					t.Fatalf("get %s: %v", o.name, err)
				}
				check("get", o.name, codeOf(err), err == nil)
				// list: the object appears only when readable
				l, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: r.GetKind()}))
				if err != nil {
					t.Fatalf("list %s: %v", r.GetKind(), err)
				}
				listed := false
				for _, x := range l.Msg.GetResources() {
					listed = listed || x.GetMetadata().GetFqn() == fqns[o.res]
				}
				check("list", o.name, fmt.Sprint("listed=", listed), listed)
				// update: a new label
				upd := cloneRes(r)
				upd.Metadata.Labels = map[string]string{"touched": strings.ReplaceAll(role+"-"+level, "_", "-")}
				_, err = c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{upd}}))
				if err != nil && connect.CodeOf(err) != connect.CodePermissionDenied {
					t.Fatalf("update %s: %v", o.name, err)
				}
				check("update", o.name, codeOf(err), err == nil)
				// delete: allowed is done, or refused only for its descendants;
				// refused is PermissionDenied, or NotFound when it is hidden.
				_, err = c.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: r.GetKind(), Fqn: fqns[o.res]}))
				allowed := err == nil || connect.CodeOf(err) == connect.CodeFailedPrecondition
				switch {
				case allowed:
				case !may("get", o.name) && connect.CodeOf(err) != connect.CodeNotFound:
					t.Errorf("%s at %s: delete of hidden %s = %v, want NotFound", role, level, o.name, err)
				case may("get", o.name) && connect.CodeOf(err) != connect.CodePermissionDenied:
					t.Errorf("%s at %s: delete %s = %v, want PermissionDenied", role, level, o.name, err)
				}
				check("delete", o.name, codeOf(err), allowed)
				if err == nil {
					restore(r)
					apply(t, admin, binding) // deleting a node deleted the bindings on it
				}
			}
			for _, o := range matrixNew() {
				cur = o.res.GetKind()
				_, err := c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{o.res}}))
				if err != nil && connect.CodeOf(err) != connect.CodePermissionDenied {
					t.Fatalf("create %s: %v", o.name, err)
				}
				check("create", o.name, codeOf(err), err == nil)
				if err == nil {
					deleteNew(o.res)
				}
			}
			// setpolicy: grant someone else reader on the level's node.
			_, err := c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{res("AccessBinding", md("grant-"+role+"-"+level, "acme"), map[string]any{
				"target": levels[level], "allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:friend@example.com"}}}})}}))
			if err != nil && connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Fatalf("setpolicy: %v", err)
			}
			if ok := err == nil; ok != slices.Contains(roleVerbs[role], "setpolicy") {
				failures++
				t.Errorf("%s at %s: grant reader on its node = %s (%v)", role, level, codeOf(err), err)
			}
			// Nobody grants more than they hold: admin on the organization.
			if level != "organization" {
				_, err := c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{res("AccessBinding", md("up-"+role+"-"+level, "acme"), map[string]any{
					"target": levels["organization"], "allow": []any{map[string]any{"role": "admin", "subjects": []any{user}}}})}}))
				if connect.CodeOf(err) != connect.CodePermissionDenied {
					failures++
					t.Errorf("%s at %s granted itself admin on the organization: %v", role, level, err)
				}
			}
			// And nobody below admin grants itself admin where it is bound.
			_, err = c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{res("AccessBinding", md("self-"+role+"-"+level, "acme"), map[string]any{
				"target": levels[level], "allow": []any{map[string]any{"role": "admin", "subjects": []any{user}}}})}}))
			if (err == nil) != (role == "admin") {
				failures++
				t.Errorf("%s at %s: grant itself admin on its own node = %s", role, level, codeOf(err))
			}
		}
	}
	t.Logf("5 roles × 5 levels × (%d objects × get, list, update, delete + %d creates + grant and escalation): %d unexpected outcomes", len(objs), len(matrixNew()), failures)
}

func cloneRes(r *pb.Resource) *pb.Resource { return proto.Clone(r).(*pb.Resource) }

func TestTeamsServiceAccountsAndAuditAreScoped(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	var all []*pb.Resource
	for _, o := range matrixObjects() {
		all = append(all, o.res)
	}
	apply(t, s.client, all...)
	apply(t, s.client,
		res("Team", md("payments", "acme"), map[string]any{"members": []any{"carol@example.com"}, "oidcGroups": []any{"payments-eng"}}),
		res("ServiceAccount", md("g1-bot", "acme"), nil),
	)
	apply(t, s.client,
		res("AccessBinding", md("payments-editors", "acme"), map[string]any{"target": levels["workspace"], "allow": []any{map[string]any{"role": "editor", "subjects": []any{"team:payments"}}}}),
		res("AccessBinding", md("g1-bot-reader", "acme"), map[string]any{"target": levels["group"], "allow": []any{map[string]any{"role": "reader", "subjects": []any{"serviceaccount:g1-bot"}}}}),
	)
	// A member by name, and a member by the OIDC provider's group.
	for _, who := range []struct {
		subject string
		groups  []string
	}{{"user:carol@example.com", nil}, {"user:dave@example.com", []string{"payments-eng"}}} {
		c := clientFor(s.url, testauth.Token(t, s.auth, who.subject, authn.MethodOIDC, who.groups...))
		if _, err := c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{gateway("team-made", "team.example.com")}})); err != nil {
			t.Fatalf("%s (team payments, editor on w1) cannot create in w1: %v", who.subject, err)
		}
		// Another workspace, of the same tenant, is out of reach...
		_, err := c.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Workspace", Fqn: "organizations/acme/tenants/t1/workspaces/w2"}))
		_, missing := c.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Workspace", Fqn: "organizations/acme/tenants/t1/workspaces/nope"}))
		// ...and looks exactly like one that does not exist.
		if connect.CodeOf(err) != connect.CodeNotFound || strings.Replace(err.Error(), "w2", "nope", 1) != missing.Error() {
			t.Fatalf("%s: hidden workspace = %v; missing workspace = %v: they must look alike", who.subject, err, missing)
		}
		if _, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "IngressGateway", Metadata: md("team-made", "acme", "t1", "w1", "g1")})); err != nil {
			t.Fatal(err)
		}
	}
	// Someone outside the team gets nothing.
	out := clientFor(s.url, testauth.Token(t, s.auth, "user:eve@example.com", authn.MethodOIDC, "other-group"))
	if l, err := out.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "Group"})); err != nil || len(l.Msg.GetResources()) != 0 {
		t.Fatalf("an outsider lists groups: %v %v", l, err)
	}

	// A service account bound to group g1 reads g1 and nothing beside it.
	bot := clientFor(s.url, testauth.Token(t, s.auth, "serviceaccount:organizations/acme/serviceaccounts/g1-bot", authn.MethodServiceAccount))
	l, err := bot.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "Group", Parent: "organizations/acme"}))
	if err != nil || len(l.Msg.GetResources()) != 1 || l.Msg.GetResources()[0].GetMetadata().GetName() != "g1" {
		t.Fatalf("the g1 service account lists groups %v (%v), want only g1", l.Msg.GetResources(), err)
	}
	if _, err := bot.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Group", Fqn: "organizations/acme/tenants/t1/workspaces/w1/groups/g2"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("the g1 service account reads sibling g2: %v", err)
	}
	vs := "organizations/acme/tenants/t1/workspaces/w1/groups/g2/virtualservices/virtualservice"
	if _, err := s.client.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "VirtualService", Fqn: vs})); err != nil {
		t.Fatalf("g2's VirtualService: %v", err)
	}
	if _, err := bot.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "VirtualService", Fqn: vs})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("the g1 service account reads g2's VirtualService: %v", err)
	}

	// Audit: a workspace editor sees its workspace's records and no others'.
	carol := testauth.Token(t, s.auth, "user:carol@example.com", authn.MethodOIDC)
	audit := flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, s.url, testauth.Bearer(carol))
	recs, err := audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, r := range recs.Msg.GetRecords() {
		// Access bindings are shown by their target (audit_test.go checks
		// which); every other record is her workspace's.
		if !strings.HasPrefix(r.GetFqn(), levels["workspace"]) && r.GetKind() != "AccessBinding" {
			t.Errorf("carol reads an audit record outside her workspace: %s %s", r.GetOperation(), r.GetFqn())
		}
		seen++
	}
	if seen == 0 {
		t.Fatal("carol sees no audit record of her own workspace")
	}
	other, err := audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{Fqn: "organizations/acme/tenants/t2"}))
	if err != nil || len(other.Msg.GetRecords()) != 0 {
		t.Fatalf("carol reads tenant t2's audit: %v %v", other.Msg.GetRecords(), err)
	}
	// Her own writes are attributed to her, with how she logged in.
	mine, err := s.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{Kind: "IngressGateway"}))
	if err != nil {
		t.Fatal(err)
	}
	var by []string
	for _, r := range mine.Msg.GetRecords() {
		by = append(by, r.GetActor()+"/"+r.GetMethod()+"/"+r.GetOperation())
	}
	if !slices.Contains(by, "user:carol@example.com/oidc/create") || !slices.Contains(by, "user:admin/bootstrap/delete") {
		t.Fatalf("audit actors %v lack carol's create (oidc) and the administrator's delete (bootstrap)", by)
	}
}

func TestListsArePagedAndCappedAndSkipWhatTheCallerMayNotRead(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	// Groups in two workspaces; a reader is bound to one of them.
	rs := []*pb.Resource{res("Organization", md("acme"), nil), res("Tenant", md("t", "acme"), nil),
		res("Workspace", md("open", "acme", "t"), selector("open")), res("Workspace", md("closed", "acme", "t"), selector("closed"))}
	for i := range 1200 {
		ws := "open"
		if i%3 == 0 {
			ws = "closed"
		}
		g := selector(ws)
		g["type"] = "traffic"
		rs = append(rs, res("Group", md(fmt.Sprintf("g%04d", i), "acme", "t", ws), g))
	}
	apply(t, s.client, rs...)
	apply(t, s.client, res("AccessBinding", md("open-readers", "acme"), map[string]any{"target": "organizations/acme/tenants/t/workspaces/open",
		"allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:reader@example.com"}}}}))
	walk := func(c flotillav1alpha1connect.ResourceServiceClient, size int32) (pages []int, names map[string]int) {
		names = map[string]int{}
		req := &pb.ListRequest{Kind: "Group", PageSize: size}
		for range 100 {
			l, err := c.List(ctx, connect.NewRequest(req))
			if err != nil {
				t.Fatal(err)
			}
			pages = append(pages, len(l.Msg.GetResources()))
			for _, r := range l.Msg.GetResources() {
				names[r.GetMetadata().GetFqn()]++
			}
			if l.Msg.GetNextPageToken() == "" {
				return pages, names
			}
			req.PageToken = l.Msg.GetNextPageToken()
		}
		t.Fatal("more than 100 pages")
		return nil, nil
	}
	pages, names := walk(s.client, 0)
	if fmt.Sprint(pages) != "[500 500 200]" || len(names) != 1200 {
		t.Fatalf("default pages %v, %d distinct groups; want [500 500 200] and 1200", pages, len(names))
	}
	if pages, _ := walk(s.client, 5000); fmt.Sprint(pages) != "[1000 200]" {
		t.Fatalf("page_size 5000 gave pages %v; want the cap, [1000 200]", pages)
	}
	reader := clientFor(s.url, testauth.Token(t, s.auth, "user:reader@example.com", authn.MethodOIDC))
	pages, names = walk(reader, 300)
	for fqn, n := range names {
		if !strings.Contains(fqn, "/workspaces/open/") || n != 1 {
			t.Fatalf("the reader of workspace open listed %s (%d times)", fqn, n)
		}
	}
	if len(names) != 800 || pages[0] != 300 {
		t.Fatalf("the reader of workspace open listed %d groups in pages %v; want 800 in full pages", len(names), pages)
	}
	if _, err := s.client.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "Group", PageToken: "%%%"})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("a damaged page token: %v", err)
	}
}

func TestDeletesLeaveNoBindingDanglingNorComingBackToLife(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	apply(t, s.client, res("Organization", md("acme"), nil), res("Tenant", md("t", "acme"), nil),
		res("Workspace", md("w", "acme", "t"), selector("w")),
		res("Role", md("ops", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Read"}, "kinds": []any{"*"}}}}),
		res("Team", md("devs", "acme"), nil), res("ServiceAccount", md("ci", "acme"), nil))
	apply(t, s.client,
		res("AccessBinding", md("on-w", "acme"), map[string]any{"target": "organizations/acme/tenants/t/workspaces/w",
			"allow": []any{map[string]any{"role": "ops", "subjects": []any{"team:devs", "serviceaccount:ci"}}}}),
		res("AccessBinding", md("on-t", "acme"), map[string]any{"target": "organizations/acme/tenants/t",
			"allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:ann@example.com"}}}}))
	// What a binding names stays while the binding does.
	for _, k := range []struct{ kind, name string }{{"Role", "ops"}, {"Team", "devs"}, {"ServiceAccount", "ci"}} {
		_, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: k.kind, Metadata: md(k.name, "acme")}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "organizations/acme/accessbindings/on-w") {
			t.Fatalf("delete %s %s named by a binding: %v", k.kind, k.name, err)
		}
	}
	// A node goes with the bindings on it and below it.
	del, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "Tenant", Metadata: md("t", "acme"), Cascade: true}))
	if err != nil {
		t.Fatal(err)
	}
	got := del.Msg.GetDeleted()
	for _, want := range []string{"organizations/acme/accessbindings/on-w", "organizations/acme/accessbindings/on-t"} {
		if !slices.Contains(got, want) {
			t.Fatalf("deleting tenant t deleted %v, not %s", got, want)
		}
	}
	// Re-created by someone else, the names carry no old grant.
	apply(t, s.client, res("Tenant", md("t", "acme"), nil))
	ann := clientFor(s.url, testauth.Token(t, s.auth, "user:ann@example.com", authn.MethodOIDC))
	if _, err := ann.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "Tenant", Metadata: md("t", "acme")})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("ann reads the re-created tenant through the deleted tenant's binding: %v", err)
	}
	// Now unnamed, the role goes.
	if _, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "Role", Metadata: md("ops", "acme")})); err != nil {
		t.Fatalf("delete the role no binding names: %v", err)
	}
}
