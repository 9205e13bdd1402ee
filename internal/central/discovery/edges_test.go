package discovery

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

func put(t *testing.T, e *edges, kind, fqn, parent string, spec proto.Message) bool {
	t.Helper()
	raw, err := protojson.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := e.apply(store.Event{Type: store.EventPut, Record: store.Record{Kind: kind, FQN: fqn, Parent: parent, Spec: raw}})
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

// The edge slice of an edge cluster lists, per server, the ingress
// gateways of the clusters that publish its hostname, with their region
// and address; leaves drained clusters and those without a ready gateway
// out; says why a cluster without an address is not a target; marks the
// next local hop; and keeps an explicit list's weights.
func TestEdgeSliceTargetsThePublishingClustersIngressGateways(t *testing.T) {
	const org = "organizations/acme"
	ws := org + "/tenants/t/workspaces/w"
	e := newEdges()
	regions := map[string]string{"edge": "eu", "c1": "eu", "c2": "us", "c3": "us", "c4": "us", "c5": "ap"}
	for name, region := range regions {
		put(t, &e, resource.KindCluster, org+"/clusters/"+name, org, &pb.ClusterSpec{Region: region, Drained: name == "c3"})
	}
	put(t, &e, resource.KindIngressGateway, ws+"/groups/ingress/ingressgateways/shop", ws+"/groups/ingress", &pb.IngressGatewaySpec{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "ingress", Labels: map[string]string{"istio": "ingressgateway", "app": "gw"}},
		Http:             []*pb.HTTPServer{{Name: "web", Hostname: "shop.example.com", Port: 443, Tls: &pb.ServerTLS{Mode: "SIMPLE", SecretName: "x"}}},
	})
	put(t, &e, resource.KindEdgeGateway, ws+"/groups/edge/edgegateways/front", ws+"/groups/edge", &pb.EdgeGatewaySpec{
		ExternalServers: []*pb.ExternalServer{
			{Name: "auto", Hostname: "shop.example.com", Port: 443},
			{Name: "list", Hostname: "shop.example.com", Port: 443, Clusters: []*pb.ClusterWeight{{Name: "c2", Weight: 7}, {Name: "edge", Weight: 1}}},
		},
	})
	clusters := map[string]clusterRef{}
	for name := range regions {
		clusters[org+"/clusters/"+name] = clusterRef{name: name, org: org}
	}
	reach := map[string]map[string]bool{
		ws + "/groups/ingress": {org + "/clusters/c1": true, org + "/clusters/c2": true, org + "/clusters/c3": true, org + "/clusters/c4": true, org + "/clusters/c5": true},
		ws + "/groups/edge":    {org + "/clusters/edge": true},
	}
	gw := func(cluster, address string, ready uint32) registry.Instance {
		return registry.Instance{Cluster: org + "/clusters/" + cluster, Ready: ready, Address: address, Selector: map[string]string{"istio": "ingressgateway"},
			Localities: []*agentv1.LocalityEndpoints{{Region: "node-" + regions[cluster], Ready: ready}}}
	}
	services := []registry.Service{{Namespace: "ingress", Name: "ingressgateway", Instances: []registry.Instance{
		gw("c1", "10.0.0.1", 2), gw("c2", "10.0.0.2", 1), gw("c3", "10.0.0.3", 1), gw("c4", "", 1), gw("c5", "10.0.0.5", 0),
	}}}
	var out map[string][]bundle.EdgeServer
	out = e.compute(clusters, func(g string) map[string]bool { return reach[g] }, services)
	if len(out) != 1 || out[org+"/clusters/edge"] == nil {
		t.Fatalf("slices for %v, want the edge cluster's only", out)
	}
	got, _ := json.MarshalIndent(out[org+"/clusters/edge"], "", " ")
	var edges []bundle.EdgeServer
	_ = json.Unmarshal(got, &edges)
	if len(edges) != 2 {
		t.Fatalf("edges %s", got)
	}
	auto, list := edges[0], edges[1]
	want := []bundle.EdgeTarget{
		{Cluster: "c1", Address: "10.0.0.1", Port: 443, TLS: true, Region: "eu", Local: true},
		{Cluster: "c2", Address: "10.0.0.2", Port: 443, TLS: true, Region: "us"},
	}
	if len(auto.Targets) != 2 || auto.Targets[0] != want[0] || auto.Targets[1] != want[1] || auto.Weighted {
		t.Fatalf("auto targets %+v, want %+v", auto, want)
	}
	if len(auto.Problems) != 1 || !strings.Contains(auto.Problems[0], "cluster c4's ingress gateway Service ingress/ingressgateway has no address") {
		t.Fatalf("auto problems %q", auto.Problems)
	}
	if !list.Weighted || len(list.Targets) != 1 || list.Targets[0].Cluster != "c2" || list.Targets[0].Weight != 7 || list.Targets[0].Local {
		t.Fatalf("list %+v", list)
	}
	if len(list.Problems) != 1 || !strings.Contains(list.Problems[0], "cluster edge publishes shop.example.com on no IngressGateway") {
		t.Fatalf("list problems %q", list.Problems)
	}

	// Undraining c3 is a change; writing the same spec again is not.
	if !put(t, &e, resource.KindCluster, org+"/clusters/c3", org, &pb.ClusterSpec{Region: "us"}) {
		t.Fatal("undrain is not a change")
	}
	if put(t, &e, resource.KindCluster, org+"/clusters/c3", org, &pb.ClusterSpec{Region: "us"}) {
		t.Fatal("the same cluster spec again is a change")
	}
	out = e.compute(clusters, func(g string) map[string]bool { return reach[g] }, services)
	if ts := out[org+"/clusters/edge"][0].Targets; len(ts) != 3 || ts[2].Cluster != "c3" {
		t.Fatalf("after undrain: %+v", ts)
	}

	// c2's owner declares its addresses are in 10.9.0.0/16: the address
	// its agent reports is outside, so c2 is no target, and the problem
	// says why.
	if !put(t, &e, resource.KindCluster, org+"/clusters/c2", org, &pb.ClusterSpec{Region: "us", AddressRanges: []string{"10.9.0.0/16"}}) {
		t.Fatal("new address ranges are not a change")
	}
	out = e.compute(clusters, func(g string) map[string]bool { return reach[g] }, services)
	auto = out[org+"/clusters/edge"][0]
	for _, tg := range auto.Targets {
		if tg.Cluster == "c2" {
			t.Errorf("c2 is a target at %s, outside its declared ranges", tg.Address)
		}
	}
	if !slices.ContainsFunc(auto.Problems, func(p string) bool {
		return strings.Contains(p, "cluster c2 reports its ingress gateway Service ingress/ingressgateway at 10.0.0.2, outside the cluster's spec.addressRanges (10.9.0.0/16)")
	}) {
		t.Errorf("problems %q do not say c2's address is outside its ranges", auto.Problems)
	}
}

