package apiserver_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/store"
)

// settingsTenancy is an organization with a tenant, a workspace of two
// namespaces and a traffic and a security group.
func settingsTenancy() []*pb.Resource {
	group := func(name, typ, ns string) *pb.Resource {
		s := selector(ns)
		s["type"] = typ
		return res("Group", md(name, "acme", "t1", "w1"), s)
	}
	return []*pb.Resource{
		res("Organization", md("acme"), nil),
		res("Tenant", md("t1", "acme"), nil),
		res("Workspace", md("w1", "acme", "t1"), map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/pay", "*/shop"}}}),
		res("Workspace", md("w2", "acme", "t1"), selector("web")),
		group("net", "traffic", "pay"),
		group("net2", "traffic", "pay"),
		group("sec", "security", "pay"),
		group("sec2", "security", "pay"),
		group("gw", "gateway", "pay"),
	}
}

// Each semantic mistake in a setting or route is refused at apply time with
// its field and reason, and the store is left as it was.
func TestSettingsWithSemanticErrorsAreRefusedWithTheirFieldAndNothingChanges(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		apply(t, s.client, settingsTenancy()...)
		apply(t, s.client,
			res("OrganizationSetting", md("defaults", "acme"), map[string]any{"defaultSecuritySetting": map[string]any{
				"mtlsMode": "STRICT", "authorization": map[string]any{"mode": "NAMESPACE"}, "propagationStrategy": "STRICTER"}}),
			res("SecuritySetting", md("first", "acme", "t1", "w1", "sec"), map[string]any{"jwt": []any{map[string]any{"issuer": "a", "jwksUri": "https://a/jwks"}}}),
		)
		route := func(spec map[string]any) *pb.Resource {
			return res("ServiceRoute", md("reviews", "acme", "t1", "w1", "net"), spec)
		}
		subsets := func(w1, w2 int) []any {
			return []any{
				map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}, "weight": w1},
				map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}, "weight": w2},
			}
		}
		cases := []struct {
			name        string
			res         *pb.Resource
			field, want string
		}{
			{"weights that do not sum to 100", route(map[string]any{"service": "pay/reviews", "subsets": subsets(90, 20)}),
				"spec.subsets", "sum to 110, not 100"},
			{"an unknown subset", route(map[string]any{"service": "pay/reviews", "subsets": subsets(50, 50),
				"httpRoutes": []any{map[string]any{"destination": []any{map[string]any{"subset": "v3"}}}}}),
				"spec.httpRoutes[0].destination[0].subset", `unknown subset "v3"`},
			{"a service outside the group", route(map[string]any{"service": "shop/reviews"}),
				"spec.service", `namespace "shop" is not selected by group`},
			{"a route in a security group", res("ServiceRoute", md("r", "acme", "t1", "w1", "sec"), map[string]any{"service": "pay/reviews"}),
				"metadata.group", "lives in a traffic group in BRIDGED mode"},
			{"a timeout of zero", res("TrafficSetting", md("t", "acme", "t1", "w1", "net"), map[string]any{"resilience": map[string]any{"timeout": "0s"}}),
				"spec.resilience.timeout", "must be more than zero"},
			{"retries beyond the timeout budget", res("TrafficSetting", md("t", "acme", "t1", "w1", "net"), map[string]any{"resilience": map[string]any{
				"timeout": "2s", "retries": map[string]any{"attempts": 3, "perTryTimeout": "1s"}}}),
				"spec.resilience.retries", "beyond the timeout budget of 2s"},
			{"rules with a mode other than RULES", res("SecuritySetting", md("s", "acme", "t1", "w1", "sec"), map[string]any{"authorization": map[string]any{
				"mode": "NAMESPACE", "rules": map[string]any{"allow": []any{map[string]any{"from": "organizations/acme", "to": "organizations/acme"}}}}}),
				"spec.authorization.rules", "rules conflict with mode NAMESPACE"},
			{"conflicting modes at the same level", res("SecuritySetting", md("other", "acme", "t1", "w1", "sec2"), map[string]any{
				"jwt": []any{map[string]any{"issuer": "b", "jwksUri": "https://b/jwks"}}}),
				"spec.jwt", "conflicts with organizations/acme/tenants/t1/workspaces/w1/groups/sec/securitysettings/first"},
			{"an FQN that does not exist", res("WorkspaceSetting", md("rules", "acme", "t1", "w1"), map[string]any{"defaultSecuritySetting": map[string]any{
				"authorization": map[string]any{"mode": "RULES", "rules": map[string]any{"allow": []any{map[string]any{
					"from": "organizations/acme/tenants/t1/workspaces/nope", "to": "organizations/acme/tenants/t1/workspaces/w1"}}}}}}),
				"spec.defaultSecuritySetting.authorization.rules.allow[0].from", "organizations/acme/tenants/t1/workspaces/nope does not exist"},
			{"relaxing a STRICTER default", res("WorkspaceSetting", md("relax", "acme", "t1", "w1"), map[string]any{"defaultSecuritySetting": map[string]any{"mtlsMode": "PERMISSIVE"}}),
				"spec.defaultSecuritySetting.mtlsMode", "organizations/acme/organizationsettings/defaults (organization level) set STRICTER: PERMISSIVE is weaker than STRICT"},
			{"relaxing it from a group", res("SecuritySetting", md("open", "acme", "t1", "w1", "sec"), map[string]any{"authorization": map[string]any{"mode": "CLUSTER"}}),
				"spec.authorization", "mode CLUSTER allows more callers than NAMESPACE"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) { refusedWith(t, s.client, st, c.res, c.field, c.want) })
		}
		// What is as strict as the limit, or stricter, is accepted.
		apply(t, s.client,
			res("WorkspaceSetting", md("strict", "acme", "t1", "w1"), map[string]any{"defaultSecuritySetting": map[string]any{"mtlsMode": "STRICT"}}),
			res("ServiceRoute", md("reviews", "acme", "t1", "w1", "net"), map[string]any{"service": "pay/reviews", "subsets": subsets(90, 10)}),
		)
	})
}

// refusedWith applies r and requires it refused as InvalidArgument with a
// violation at field whose message holds want, and the store unchanged.
func refusedWith(t *testing.T, client flotillav1alpha1connect.ResourceServiceClient, st store.Store, r *pb.Resource, field, want string) {
	t.Helper()
	before := snapshot(t, st)
	_, err := client.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("apply: %v, want InvalidArgument", err)
	}
	found := false
	for _, v := range violationsOf(t, err) {
		if v.GetField() == field && strings.Contains(v.GetMessage(), want) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no violation at %s saying %q: %v", field, want, violationsOf(t, err))
	}
	if after := snapshot(t, st); after != before {
		t.Fatal("a refused apply changed the store")
	}
}
