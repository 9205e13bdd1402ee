package plane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/plane"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store/sqlite"
	"flotilla.io/flotilla/internal/testauth"
)

// The authorization matrix: every procedure of the API, as every built-in
// role bound at every level of the hierarchy, against the documented rules
// (docs/access.md), which model below restates. The expected outcomes are
// derived from those rules, not written out per case; a procedure with no
// rule fails the test.

// The documented rules.
var (
	rolePerms = map[string][]string{ // docs/access.md "Built-in roles"
		"admin":   {"Read", "Write", "Create", "Delete", "SetPolicy"},
		"editor":  {"Read", "Write", "Create", "Delete"},
		"creator": {"Read", "Create"},
		"writer":  {"Read", "Write"},
		"reader":  {"Read"},
	}
	identityKinds = map[string]bool{"Team": true, "ServiceAccount": true, "Role": true, "AccessBinding": true}
)

// model is one principal: a role bound on one node.
type model struct{ role, node string }

// covers: a binding holds on its node and everything below it.
func covers(node, fqn string) bool { return fqn == node || strings.HasPrefix(fqn, node+"/") }

func (m model) on(perm, fqn string) bool {
	return slices.Contains(rolePerms[m.role], perm) && covers(m.node, fqn)
}

// may is whether the principal may do perm to an object of kind at fqn:
// the identity kinds take SetPolicy for every change, a binding is judged
// on its target.
func (m model) may(perm string, o obj) bool {
	if identityKinds[o.kind] && perm != "Read" {
		perm = "SetPolicy"
	}
	return m.on(perm, o.where())
}

// holds: nobody grants more than they hold.
func (m model) holds(role, fqn string) bool {
	for _, p := range rolePerms[role] {
		if !m.on(p, fqn) {
			return false
		}
	}
	return true
}

// seesCluster: the cluster's readers, and readers of a workspace reaching it.
func (m model) seesCluster(cluster string) bool {
	if m.on("Read", cluster) {
		return true
	}
	for _, w := range []string{w1, w2} { // both select */…: they reach every cluster
		if m.on("Read", w) {
			return true
		}
	}
	return false
}

// sees namespace pay of a cluster: pay is w1's, so w1's readers.
func (m model) seesPay() bool { return m.on("Read", w1) }

func (m model) setPolicyEverywhere() bool { return m.on("SetPolicy", org) }

const (
	org = "organizations/acme"
	t1  = org + "/tenants/t1"
	w1  = t1 + "/workspaces/w1"
	w2  = t1 + "/workspaces/w2"
	g1  = w1 + "/groups/g1"
	c1  = org + "/clusters/c1"
)

var levels = []struct{ name, node string }{
	{"organization", org}, {"tenant", t1}, {"workspace", w1}, {"group", g1}, {"cluster", c1},
}

// obj is one object of the matrix.
type obj struct {
	kind, fqn string
	target    string // an AccessBinding's
	res       *pb.Resource
}

func (o obj) where() string {
	if o.target != "" {
		return o.target
	}
	return o.fqn
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

func res(kind string, m *pb.Metadata, spec map[string]any) *pb.Resource {
	s, err := structpb.NewStruct(spec)
	if err != nil {
		panic(err)
	}
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: m, Spec: s}
}

func sel(ns string) map[string]any {
	return map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/" + ns}}}
}

func group(typ, mode string) map[string]any {
	s := sel("pay")
	s["type"], s["configMode"] = typ, mode
	return s
}

func igw(name, host string) *pb.Resource {
	return res("IngressGateway", md(name, "acme", "t1", "w1", "g1"), map[string]any{
		"workloadSelector": map[string]any{"namespace": "pay", "labels": map[string]any{"istio": "ingressgateway"}},
		"http": []any{map[string]any{"name": "web", "hostname": host, "port": 80, "routing": map[string]any{"rules": []any{
			map[string]any{"route": map[string]any{"host": "pay/web.pay.svc.cluster.local", "port": 8080}}}}}},
	})
}

func vs(name string) *pb.Resource {
	r := res("VirtualService", md(name, "acme", "t1", "w1", "g2"), map[string]any{"hosts": []any{"web"},
		"http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web"}}}}}})
	r.ApiVersion, r.Metadata.Namespace = "networking.istio.io/v1", "pay"
	return r
}

