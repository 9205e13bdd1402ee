package apiserver_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/testauth"
)

// refusedAt applies rs as c and wants a refusal naming field with want in
// its words; the store must not change.
func refusedAt(t *testing.T, s *running, c interface {
	Apply(context.Context, *connect.Request[pb.ApplyRequest]) (*connect.Response[pb.ApplyResponse], error)
}, field, want string, rs ...*pb.Resource) {
	t.Helper()
	ctx := context.Background()
	before, err := s.client.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: rs[0].GetKind()}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs}))
	if err == nil {
		t.Fatalf("applying %s %s was accepted; want a refusal at %s", rs[0].GetKind(), rs[0].GetMetadata().GetName(), field)
	}
	if !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), want) {
		t.Fatalf("applying %s %s: %v; want %s: …%s…", rs[0].GetKind(), rs[0].GetMetadata().GetName(), err, field, want)
	}
	after, err := s.client.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: rs[0].GetKind()}))
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Msg.GetResources()) != len(before.Msg.GetResources()) {
		t.Fatalf("a refused apply changed the %s list", rs[0].GetKind())
	}
}

// The review's third probe: a tenant's workspace claims the mesh's root
// namespace, where a DENY-all policy would hold for every tenant.
func TestNoWorkspaceOwnsASystemNamespace(t *testing.T) {
	s := serve(t, backends[0].open(t))
	apply(t, s.client, res("Organization", md("acme"), nil), res("Tenant", md("t1", "acme"), nil))
	apply(t, s.client, res("AccessBinding", md("t1-admin", "acme"), map[string]any{"target": "organizations/acme/tenants/t1",
		"allow": []any{map[string]any{"role": "admin", "subjects": []any{"user:tess@example.com"}}}}))
	tess := clientFor(s.url, testauth.Token(t, s.auth, "user:tess@example.com", authn.MethodOIDC))
	for _, ns := range []string{"istio-system", "flotilla-system", "flotilla-multicluster", "kube-system", "kube-*"} {
		for _, c := range []struct {
			who    string
			client interface {
				Apply(context.Context, *connect.Request[pb.ApplyRequest]) (*connect.Response[pb.ApplyResponse], error)
			}
		}{{"tenant admin", tess}, {"bootstrap administrator", s.client}} {
			t.Run(c.who+" "+ns, func(t *testing.T) {
				refusedAt(t, s, c.client, "spec.namespaceSelector.names[0]", "selects a system namespace",
					res("Workspace", md("root", "acme", "t1"), selector(ns)))
			})
		}
	}
	// A wildcard is allowed, and still never reaches a system namespace: a
	// DIRECT object there is refused.
	apply(t, tess, res("Workspace", md("all", "acme", "t1"), map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/*"}}}))
	apply(t, tess, res("Group", md("raw", "acme", "t1", "all"), map[string]any{"type": "security", "configMode": "DIRECT", "namespaceSelector": map[string]any{"names": []any{"*/*"}}}))
	deny := res("AuthorizationPolicy", md("deny-all", "acme", "t1", "all", "raw"), map[string]any{})
	deny.ApiVersion, deny.Metadata.Namespace = "security.istio.io/v1", "istio-system"
	refusedAt(t, s, tess, "metadata.namespace", "it is a system namespace", deny)
	// Nor an IngressGateway's gateway pods there.
	apply(t, tess, res("Group", md("gw", "acme", "t1", "all"), map[string]any{"type": "gateway", "namespaceSelector": map[string]any{"names": []any{"*/*"}}}))
	igw := gateway("shop", "shop.example.com")
	igw.Metadata = md("shop", "acme", "t1", "all", "gw")
	igw.Spec.Fields["workloadSelector"].GetStructValue().Fields["namespace"] = structpb.NewStringValue("istio-system")
	refusedAt(t, s, tess, "spec.workloadSelector.namespace", "it is a system namespace", igw)
}

// DIRECT objects cannot claim or reach beyond their workspace's namespaces.
func TestDirectObjectsStayInsideTheirWorkspace(t *testing.T) {
	s := serve(t, backends[0].open(t))
	apply(t, s.client, res("Organization", md("acme"), nil), res("Tenant", md("one", "acme"), nil), res("Tenant", md("two", "acme"), nil),
		res("Workspace", md("shop", "acme", "one"), selector("shop")), res("Workspace", md("billing", "acme", "two"), selector("billing")))
	apply(t, s.client, res("Group", md("raw", "acme", "one", "shop"), map[string]any{"type": "traffic", "configMode": "DIRECT", "namespaceSelector": map[string]any{"names": []any{"*/shop"}}}))
	vs := func(name string, spec map[string]any) *pb.Resource {
		r := res("VirtualService", md(name, "acme", "one", "shop", "raw"), spec)
		r.ApiVersion, r.Metadata.Namespace = "networking.istio.io/v1", "shop"
		return r
	}
	route := []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "reviews"}}}}}
	refusedAt(t, s, s.client, "spec.hosts[0]", `is a service of namespace "billing", outside this object's workspace`,
		vs("takeover", map[string]any{"hosts": []any{"ledger.billing.svc.cluster.local"}, "http": route}))
	refusedAt(t, s, s.client, "spec.exportTo[0]", "exports it to every namespace",
		vs("everywhere", map[string]any{"hosts": []any{"reviews"}, "exportTo": []any{"*"}, "http": route}))
	refusedAt(t, s, s.client, "spec.gateways[0]", "outside this object's workspace",
		vs("their-gateway", map[string]any{"hosts": []any{"shop.example.com"}, "gateways": []any{"billing/public"}, "http": route}))
	apply(t, s.client, vs("own", map[string]any{"hosts": []any{"reviews", "reviews.shop.svc.cluster.local", "shop.example.com"}, "http": route}))
}

