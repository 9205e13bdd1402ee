package access_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/sqlite"
)

// A real store with the tenancy of every case, written by the bootstrap
// administrator:
//
//	acme ── t1 ── w1 ── g1
//	     └─ t2 ── w2
//	SA ci: admin on the organization     team admins (boss): admin on the organization
//	SA viewer: reader on the organization team readers: reader on the organization
//	role ops {Read, Write *}: mallory on the organization (and writer too)
//	role policy {SetPolicy on Team, ServiceAccount, Role, AccessBinding}: pam on the organization, with reader
//	admin on t1: tess
type fixture struct {
	t   *testing.T
	st  store.Store
	reg *resource.Registry
	pol *authz.Cache
}

const org = "organizations/acme"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, st: st, reg: resource.Builtin(), pol: authz.NewCache()}
	boot := authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap}
	f.mustWrite(boot,
		obj("Organization", md("acme"), nil),
		obj("Tenant", md("t1", "acme"), nil), obj("Tenant", md("t2", "acme"), nil),
		obj("Workspace", md("w1", "acme", "t1"), ns("w1")), obj("Workspace", md("w2", "acme", "t2"), ns("w2")),
		obj("Group", md("g1", "acme", "t1", "w1"), map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"*/w1"}}}),
		obj("ServiceAccount", md("ci", "acme"), nil), obj("ServiceAccount", md("viewer", "acme"), nil),
		obj("Team", md("admins", "acme"), map[string]any{"members": []any{"boss@example.com"}}),
		obj("Team", md("readers", "acme"), nil),
		obj("Role", md("ops", "acme"), rules(rule([]string{"*"}, "Read", "Write"))),
		obj("Role", md("policy", "acme"), rules(rule([]string{"Team", "ServiceAccount", "Role", "AccessBinding"}, "SetPolicy"))),
		bind("ci-admin", org, "admin", "serviceaccount:ci"),
		bind("viewer-reader", org, "reader", "serviceaccount:viewer"),
		bind("admins", org, "admin", "team:admins"),
		bind("readers", org, "reader", "team:readers"),
		bind("mallory", org, "ops", "user:mallory@example.com"),
		bind("mallory-writer", org, "writer", "user:mallory@example.com"),
		bind("pam", org, "policy", "user:pam@example.com"),
		bind("pam-reader", org, "reader", "user:pam@example.com"),
		bind("tess", org+"/tenants/t1", "admin", "user:tess@example.com"),
		bind("carl", org+"/tenants/t1", "creator", "user:carl@example.com"),
	)
	return f
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

func obj(kind string, m *pb.Metadata, spec map[string]any) *pb.Resource {
	s, err := structpb.NewStruct(spec)
	if err != nil {
		panic(err)
	}
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: m, Spec: s}
}

func ns(name string) map[string]any {
	return map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + name}}}
}

func rule(kinds []string, perms ...string) any {
	return map[string]any{"permissions": toAny(perms), "kinds": toAny(kinds)}
}

func rules(rs ...any) map[string]any { return map[string]any{"rules": rs} }

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func bind(name, target, role string, subjects ...string) *pb.Resource {
	return obj("AccessBinding", md(name, "acme"), map[string]any{"target": target, "allow": []any{map[string]any{"role": role, "subjects": toAny(subjects)}}})
}

func user(name string) authn.Principal {
	return authn.Principal{Subject: "user:" + name, Method: authn.MethodOIDC}
}