func fqnOf(r *pb.Resource) string {
	m := r.GetMetadata()
	out := "organizations/" + m.GetOrganization()
	switch r.GetKind() {
	case "Organization":
		return "organizations/" + m.GetName()
	case "Cluster", "Team", "ServiceAccount", "Role", "AccessBinding", "Tenant":
		return out + "/" + map[string]string{"Cluster": "clusters", "Team": "teams", "ServiceAccount": "serviceaccounts", "Role": "roles", "AccessBinding": "accessbindings", "Tenant": "tenants"}[r.GetKind()] + "/" + m.GetName()
	}
	out += "/tenants/" + m.GetTenant()
	if r.GetKind() == "Workspace" {
		return out + "/workspaces/" + m.GetName()
	}
	out += "/workspaces/" + m.GetWorkspace()
	if r.GetKind() == "Group" {
		return out + "/groups/" + m.GetName()
	}
	if r.GetKind() == "WorkspaceSetting" {
		return out + "/workspacesettings/" + m.GetName()
	}
	k, _ := resource.Builtin().Lookup(r.GetKind())
	return out + "/groups/" + m.GetGroup() + "/" + k.Plural + "/" + m.GetName()
}

func mk(r *pb.Resource) obj {
	o := obj{kind: r.GetKind(), fqn: fqnOf(r), res: r}
	if r.GetKind() == "AccessBinding" {
		o.target = r.GetSpec().GetFields()["target"].GetStringValue()
	}
	return o
}

// existing are made by the bootstrap administrator before every principal.
func existing() []obj {
	var out []obj
	for _, r := range []*pb.Resource{
		res("Organization", md("acme"), nil),
		res("Tenant", md("t1", "acme"), nil), res("Tenant", md("t2", "acme"), nil),
		res("Workspace", md("w1", "acme", "t1"), sel("pay")), res("Workspace", md("w2", "acme", "t1"), sel("ledger")),
		res("Group", md("g1", "acme", "t1", "w1"), group("gateway", "BRIDGED")),
		res("Group", md("g2", "acme", "t1", "w1"), group("traffic", "DIRECT")),
		res("WorkspaceSetting", md("mc", "acme", "t1", "w1"), map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}}),
		igw("shop", "shop.example.com"), vs("web"),
		res("Cluster", md("c1", "acme"), nil), res("Cluster", md("c2", "acme"), nil),
		res("Team", md("devs", "acme"), map[string]any{"members": []any{"nobody@example.com"}}),
		res("ServiceAccount", md("ci", "acme"), nil),
		res("Role", md("viewer", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Read"}, "kinds": []any{"*"}}}}),
		res("AccessBinding", md("on-w2", "acme"), map[string]any{"target": w2, "allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:someone@example.com"}}}}),
	} {
		out = append(out, mk(r))
	}
	return out
}

// fresh are what a principal tries to create, one of each kind.
func fresh() []obj {
	var out []obj
	for _, r := range []*pb.Resource{
		res("Tenant", md("t9", "acme"), nil),
		res("Workspace", md("w9", "acme", "t1"), sel("other")),
		res("Group", md("g9", "acme", "t1", "w1"), group("gateway", "BRIDGED")),
		res("WorkspaceSetting", md("mc9", "acme", "t1", "w1"), map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}}}}),
		igw("shop9", "shop9.example.com"), vs("web9"),
		res("Cluster", md("c9", "acme"), nil),
		res("Team", md("ops", "acme"), nil), res("ServiceAccount", md("deploy", "acme"), nil),
		res("Role", md("auditor", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Read"}, "kinds": []any{"*"}}}}),
	} {
		out = append(out, mk(r))
	}
	return out
}

// clients of one principal.
type clients struct {
	res      flotillav1alpha1connect.ResourceServiceClient
	fleet    flotillav1alpha1connect.FleetServiceClient
	identity flotillav1alpha1connect.IdentityServiceClient
	audit    flotillav1alpha1connect.AuditServiceClient
}

func clientsFor(url, token string) clients {
	o := testauth.Bearer(token)
	return clients{
		res:      flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, url, o),
		fleet:    flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, url, o),
		identity: flotillav1alpha1connect.NewIdentityServiceClient(http.DefaultClient, url, o),
		audit:    flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, url, o),
	}
}

type running struct {
	url   string
	auth  *apiserver.Auth
	admin clients
}

