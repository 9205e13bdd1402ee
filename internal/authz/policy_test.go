package authz

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
)

const org = "organizations/acme"

func rec(kind, fqn string, spec any) store.Record {
	b, err := json.Marshal(spec)
	if err != nil {
		panic(err)
	}
	return store.Record{Kind: kind, FQN: fqn, Name: fqn[strings.LastIndex(fqn, "/")+1:], Spec: b}
}

type allow = map[string]any

func bindingRec(name, target string, rules ...allow) store.Record {
	return rec(KindAccessBinding, org+"/accessbindings/"+name, map[string]any{"target": target, "allow": rules})
}

func rule(role string, subjects ...string) allow { return allow{"role": role, "subjects": subjects} }

func roleRec(name string, rules ...allow) store.Record {
	return rec(KindRole, org+"/roles/"+name, map[string]any{"rules": rules})
}

func perms(kinds []string, ps ...string) allow { return allow{"permissions": ps, "kinds": kinds} }

var any_ = []string{AnyKind}

func policy(t *testing.T, recs ...store.Record) *Policy {
	t.Helper()
	p, err := NewPolicy(recs)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func user(name string) authn.Principal {
	return authn.Principal{Subject: "user:" + name, Method: authn.MethodOIDC}
}

const (
	tenant    = org + "/tenants/t1"
	workspace = tenant + "/workspaces/w1"
	group     = workspace + "/groups/g1"
	gateway   = group + "/ingressgateways/shop"
	other     = org + "/tenants/t2/workspaces/w2"
)

func TestABindingHoldsOnItsNodeAndBelowAndNowhereElse(t *testing.T) {
	p := policy(t, bindingRec("w", workspace, rule("editor", "user:carol@example.com")))
	c := p.For(user("carol@example.com"))
	for _, tc := range []struct {
		perm Permission
		fqn  string
		want bool
	}{
		{Write, workspace, true},
		{Write, group, true},
		{Delete, gateway, true},
		{SetPolicy, workspace, false},  // editor has no SetPolicy
		{Read, tenant, false},          // not above the binding
		{Read, other, false},           // not beside it
		{Read, workspace + "x", false}, // a name that only starts the same
	} {
		if got, why := c.Can(tc.perm, "IngressGateway", tc.fqn); got != tc.want {
			t.Errorf("Can(%s, %s) = %v (%s), want %v", tc.perm, tc.fqn, got, why, tc.want)
		}
	}
}

func TestNothingButABindingGrants(t *testing.T) {
	// No creator, no matching name: a principal named like the bootstrap
	// administrator but not authenticated by the bootstrap credential holds
	// nothing.
	p := policy(t)
	impostor := authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodOIDC}
	if ok, _ := p.For(impostor).Can(Read, "Tenant", tenant); ok {
		t.Fatal("an OIDC identity named user:admin reads as the bootstrap administrator")
	}
	boot := authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap}
	if ok, _ := p.For(boot).Can(SetPolicy, "Tenant", tenant); !ok {
		t.Fatal("the bootstrap administrator lacks SetPolicy")
	}
}

func TestTeamsGrantByMemberAndByOIDCGroup(t *testing.T) {
	p := policy(t,
		rec(KindTeam, org+"/teams/pay", map[string]any{"members": []string{"carol@example.com"}, "oidcGroups": []string{"pay-eng"}}),
		bindingRec("b", workspace, rule("reader", "team:pay")))
	carol := p.For(user("carol@example.com"))
	dave := p.For(authn.Principal{Subject: "user:dave@example.com", Method: authn.MethodOIDC, Groups: []string{"pay-eng"}})
	eve := p.For(authn.Principal{Subject: "user:eve@example.com", Method: authn.MethodOIDC, Groups: []string{"other"}})
	for name, c := range map[string]*Checker{"member": carol, "group member": dave} {
		if ok, why := c.Can(Read, "Group", group); !ok {
			t.Errorf("%s cannot read through the team: %s", name, why)
		}
	}
	if ok, _ := eve.Can(Read, "Group", group); ok {
		t.Error("an outsider reads through the team")
	}
}

func TestHoldsAsksForEveryPermissionOfTheRole(t *testing.T) {
	p := policy(t,
		roleRec("ops", perms(any_, "Read", "Write")),
		bindingRec("b", org, rule("ops", "user:pam@example.com")))
	pam := p.For(user("pam@example.com"))
	if ok, why := pam.Holds(builtin["writer"], workspace); !ok {
		t.Errorf("pam (Read+Write at the org) does not hold writer on a workspace: %s", why)
	}
	ok, why := pam.Holds(builtin["admin"], workspace)
	if ok || !strings.Contains(why, "nobody can grant more than they hold") {
		t.Errorf("pam holds admin: %v %s", ok, why)
	}
}