// write applies rs as p, through the Guard, as the API does: it commits
// only when nothing is refused, and returns every refusal and violation.
func (f *fixture) write(p authn.Principal, rs ...*pb.Resource) []string {
	f.t.Helper()
	ctx := authn.WithPrincipal(context.Background(), p)
	objs, vs := f.reg.ParseAll(rs)
	if len(vs) > 0 {
		f.t.Fatalf("parse: %v", vs)
	}
	var out []string
	errBad := errors.New("refused")
	err := f.st.Update(ctx, access.Actor(ctx), func(tx store.Tx) error {
		chk, err := access.Checker(ctx, f.pol, tx, tx.Revision())
		if err != nil {
			return err
		}
		_, vs, _, err := f.reg.Write(ctx, tx, objs, access.Guard(chk, tx))
		if err != nil {
			return err
		}
		for _, v := range vs {
			out = append(out, v.Field+": "+v.Message)
		}
		if len(out) > 0 {
			return errBad
		}
		return nil
	})
	if err != nil && !errors.Is(err, errBad) {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) mustWrite(p authn.Principal, rs ...*pb.Resource) {
	f.t.Helper()
	if bad := f.write(p, rs...); len(bad) > 0 {
		f.t.Fatalf("write as %s: %v", p.Subject, bad)
	}
}

func (f *fixture) checker(p authn.Principal) *authz.Checker {
	f.t.Helper()
	ctx := authn.WithPrincipal(context.Background(), p)
	chk, err := access.ReadChecker(ctx, f.pol, f.st)
	if err != nil {
		f.t.Fatal(err)
	}
	return chk
}

func (f *fixture) get(fqn string) store.Record {
	f.t.Helper()
	r, err := f.st.Get(context.Background(), fqn)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

const pubPEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"

func withKey(name string) *pb.Resource {
	return obj("ServiceAccount", md(name, "acme"), map[string]any{"keys": []any{map[string]any{"id": "mine", "publicKey": pubPEM}}})
}

func refusedWith(t *testing.T, what string, got []string, want string) {
	t.Helper()
	if len(got) == 0 {
		t.Fatalf("%s: allowed, want refused with %q", what, want)
	}
	if !strings.Contains(strings.Join(got, "\n"), want) {
		t.Fatalf("%s: refused with %v, want %q", what, got, want)
	}
}

// E1 of the review: an organization writer adds its own key to a service
// account bound admin, then logs in as it.
func TestAWriterCannotGiveItselfAServiceAccountsKey(t *testing.T) {
	f := newFixture(t)
	mallory := user("mallory@example.com")
	refusedWith(t, "mallory (writer) adds a key to ci (admin)", f.write(mallory, withKey("ci")), "needs SetPolicy")
	// With SetPolicy on service accounts, but not admin where ci is:
	pam := user("pam@example.com")
	refusedWith(t, "pam (SetPolicy on identity kinds + reader) adds a key to ci (admin)", f.write(pam, withKey("ci")), "lets its holder act as service account "+org+"/serviceaccounts/ci")
	// The key command takes the same rule.
	chk := f.checker(mallory)
	if why := access.KeyGuardFull(chk, org+"/serviceaccounts/ci", "a new key"); !strings.Contains(why, "needs SetPolicy") {
		t.Fatalf("`serviceaccount key create ci` as mallory: %q", why)
	}
	if why := access.KeyGuardFull(f.checker(pam), org+"/serviceaccounts/ci", "a new key"); !strings.Contains(why, "act as service account") {
		t.Fatalf("`serviceaccount key create ci` as pam: %q", why)
	}
	// What pam holds, she may hand over: a key to the reader account.
	if bad := f.write(pam, withKey("viewer")); len(bad) > 0 {
		t.Fatalf("pam (reader on the organization) adds a key to the reader account: %v", bad)
	}
	if why := access.KeyGuardFull(f.checker(pam), org+"/serviceaccounts/viewer", "a new key"); why != "" {
		t.Fatalf("`serviceaccount key create viewer` as pam: %q", why)
	}
	// Nothing was written for the refused attempts.
	if keys := f.get(org + "/serviceaccounts/ci").Spec; strings.Contains(string(keys), "mine") {
		t.Fatalf("ci has the refused key: %s", keys)
	}
}

// E2: team membership carries the team's grants.
func TestAWriterCannotJoinAnAdminTeam(t *testing.T) {
	f := newFixture(t)
	join := func(team string, members ...string) *pb.Resource {
		return obj("Team", md(team, "acme"), map[string]any{"members": toAny(members)})
	}
	refusedWith(t, "mallory (writer) joins admins", f.write(user("mallory@example.com"), join("admins", "boss@example.com", "mallory@example.com")), "needs SetPolicy")
	pam := user("pam@example.com")
	refusedWith(t, "pam joins admins", f.write(pam, join("admins", "boss@example.com", "pam@example.com")), "adding user:pam@example.com to team "+org+"/teams/admins")
	// By OIDC group, the same.
	refusedWith(t, "pam adds her OIDC group to admins", f.write(pam, obj("Team", md("admins", "acme"), map[string]any{"members": []any{"boss@example.com"}, "oidcGroups": []any{"pams"}})), "OIDC group pams")
	if bad := f.write(pam, join("readers", "pam@example.com")); len(bad) > 0 {
		t.Fatalf("pam (reader) adds herself to the readers team: %v", bad)
	}
	// Removing members grants nothing, so it needs no more than SetPolicy.
	if bad := f.write(pam, join("admins")); len(bad) > 0 {
		t.Fatalf("pam empties the admins team: %v", bad)
	}
}

// E3: a role's rules are checked where the role is granted, when they change.
func TestARoleCannotBeWidenedBeyondWhatTheEditorHolds(t *testing.T) {
	f := newFixture(t)
	wider := obj("Role", md("ops", "acme"), rules(rule([]string{"*"}, "Read", "Write", "SetPolicy")))
	refusedWith(t, "mallory (granted ops) widens ops", f.write(user("mallory@example.com"), wider), "needs SetPolicy")
	refusedWith(t, "pam widens ops", f.write(user("pam@example.com"), wider), "role "+org+"/roles/ops is granted by "+org+"/accessbindings/mallory")
	if bad := f.write(user("boss@example.com"), wider); len(bad) > 0 {
		t.Fatalf("an organization admin (team admins) widens ops: %v", bad)
	}
	// A role nobody is granted is only SetPolicy's business.
	if bad := f.write(user("pam@example.com"), obj("Role", md("unused", "acme"), rules(rule([]string{"*"}, "SetPolicy")))); len(bad) > 0 {
		t.Fatalf("pam writes an unbound role: %v", bad)
	}
}

// E4: what bindings name cannot be deleted; a creator at the organization
// cannot make identity objects at all.
func TestNamedIdentityObjectsAreKeptAndCreatorsCannotMakeThem(t *testing.T) {
	f := newFixture(t)
	boss := f.checker(user("boss@example.com"))
	for fqn, want := range map[string]string{
		org + "/roles/ops":            org + "/accessbindings/mallory",
		org + "/teams/admins":         org + "/accessbindings/admins",
		org + "/serviceaccounts/ci":   org + "/accessbindings/ci-admin",
		org + "/roles/policy":         org + "/accessbindings/pam",
		org + "/serviceaccounts/none": "",
	} {
		rec := store.Record{FQN: fqn, Kind: map[string]string{"roles": "Role", "teams": "Team", "serviceaccounts": "ServiceAccount"}[strings.Split(fqn, "/")[2]]}
		got := access.References(boss, rec)
		if want == "" && len(got) != 0 || want != "" && !slices.Equal(got, []string{want}) {
			t.Errorf("References(%s) = %v, want %v", fqn, got, want)
		}
	}
	// Deleting identity objects takes SetPolicy.
	if ok, _ := access.CanDelete(f.checker(user("mallory@example.com")), f.get(org+"/teams/readers")); ok {
		t.Error("mallory (writer + ops) may delete a team")
	}
	carl := user("carl@example.com") // creator on t1
	tenantCreator := bind("carl-org", org, "creator", "user:carl@example.com")
	f.mustWrite(authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap}, tenantCreator)
	for _, r := range []*pb.Resource{obj("Team", md("ops", "acme"), nil), obj("ServiceAccount", md("ci2", "acme"), nil), obj("Role", md("r", "acme"), rules(rule([]string{"*"}, "Read")))} {
		refusedWith(t, "carl (creator on the organization) creates a "+r.GetKind(), f.write(carl, r), "needs SetPolicy")
	}
	// Nodes are deleted with the bindings on them and below them.
	if got := access.BindingsOn(boss, org+"/tenants/t1"); !slices.Equal(got, []string{org + "/accessbindings/carl", org + "/accessbindings/tess"}) {
		t.Errorf("bindings on t1: %v", got)
	}
}

// E5: a node's creator is its admin through a binding that can be revoked.
func TestACreatorIsAdminThroughARevocableBinding(t *testing.T) {
	f := newFixture(t)
	carl := user("carl@example.com") // creator on t1
	f.mustWrite(carl, obj("Workspace", md("w9", "acme", "t1"), ns("w9")),
		obj("Group", md("g9", "acme", "t1", "w9"), map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"*/w9"}}}))
	ws := org + "/tenants/t1/workspaces/w9"
	name := f.get(ws).Annotations[access.CreatorBindingAnnotation]
	if name != access.CreatorBindingName(ws) {
		t.Fatalf("the workspace names creator binding %q, want %q", name, access.CreatorBindingName(ws))
	}
	b := f.get(org + "/accessbindings/" + name)
	if authz.BindingTarget(b) != ws || !strings.Contains(string(b.Spec), `"role":"admin"`) || !strings.Contains(string(b.Spec), "user:carl@example.com") {
		t.Fatalf("creator binding: %s", b.Spec)
	}
	// The group made in the same request got its own, since carl was the
	// workspace's admin by then.
	if f.get(ws + "/groups/g9").Annotations[access.CreatorBindingAnnotation] == "" {
		t.Fatal("the group carl made has no creator binding")
	}
	if ok, why := f.checker(carl).Can(authz.SetPolicy, "Workspace", ws); !ok {
		t.Fatalf("carl is not admin of the workspace he made: %s", why)
	}
	// Revoked: the tenant's admin deletes the binding, and carl is only what
	// his role makes him.
	if _, err := deleteRecord(f, org+"/accessbindings/"+name); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.checker(carl).Can(authz.SetPolicy, "Workspace", ws); ok {
		t.Fatal("carl keeps admin on the workspace after his binding was deleted")
	}
	// A client cannot forge the server's annotations.
	forged := obj("Workspace", md("w8", "acme", "t1"), ns("w8"))
	forged.Metadata.Annotations = map[string]string{authz.CreatorAnnotation: "user:someone", access.CreatorBindingAnnotation: "x"}
	f.mustWrite(carl, forged)
	a := f.get(org + "/tenants/t1/workspaces/w8").Annotations
	if a[authz.CreatorAnnotation] != "user:carl@example.com" || a[access.CreatorBindingAnnotation] != access.CreatorBindingName(org+"/tenants/t1/workspaces/w8") {
		t.Fatalf("forged annotations kept: %v", a)
	}
}