func startPlane(t *testing.T) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	auth, token := testauth.New(t)
	p, err := plane.New(resource.Builtin(), st, slog.New(slog.NewTextHandler(io.Discard, nil)), plane.Config{API: []apiserver.Option{apiserver.WithAuth(auth)}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	url := "http://" + ln.Addr().String()
	return &running{url: url, auth: auth, admin: clientsFor(url, token)}
}

func (r *running) apply(t *testing.T, rs ...*pb.Resource) {
	t.Helper()
	if _, err := r.admin.res.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// applyAll writes the objects, the bindings last: a binding's target must
// exist first.
func (r *running) applyAll(t *testing.T, os []obj) {
	t.Helper()
	var first, bindings []*pb.Resource
	for _, o := range os {
		if o.kind == "AccessBinding" {
			bindings = append(bindings, o.res)
		} else {
			first = append(first, o.res)
		}
	}
	r.apply(t, first...)
	r.apply(t, bindings...)
}

// outcome is what a call did: allowed, or refused (and how).
func allowed(err error) bool { return err == nil }

// check is one expectation: what was tried, whether the rules allow it,
// and what happened.
type check struct {
	proc, what string
	want, got  bool
	err        error
}

// The procedures the matrix covers, and those it cannot by their nature.
var notByPrincipal = map[string]string{
	flotillav1alpha1connect.IdentityServiceTokenProcedure:          "takes no access token: it is how one is got (tested in internal/apiserver)",
	flotillav1alpha1connect.IdentityServiceGetLoginConfigProcedure: "takes no access token: says how to log in",
	agentv1connect.AgentServiceJoinProcedure:                       "takes a join token, not an access token (tested in internal/central)",
	agentv1connect.AgentServiceConnectProcedure:                    "takes an agent credential; every principal's token is refused (checked below)",
}

func TestEveryProcedureAsEveryRoleAtEveryLevelFollowsTheDocumentedRules(t *testing.T) {
	r := startPlane(t)
	ctx := context.Background()
	base := existing()
	r.applyAll(t, base)
	covered := map[string]bool{}
	var failures []string
	// The targets of every binding the test makes, and of those the server
	// makes for creators, for judging their audit records.
	targets := map[string]string{}
	for _, o := range append(base, fresh()...) {
		if o.target != "" {
			targets[o.fqn] = o.target
		}
		if access.IsNode(o.kind) {
			targets[org+"/accessbindings/"+access.CreatorBindingName(o.fqn)] = o.fqn
		}
	}
	for _, role := range []string{"admin", "editor", "creator", "writer", "reader"} {
		for _, level := range levels {
			m := model{role: role, node: level.node}
			user := fmt.Sprintf("user:%s-at-%s@example.com", role, level.name)
			binding := res("AccessBinding", md("b-"+role+"-"+level.name, "acme"), map[string]any{
				"target": level.node, "allow": []any{map[string]any{"role": role, "subjects": []any{user}}}})
			r.apply(t, binding)
			targets[org+"/accessbindings/b-"+role+"-"+level.name] = level.node
			for _, g := range []string{"grant", "self"} {
				targets[org+"/accessbindings/"+g+"-"+role+"-"+level.name] = level.node
			}
			targets[org+"/accessbindings/up-"+role+"-"+level.name] = org
			c := clientsFor(r.url, testauth.Token(t, r.auth, user, authn.MethodOIDC))
			var checks []check
			record := func(proc, what string, want bool, err error) {
				covered[proc] = true
				checks = append(checks, check{proc: proc, what: what, want: want, got: allowed(err), err: err})
			}
			restore := func() { // put back what an allowed call changed
				r.applyAll(t, base)
				r.apply(t, binding) // a deleted node took the bindings on it
			}

			for _, o := range base {
				// Get: a hidden object is NotFound, like a missing one.
				_, err := c.res.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: o.kind, Fqn: o.fqn}))
				record(flotillav1alpha1connect.ResourceServiceGetProcedure, "get "+o.fqn, m.may("Read", o), err)
				_, err = c.fleet.GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: o.kind, Fqn: o.fqn}))
				record(flotillav1alpha1connect.FleetServiceGetStatusProcedure, "status "+o.fqn, m.may("Read", o), err)
				if !m.may("Read", o) && connect.CodeOf(err) != connect.CodeNotFound {
					failures = append(failures, fmt.Sprintf("%s at %s: get or status of hidden %s answers %v, not NotFound", role, level.name, o.fqn, err))
				}
				// List: listed exactly when readable.
				l, err := c.res.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: o.kind}))
				if err != nil {
					t.Fatalf("list %s: %v", o.kind, err)
				}
				listed := slices.ContainsFunc(l.Msg.GetResources(), func(x *pb.Resource) bool { return x.GetMetadata().GetFqn() == o.fqn })
				record(flotillav1alpha1connect.ResourceServiceListProcedure, "list "+o.fqn, m.may("Read", o), errIf(!listed))
				// Update, planned then applied: a new label.
				upd := proto.Clone(o.res).(*pb.Resource)
				upd.Metadata.Labels = map[string]string{"touched": role + "-" + level.name}
				_, err = c.fleet.Plan(ctx, connect.NewRequest(&pb.PlanRequest{Resources: []*pb.Resource{upd}}))
				record(flotillav1alpha1connect.FleetServicePlanProcedure, "plan update "+o.fqn, m.may("Write", o), err)
				_, err = c.res.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{upd}}))
				record(flotillav1alpha1connect.ResourceServiceApplyProcedure, "update "+o.fqn, m.may("Write", o), err)
				// can-i answers as the write would be judged.
				ci, err := c.identity.CanI(ctx, connect.NewRequest(&pb.CanIRequest{Permission: "Write", Kind: o.kind, Fqn: o.fqn}))
				if err != nil {
					t.Fatalf("can-i: %v", err)
				}
				// (a binding is asked on its own FQN by can-i: SetPolicy there)
				record(flotillav1alpha1connect.IdentityServiceCanIProcedure, "can-i Write "+o.fqn, m.may("Write", obj{kind: o.kind, fqn: o.fqn}), errIf(!ci.Msg.GetAllowed()))
				// Delete: refused only for descendants (FailedPrecondition)
				// counts as allowed.
				_, err = c.res.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: o.kind, Fqn: o.fqn}))
				if connect.CodeOf(err) == connect.CodeFailedPrecondition {
					err = nil
				}
				record(flotillav1alpha1connect.ResourceServiceDeleteProcedure, "delete "+o.fqn, m.may("Delete", o), err)
				// What the principal may not read looks absent, in every
				// answer about it.
				if !m.may("Read", o) && err != nil && connect.CodeOf(err) != connect.CodeNotFound {
					failures = append(failures, fmt.Sprintf("%s at %s: delete of hidden %s answers %v, not NotFound", role, level.name, o.fqn, err))
				}
				if err == nil {
					restore()
				}
			}
			for _, o := range fresh() {
				_, err := c.fleet.Plan(ctx, connect.NewRequest(&pb.PlanRequest{Resources: []*pb.Resource{o.res}}))
				record(flotillav1alpha1connect.FleetServicePlanProcedure, "plan create "+o.fqn, m.may("Create", o), err)
				_, err = c.res.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{o.res}}))
				record(flotillav1alpha1connect.ResourceServiceApplyProcedure, "create "+o.fqn, m.may("Create", o), err)
				if err == nil {
					if _, err := r.admin.res.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: o.kind, Fqn: o.fqn, Cascade: true})); err != nil {
						t.Fatalf("clean up %s: %v", o.fqn, err)
					}
				}
			}
			// Bindings: grant reader on its node; admin on the organization;
			// itself admin on its own node.
			for _, g := range []struct {
				name, target, grant string
			}{{"grant", level.node, "reader"}, {"up", org, "admin"}, {"self", level.node, "admin"}} {
				b := res("AccessBinding", md(g.name+"-"+role+"-"+level.name, "acme"), map[string]any{
					"target": g.target, "allow": []any{map[string]any{"role": g.grant, "subjects": []any{user}}}})
				_, err := c.res.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{b}}))
				record(flotillav1alpha1connect.ResourceServiceApplyProcedure, fmt.Sprintf("bind %s on %s", g.grant, g.target), m.on("SetPolicy", g.target) && m.holds(g.grant, g.target), err)
				if err == nil {
					if _, err := r.admin.res.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "AccessBinding", Metadata: b.GetMetadata()})); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Watch: the readable objects, and nothing else.
			now, err := r.admin.res.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "Organization"}))
			if err != nil {
				t.Fatal(err)
			}
			seen := watchAll(t, c.res, now.Msg.GetRevision())
			for _, o := range base {
				record(flotillav1alpha1connect.ResourceServiceWatchProcedure, "watch sees "+o.fqn, m.may("Read", o), errIf(!seen[o.fqn]))
			}
			_, err = c.res.Kinds(ctx, connect.NewRequest(&pb.KindsRequest{}))
			record(flotillav1alpha1connect.ResourceServiceKindsProcedure, "kinds", true, err)

			// Identity.
			_, err = c.identity.WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{}))
			record(flotillav1alpha1connect.IdentityServiceWhoAmIProcedure, "whoami", true, err)
			_, err = c.identity.ListSigningKeys(ctx, connect.NewRequest(&pb.ListSigningKeysRequest{}))
			record(flotillav1alpha1connect.IdentityServiceListSigningKeysProcedure, "list signing keys", true, err)
			_, err = c.identity.RemoveSigningKey(ctx, connect.NewRequest(&pb.RemoveSigningKeyRequest{Id: "no-such-key"}))
			record(flotillav1alpha1connect.IdentityServiceRemoveSigningKeyProcedure, "remove a signing key", m.setPolicyEverywhere(), notDenied(err))
			_, err = c.identity.RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{}))
			record(flotillav1alpha1connect.IdentityServiceRotateSigningKeyProcedure, "rotate the signing key", m.setPolicyEverywhere(), err)
			// Allowed: disabled, or refused for want of another administrator.
			_, err = c.identity.DisableBootstrapCredential(ctx, connect.NewRequest(&pb.DisableBootstrapCredentialRequest{}))
			record(flotillav1alpha1connect.IdentityServiceDisableBootstrapCredentialProcedure, "disable the bootstrap credential", m.setPolicyEverywhere(), notDenied(err))
			sa := obj{kind: "ServiceAccount", fqn: org + "/serviceaccounts/ci"}
			_, err = c.identity.CreateServiceAccountKey(ctx, connect.NewRequest(&pb.CreateServiceAccountKeyRequest{Fqn: sa.fqn}))
			record(flotillav1alpha1connect.IdentityServiceCreateServiceAccountKeyProcedure, "create a key of "+sa.fqn, m.may("Write", sa), err)
			if err == nil {
				r.applyAll(t, base) // drops the key
			}

			// Fleet.
			_, err = c.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Fqn: c1}))
			record(flotillav1alpha1connect.FleetServiceOnboardProcedure, "onboard c1", m.on("Write", c1), err)
			_, err = c.fleet.RevokeCluster(ctx, connect.NewRequest(&pb.RevokeClusterRequest{Fqn: c1}))
			record(flotillav1alpha1connect.FleetServiceRevokeClusterProcedure, "revoke c1", m.on("Write", c1), err)
			_, err = c.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c1"}))
			record(flotillav1alpha1connect.FleetServiceGetCompiledProcedure, "compiled c1", m.seesCluster(c1), err)
			_, err = c.fleet.GetEffective(ctx, connect.NewRequest(&pb.GetEffectiveRequest{Cluster: "c1", Namespace: "pay"}))
			record(flotillav1alpha1connect.FleetServiceGetEffectiveProcedure, "effective c1/pay", m.seesPay(), err)
			_, err = c.fleet.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{}))
			record(flotillav1alpha1connect.FleetServiceListServicesProcedure, "services", true, err)
			clusters := watchFleetOnce(t, c.fleet)
			for _, cl := range []string{c1, org + "/clusters/c2"} {
				record(flotillav1alpha1connect.FleetServiceWatchFleetProcedure, "fleet overview shows "+cl, m.seesCluster(cl), errIf(!clusters[cl]))
			}

			// Audit: only what the principal may read, and some of it.
			recs, err := c.audit.ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			judge := func(proc string, rs []*pb.AuditRecord) {
				for _, a := range rs {
					if a.GetFqn() == "" || a.GetRefused() && a.GetActor() == user {
						continue // its own refusals are its own to read
					}
					o := obj{kind: a.GetKind(), fqn: a.GetFqn(), target: targets[a.GetFqn()]}
					record(proc, "audit record of "+a.GetFqn(), m.may("Read", o), nil)
				}
			}
			judge(flotillav1alpha1connect.AuditServiceListAuditProcedure, recs.Msg.GetRecords())
			export, err := c.audit.ExportAudit(ctx, connect.NewRequest(&pb.ExportAuditRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			exported := 0
			for export.Receive() {
				judge(flotillav1alpha1connect.AuditServiceExportAuditProcedure, export.Msg().GetRecords())
				exported += len(export.Msg().GetRecords())
			}
			if err := export.Err(); err != nil {
				t.Fatal(err)
			}
			// Something is always its to read: the principal reaches objects.
			record(flotillav1alpha1connect.AuditServiceExportAuditProcedure, "exports some record", true, errIf(exported == 0))

			// The agent stream takes no principal's token.
			if err := connectAsPrincipal(r.url, testauth.Token(t, r.auth, user, authn.MethodOIDC)); connect.CodeOf(err) != connect.CodeUnauthenticated {
				failures = append(failures, fmt.Sprintf("%s at %s: the agent stream with a user's token: %v", role, level.name, err))
			}

			for _, ch := range checks {
				if ch.got != ch.want {
					failures = append(failures, fmt.Sprintf("%s at %s: %s: allowed=%v, want %v (%v)", role, level.name, ch.what, ch.got, ch.want, ch.err))
				}
				if !ch.got && ch.err != nil && refusedWrongly(ch.err) {
					failures = append(failures, fmt.Sprintf("%s at %s: %s: refused with %v, not as a refusal", role, level.name, ch.what, ch.err))
				}
			}
		}
	}
	for _, f := range failures {
		t.Error(f)
	}
	// Every procedure of the API has a rule here, or a reason it has none.
	for _, proc := range procedures(t) {
		if !covered[proc] && notByPrincipal[proc] == "" {
			t.Errorf("procedure %s is in no row of the authorization matrix: add its rule", proc)
		}
	}
}