func TestGrantsAreFoundBySubjectAndByRole(t *testing.T) {
	p := policy(t,
		roleRec("ops", perms(any_, "Read")),
		bindingRec("a", org, rule("admin", "serviceaccount:ci", "team:admins")),
		bindingRec("b", workspace, rule("ops", "serviceaccount:"+org+"/serviceaccounts/ci"), rule("reader", "user:x@example.com")))
	names := func(gs []Grant) (out []string) {
		for _, g := range gs {
			out = append(out, strings.TrimPrefix(g.Binding, org+"/accessbindings/")+":"+g.RoleRef)
		}
		return out
	}
	// Short and FQN forms of a subject are one subject.
	if got := names(p.GrantsTo("serviceaccount:" + org + "/serviceaccounts/ci")); !slices.Equal(got, []string{"a:admin", "b:ops"}) {
		t.Errorf("grants to the service account: %v", got)
	}
	if got := names(p.GrantsTo(TeamSubject(org + "/teams/admins"))); !slices.Equal(got, []string{"a:admin"}) {
		t.Errorf("grants to the team: %v", got)
	}
	if got := names(p.GrantsOfRole(org + "/roles/ops")); !slices.Equal(got, []string{"b:ops"}) {
		t.Errorf("grants of role ops: %v", got)
	}
	if got := names(p.GrantsOfRole("organizations/zzz/roles/ops")); len(got) != 0 {
		t.Errorf("another organization's role ops is granted by %v", got)
	}
	if got := p.BindingsOnOrBelow(tenant); !slices.Equal(got, []string{org + "/accessbindings/b"}) {
		t.Errorf("bindings on or below the tenant: %v", got)
	}
}

func TestHoldsGrantsChecksEachGrantOnItsOwnTarget(t *testing.T) {
	p := policy(t,
		bindingRec("pam", workspace, rule("admin", "user:pam@example.com")),
		bindingRec("bot-ws", workspace, rule("editor", "serviceaccount:bot")),
		bindingRec("bot-org", org, rule("reader", "serviceaccount:bot")))
	pam := p.For(user("pam@example.com"))
	gs := p.GrantsTo("serviceaccount:" + org + "/serviceaccounts/bot")
	ok, why := pam.HoldsGrants(gs)
	if ok || !strings.Contains(why, "bot-org") {
		t.Fatalf("pam (admin of the workspace only) holds the account's reader on the organization: %v %s", ok, why)
	}
	if ok, why := pam.HoldsGrants(gs[1:]); !ok { // bot-ws only
		t.Fatalf("pam does not hold editor on her own workspace: %s", why)
	}
}

func TestWhatAWriteAddsIsTheNewMembersAndKeys(t *testing.T) {
	team := func(members ...string) store.Record {
		return rec(KindTeam, org+"/teams/t", map[string]any{"members": members})
	}
	old := team("a@example.com")
	for _, tc := range []struct {
		now  store.Record
		old  *store.Record
		want string
	}{
		{team("a@example.com"), &old, ""},
		{team(), &old, ""}, // removing adds nobody
		{team("user:a@example.com", "b@example.com"), &old, "user:b@example.com"},
		{team("a@example.com"), nil, "user:a@example.com"},
	} {
		if got, err := TeamAdds(tc.now, tc.old); err != nil || got != tc.want {
			t.Errorf("TeamAdds = %q, %v; want %q", got, err, tc.want)
		}
	}
	sa := func(keys ...string) store.Record {
		var ks []map[string]string
		for _, k := range keys {
			ks = append(ks, map[string]string{"id": k, "publicKey": "pem-" + k})
		}
		return rec(KindServiceAccount, org+"/serviceaccounts/ci", map[string]any{"keys": ks})
	}
	was := sa("k1")
	if got, _ := ServiceAccountAddsKeys(sa("k1"), &was); got != "" {
		t.Errorf("an unchanged key set adds %q", got)
	}
	if got, _ := ServiceAccountAddsKeys(sa("k1", "k2"), &was); got != `key "k2"` {
		t.Errorf("a second key adds %q", got)
	}
	// The same id with another public key is a new key.
	swapped := rec(KindServiceAccount, org+"/serviceaccounts/ci", map[string]any{"keys": []map[string]string{{"id": "k1", "publicKey": "mine"}}})
	if got, _ := ServiceAccountAddsKeys(swapped, &was); got != `key "k1"` {
		t.Errorf("a key replaced under the same id adds %q", got)
	}
}