func TestCreatorsOfOlderNodesGetTheirBindingOnce(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// A node as an older server wrote it: the creator only in its annotation.
	old := f.get(org + "/tenants/t2/workspaces/w2")
	old.Annotations = map[string]string{authz.CreatorAnnotation: "user:olga@example.com"}
	if err := f.st.Update(ctx, "test", func(tx store.Tx) error { _, err := tx.Put(ctx, old); return err }); err != nil {
		t.Fatal(err)
	}
	olga := user("olga@example.com")
	if ok, _ := f.checker(olga).Can(authz.Write, "Workspace", old.FQN); ok {
		t.Fatal("the creator annotation alone grants")
	}
	if n, err := access.BindCreators(ctx, f.st); err != nil || n != 1 {
		t.Fatalf("BindCreators = %d, %v; want 1", n, err)
	}
	if ok, why := f.checker(olga).Can(authz.SetPolicy, "Workspace", old.FQN); !ok {
		t.Fatalf("olga is not admin of her workspace after the migration: %s", why)
	}
	if _, err := deleteRecord(f, org+"/accessbindings/"+access.CreatorBindingName(old.FQN)); err != nil {
		t.Fatal(err)
	}
	if n, err := access.BindCreators(ctx, f.st); err != nil || n != 0 {
		t.Fatalf("a second BindCreators = %d, %v; want 0 (the revoked binding stays revoked)", n, err)
	}
}