func errIf(bad bool) error {
	if bad {
		return errors.New("not shown")
	}
	return nil
}

// notDenied: the call was authorized (it may still fail on its input).
func notDenied(err error) error {
	if c := connect.CodeOf(err); err != nil && (c == connect.CodePermissionDenied || c == connect.CodeNotFound) {
		return err
	}
	return nil
}

// refusedWrongly reports an error that is not a refusal of the request:
// the server failed, or the input was judged before the caller.
func refusedWrongly(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false // a view's "not shown"
	}
	switch ce.Code() {
	case connect.CodePermissionDenied, connect.CodeNotFound, connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		return false
	}
	return true
}

// watchAll reads a Watch from the start until it has caught up with rev:
// which objects it shows as there.
func watchAll(t *testing.T, c flotillav1alpha1connect.ResourceServiceClient, rev int64) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Watch(ctx, connect.NewRequest(&pb.WatchRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	seen := map[string]bool{}
	for stream.Receive() {
		m := stream.Msg()
		if m.GetType() != pb.EventType_EVENT_TYPE_BOOKMARK {
			seen[m.GetResource().GetMetadata().GetFqn()] = m.GetType() == pb.EventType_EVENT_TYPE_PUT
		}
		if m.GetRevision() >= rev {
			return seen
		}
	}
	t.Fatalf("watch ended before revision %d: %v", rev, stream.Err())
	return nil
}

// watchFleetOnce is the clusters of WatchFleet's first, full message.
func watchFleetOnce(t *testing.T, c flotillav1alpha1connect.FleetServiceClient) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.WatchFleet(ctx, connect.NewRequest(&pb.WatchFleetRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("watch fleet: %v", stream.Err())
	}
	out := map[string]bool{}
	for _, s := range stream.Msg().GetClusters() {
		out[s.GetFqn()] = true
	}
	return out
}

// connectAsPrincipal opens the agent stream with a principal's token.
func connectAsPrincipal(url, token string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true) // a bidirectional stream takes HTTP/2
	c := agentv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{Protocols: protocols}}, url, testauth.Bearer(token))
	stream := c.Connect(ctx)
	defer stream.CloseResponse()
	_ = stream.Send(&agentv1.ConnectRequest{})
	_, err := stream.Receive()
	return err
}

// procedures lists every procedure of Flotilla's services.
func procedures(t *testing.T) []string {
	t.Helper()
	var out []string
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		pkg := string(fd.Package())
		if pkg != "flotilla.v1alpha1" && pkg != "flotilla.agent.v1" {
			return true
		}
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				out = append(out, "/"+string(sd.FullName())+"/"+string(sd.Methods().Get(j).Name()))
			}
		}
		return true
	})
	sort.Strings(out)
	if len(out) < 20 {
		t.Fatalf("found only %d procedures: %v", len(out), out)
	}
	return out
}
