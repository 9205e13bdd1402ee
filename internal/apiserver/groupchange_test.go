package apiserver_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/store"
)

func TestAGroupChangeThatWouldStrandOrPruneItsResourcesIsRefused(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		r := serve(t, st)
		ctx := context.Background()
		group := func(mode string, names ...any) *pb.Resource {
			return res("Group", &pb.Metadata{Name: "gw", Organization: "acme", Tenant: "fin", Workspace: "pay"}, map[string]any{"type": "gateway", "configMode": mode, "namespaceSelector": map[string]any{"names": names}})
		}
		rs := tenancy()
		rs[3] = group("BRIDGED", "*/pay")
		apply(t, r.client, rs...)
		apply(t, r.client, res("IngressGateway", &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "fin", Workspace: "pay", Group: "gw"}, map[string]any{
			"workloadSelector": map[string]any{"namespace": "pay", "labels": map[string]any{"istio": "ingressgateway"}},
			"http":             []any{map[string]any{"name": "web", "hostname": "shop.example.com", "port": 80, "routing": map[string]any{"rules": []any{map[string]any{"route": map[string]any{"host": "pay/web.pay.svc.cluster.local", "port": 8080}}}}}},
		}))
		before := snapshot(t, st)
		for _, tc := range []struct {
			name  string
			group *pb.Resource
			force bool
			field string
			says  string
		}{
			{"a mode its IngressGateway cannot live in", group("DIRECT", "*/pay"), false, "spec.configMode", "IngressGateway shop"},
			{"the same, even forced", group("DIRECT", "*/pay"), true, "spec.configMode", "delete or move them first"},
			{"a narrower selector without --force", group("BRIDGED", "c1/pay"), false, "spec.namespaceSelector.names", "--force"},
		} {
			_, err := r.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{tc.group}, Force: tc.force}))
			vs := violationsOf(t, err)
			if len(vs) != 1 || vs[0].GetField() != tc.field || !strings.Contains(vs[0].GetMessage(), tc.says) {
				t.Fatalf("%s: got %v", tc.name, err)
			}
			if snapshot(t, st) != before {
				t.Fatalf("%s: the refused change wrote something", tc.name)
			}
		}
		// Widening needs nothing; narrowing with force goes through.
		apply(t, r.client, group("BRIDGED", "*/pay", "c9/pay"))
		out, err := r.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{group("BRIDGED", "c1/pay")}, Force: true}))
		if err != nil || out.Msg.GetResults()[0].GetOutcome() != pb.Outcome_OUTCOME_CONFIGURED {
			t.Fatalf("a forced narrowing: %v %v", out, err)
		}
	})
}