func deleteRecord(f *fixture, fqn string) (store.Record, error) {
	var out store.Record
	err := f.st.Update(context.Background(), "test", func(tx store.Tx) error {
		var err error
		out, err = tx.Delete(context.Background(), fqn)
		return err
	})
	return out, err
}

// The review's oracles: an object the caller may not read answers as if it
// did not exist, and an etag says nothing to whoever may not change it.
func TestHiddenObjectsAnswerLikeAbsentOnes(t *testing.T) {
	f := newFixture(t)
	tess := user("tess@example.com") // admin on t1 only
	hidden := obj("Workspace", md("w2", "acme", "t2"), ns("w2"))
	hidden.Metadata.Etag = "x"
	absent := obj("Workspace", md("w7", "acme", "t2"), ns("w7"))
	absent.Metadata.Etag = "x"
	got, want := f.write(tess, hidden), f.write(tess, absent)
	if len(got) != 1 || len(want) != 1 || strings.ReplaceAll(got[0], "w2", "w7") != want[0] {
		t.Fatalf("a hidden workspace answers %v; an absent one %v: they must read alike", got, want)
	}
	if etag := f.get(org + "/tenants/t2/workspaces/w2").ETag; strings.Contains(got[0], etag) {
		t.Fatalf("the refusal carries the hidden object's etag: %v", got)
	}
}

func TestCanAnswersIdentityKindsWithSetPolicy(t *testing.T) {
	f := newFixture(t)
	mallory := f.checker(user("mallory@example.com"))
	if ok, _ := access.Can(mallory, authz.Write, "Team", org+"/teams/admins"); ok {
		t.Error("can-i says mallory (writer) may write a team")
	}
	if ok, _ := access.Can(mallory, authz.Write, "Tenant", org+"/tenants/t1"); !ok {
		t.Error("can-i says mallory (writer) may not write a tenant")
	}
	if ok, _ := access.Can(mallory, authz.Read, "Team", org+"/teams/admins"); !ok {
		t.Error("can-i says mallory (reader of the organization) may not read a team")
	}
}