// Overlap refusals do not name another tenant's workspace or patterns.
func TestAnOverlapWithAnotherTenantNamesNoneOfItsObjects(t *testing.T) {
	s := serve(t, backends[0].open(t))
	apply(t, s.client, res("Organization", md("acme"), nil), res("Tenant", md("one", "acme"), nil), res("Tenant", md("two", "acme"), nil),
		res("Workspace", md("secret-project", "acme", "two"), selector("ledger")))
	_, err := s.client.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{res("Workspace", md("mine", "acme", "one"), selector("ledger"))}}))
	if err == nil || !strings.Contains(err.Error(), "another tenant's workspace") || strings.Contains(err.Error(), "secret-project") || strings.Contains(err.Error(), "tenants/two") {
		t.Fatalf("an overlap with tenant two's workspace: %v", err)
	}
}

// /metrics carry every organization's state (GSLB records and addresses
// among them): a token is not enough, the caller reads every organization.
func TestMetricsAreForReadersOfEveryOrganization(t *testing.T) {
	s := serve(t, backends[0].open(t))
	apply(t, s.client, res("Organization", md("acme"), nil), res("Organization", md("zzz"), nil), res("Tenant", md("t", "acme"), nil))
	apply(t, s.client,
		res("AccessBinding", md("r", "acme"), map[string]any{"target": "organizations/acme", "allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:ops@example.com", "user:half@example.com"}}}}),
		res("AccessBinding", md("r", "zzz"), map[string]any{"target": "organizations/zzz", "allow": []any{map[string]any{"role": "reader", "subjects": []any{"user:ops@example.com"}}}}),
		res("AccessBinding", md("t", "acme"), map[string]any{"target": "organizations/acme/tenants/t", "allow": []any{map[string]any{"role": "admin", "subjects": []any{"user:tenant@example.com"}}}}))
	get := func(token string) int {
		req, _ := http.NewRequest("GET", s.url+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for who, want := range map[string]int{
		"user:ops@example.com":    http.StatusOK,        // reader of both organizations
		"user:half@example.com":   http.StatusForbidden, // of one
		"user:tenant@example.com": http.StatusForbidden, // admin of a tenant
		"user:nobody@example.com": http.StatusForbidden, // a valid token, no binding
	} {
		if got := get(testauth.Token(t, s.auth, who, authn.MethodOIDC)); got != want {
			t.Errorf("/metrics as %s = %d, want %d", who, got, want)
		}
	}
	if got := get(s.token); got != http.StatusOK {
		t.Errorf("/metrics as the bootstrap administrator = %d", got)
	}
}
