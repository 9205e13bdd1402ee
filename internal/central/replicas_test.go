package central

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
)

// Two replicas on one PostgreSQL, each serving one cluster's agent, answer
// plan, get compiled and get effective identically for both clusters after
// every step of a random workload: intent written through either replica,
// and inventories (namespaces, the clusters' own DestinationRules and
// namespace-wide policies, which change what Flotilla writes) reported to
// the replica each agent talks to.
func TestTwoReplicasAnswerPlanCompiledAndEffectiveAlikeUnderARandomWorkload(t *testing.T) {
	url := pgtest.NewDatabase(t)
	replicas := []*harness{startOn(t, url, Shared()), startOn(t, url, Shared())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mk := func(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
		s, err := structpb.NewStruct(spec)
		if err != nil {
			t.Fatal(err)
		}
		return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
	}
	ws := func(name string) *pb.Metadata {
		return &pb.Metadata{Name: name, Organization: "acme", Tenant: "t", Workspace: "shop"}
	}
	route := func(svc string, v1 int) *pb.Resource {
		md := ws(svc)
		md.Group = "routes"
		return mk("ServiceRoute", md, map[string]any{"service": "shop/" + svc, "subsets": []any{
			map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}, "weight": v1},
			map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}, "weight": 100 - v1},
		}})
	}
	base := []*pb.Resource{
		mk("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		mk("Workspace", &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": map[string]any{"names": []any{"*/shop", "*/other"}}}),
		mk("Group", ws("routes"), map[string]any{"type": "traffic", "namespaceSelector": map[string]any{"names": []any{"*/shop"}}}),
	}
	if _, err := replicas[0].api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: base})); err != nil {
		t.Fatal(err)
	}
	agents := []*fakeAgent{replicas[0].fakeAgent(t, ctx, "c1"), replicas[1].fakeAgent(t, ctx, "c2")}

	rng := rand.New(rand.NewPCG(7, 22))
	services := []string{"s0", "s1", "s2", "s3"}
	for step := range 24 {
		h := replicas[rng.IntN(2)]
		var did string
		switch op := rng.IntN(4); op {
		case 0, 1:
			svc, v1 := services[rng.IntN(len(services))], 10*rng.IntN(11)
			did = fmt.Sprintf("route %s %d/%d", svc, v1, 100-v1)
			if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{route(svc, v1)}})); err != nil {
				t.Fatalf("step %d: %s: %v", step, did, err)
			}
		case 2:
			mode := []string{"STRICT", "PERMISSIVE"}[rng.IntN(2)]
			did = "workspace mTLS " + mode
			setting := mk("WorkspaceSetting", ws("defaults"), map[string]any{"defaultSecuritySetting": map[string]any{"mtlsMode": mode}})
			if _, err := h.api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{setting}})); err != nil {
				t.Fatalf("step %d: %s: %v", step, did, err)
			}
		case 3:
			i := rng.IntN(len(agents))
			inv := &agentv1.Inventory{Full: true, ClusterPolicies: &agentv1.ClusterPolicies{DestinationRules: map[string]string{}, NamespaceWide: map[string]string{}}}
			for _, ns := range []string{"shop", "other", "extra"} {
				if ns == "shop" || rng.IntN(2) == 0 {
					inv.Namespaces = append(inv.Namespaces, &agentv1.Namespace{Name: ns})
				}
			}
			for _, svc := range services {
				if rng.IntN(3) == 0 {
					inv.ClusterPolicies.DestinationRules[svc+".shop.svc.cluster.local"] = "shop/own-" + svc
				}
			}
			if rng.IntN(2) == 0 {
				inv.ClusterPolicies.NamespaceWide["PeerAuthentication/shop"] = "shop/own-mtls"
			}
			did = fmt.Sprintf("c%d reports %d namespaces and %d policies", i+1, len(inv.Namespaces), len(inv.ClusterPolicies.DestinationRules)+len(inv.ClusterPolicies.NamespaceWide))
			if err := agents[i].stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inv}}); err != nil {
				t.Fatal(err)
			}
		}
		alike(t, ctx, replicas, fmt.Sprintf("step %d (%s)", step, did), route("s0", 50))
	}
}

// alike waits until every replica answers get compiled, get effective (of
// namespace shop) and the plan of planned identically for c1 and c2, for
// at most 10 s.
func alike(t *testing.T, ctx context.Context, replicas []*harness, when string, planned *pb.Resource) {
	t.Helper()
	answers := func(h *harness) ([]proto.Message, error) {
		var out []proto.Message
		for _, c := range []string{"c1", "c2"} {
			compiled, err := h.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: c}))
			if err != nil {
				return nil, err
			}
			effective, err := h.fleet.GetEffective(ctx, connect.NewRequest(&pb.GetEffectiveRequest{Cluster: c, Namespace: "shop"}))
			if err != nil {
				return nil, err
			}
			out = append(out, compiled.Msg, effective.Msg)
		}
		plan, err := h.fleet.Plan(ctx, connect.NewRequest(&pb.PlanRequest{Resources: []*pb.Resource{planned}}))
		if err != nil {
			return nil, err
		}
		// The per-cluster changes; the results carry the time of the call.
		return append(out, &pb.PlanResponse{Clusters: plan.Msg.GetClusters()}), nil
	}
	deadline := time.Now().Add(10 * time.Second)
	var diff string
	for time.Now().Before(deadline) {
		first, err := answers(replicas[0])
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		diff = ""
		for i, h := range replicas[1:] {
			other, err := answers(h)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			for j := range first {
				if !proto.Equal(first[j], other[j]) {
					diff = fmt.Sprintf("replica 0 answers\n%s\nreplica %d answers\n%s", prototext.Format(first[j]), i+1, prototext.Format(other[j]))
					break
				}
			}
		}
		if diff == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: the replicas answer differently for 10 s:\n%s", when, diff)
}