// An edge gateway fronts only its own tenant's hostnames: another tenant's
// IngressGateway publishing the same name is neither a target nor named.
func TestAnEdgeGatewayFrontsOnlyItsOwnTenantsIngressGateways(t *testing.T) {
	const org = "organizations/acme"
	mine, theirs := org+"/tenants/mine/workspaces/w", org+"/tenants/theirs/workspaces/secret"
	e := newEdges()
	for _, name := range []string{"edge", "c1"} {
		put(t, &e, resource.KindCluster, org+"/clusters/"+name, org, &pb.ClusterSpec{Region: "eu"})
	}
	put(t, &e, resource.KindIngressGateway, theirs+"/groups/ingress/ingressgateways/bank", theirs+"/groups/ingress", &pb.IngressGatewaySpec{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "bank", Labels: map[string]string{"istio": "ingressgateway"}},
		Http:             []*pb.HTTPServer{{Name: "web", Hostname: "bank.example.com", Port: 80}},
	})
	put(t, &e, resource.KindEdgeGateway, mine+"/groups/edge/edgegateways/front", mine+"/groups/edge", &pb.EdgeGatewaySpec{
		ExternalServers: []*pb.ExternalServer{
			{Name: "auto", Hostname: "bank.example.com", Port: 80},
			{Name: "list", Hostname: "bank.example.com", Port: 80, Clusters: []*pb.ClusterWeight{{Name: "c1", Weight: 1}}},
		},
	})
	clusters := map[string]clusterRef{}
	for _, name := range []string{"edge", "c1"} {
		clusters[org+"/clusters/"+name] = clusterRef{name: name, org: org}
	}
	reach := map[string]map[string]bool{theirs + "/groups/ingress": {org + "/clusters/c1": true}, mine + "/groups/edge": {org + "/clusters/edge": true}}
	services := []registry.Service{{Namespace: "bank", Name: "ingressgateway", Instances: []registry.Instance{
		{Cluster: org + "/clusters/c1", Ready: 1, Address: "10.0.0.1", Selector: map[string]string{"istio": "ingressgateway"}},
	}}}
	var out map[string][]bundle.EdgeServer
	out = e.compute(clusters, func(g string) map[string]bool { return reach[g] }, services)
	for _, es := range out[org+"/clusters/edge"] {
		if len(es.Targets) != 0 {
			t.Fatalf("%s targets another tenant's ingress gateway: %+v", es.Server, es.Targets)
		}
		for _, p := range es.Problems {
			if strings.Contains(p, "theirs") || strings.Contains(p, "secret") || strings.Contains(p, "bank/") {
				t.Fatalf("%s's problems name the other tenant's objects: %q", es.Server, p)
			}
		}
	}
}
