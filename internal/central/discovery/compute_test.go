package discovery

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// The multicluster slices: a setting reaches the clusters its workspace's
// selector covers, in its own organization; it exposes the services its
// labels pick in the namespaces the workspace covers; each cluster gets the
// others' instances (gateway, main locality, ready, stale), and knows when
// it runs the service itself.
func TestMulticlusterSlicesFollowTheWorkspaceTheLabelsAndTheOrganization(t *testing.T) {
	const (
		acme = "organizations/acme"
		ws   = acme + "/tenants/t/workspaces/shop"
		set  = ws + "/workspacesettings/mc"
	)
	sel, err := selector.ParseSet([]string{"c1/shop", "c2/shop", "c3/shop"})
	if err != nil {
		t.Fatal(err)
	}
	m := New(nil)
	m.in.workspaces[ws] = sel
	m.in.settings[set] = setting{fqn: set, workspace: ws, org: acme, ew: &pb.EastWestGatewaySettings{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}},
		ExposedServices:  []*pb.ExposedServices{{ServiceLabels: map[string]string{"expose": "yes"}}},
	}}
	clusters := m.in.clusters
	for _, n := range []string{"c1", "c2", "c3", "c4"} {
		clusters[acme+"/clusters/"+n] = clusterRef{name: n, org: acme}
	}
	clusters["organizations/other/clusters/c1"] = clusterRef{name: "c1", org: "organizations/other"}

	reg := registry.New()
	svc := func(ns, name string, labels map[string]string, ready ...uint32) *agentv1.ServiceState {
		s := &agentv1.ServiceState{Namespace: ns, Name: name, Labels: labels, Selector: map[string]string{"app": name},
			Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}}}
		for i, r := range ready {
			s.Endpoints = append(s.Endpoints, &agentv1.LocalityEndpoints{Region: "region-x", Zone: []string{"zone-a", "zone-b"}[i], Ready: r})
		}
		return s
	}
	exposed := map[string]string{"expose": "yes"}
	report := func(cluster string, gw string, services ...*agentv1.ServiceState) {
		t.Helper()
		m := &agentv1.Runtime{Seq: 1, Full: true, Services: services}
		if gw != "" {
			m.EastWestGateway = &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: gw, Port: 15443}
		}
		if err := reg.Apply(cluster, m, time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	report(acme+"/clusters/c1", "10.0.0.1", svc("shop", "reviews", exposed, 1), svc("shop", "hidden", nil, 1))
	report(acme+"/clusters/c2", "10.0.0.2", svc("shop", "reviews", exposed, 1, 4), svc("shop", "hidden", nil, 1), svc("other", "reviews", exposed, 1))
	report(acme+"/clusters/c4", "10.0.0.4", svc("shop", "reviews", exposed, 9)) // c4 is not in the workspace
	report("organizations/other/clusters/c1", "10.9.9.9", svc("shop", "reviews", exposed, 7))
	reg.Disconnected(acme+"/clusters/c2", time.Unix(60, 0))

	got := computeAll(m, reg)
	ew := func(gw string) []bundle.EastWest {
		e := bundle.EastWest{Owner: set, Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}}
		if gw != "" {
			e.Service, e.Address, e.Port = "istio-system/eastwest", gw, 15443
		}
		return []bundle.EastWest{e}
	}
	reviews := func(local bool, remotes ...bundle.RemoteInstance) []bundle.RemoteService {
		rs := bundle.RemoteService{Owner: set, Namespace: "shop", Name: "reviews", Local: local,
			Ports: []bundle.ServicePort{{Name: "http", Number: 9080, Protocol: "TCP"}}, Remotes: remotes}
		if local {
			rs.Selector = map[string]string{"app": "reviews"}
		}
		return []bundle.RemoteService{rs}
	}
	c1 := bundle.RemoteInstance{Cluster: "c1", Address: "10.0.0.1", Port: 15443, Region: "region-x", Zone: "zone-a", Ready: 1}
	c2 := bundle.RemoteInstance{Cluster: "c2", Address: "10.0.0.2", Port: 15443, Region: "region-x", Zone: "zone-b", Ready: 5, Stale: true}
	want := map[string]*bundle.Multicluster{
		acme + "/clusters/c1": {EastWest: ew("10.0.0.1"), Services: reviews(true, c2)},
		acme + "/clusters/c2": {EastWest: ew("10.0.0.2"), Services: reviews(true, c1)},
		acme + "/clusters/c3": {EastWest: ew(""), Services: reviews(false, c1, c2)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("slices (-want +got):\n%s", diff)
	}
}

// A cluster whose owner declared where its addresses lie
// (spec.addressRanges) gets none of its agent's other addresses used: a
// compromised agent that reports its east-west gateway at an address of
// its choice draws no failover traffic there, and the slices say which
// address was refused. A cluster with no ranges is taken at its word.
func TestReportedAddressesOutsideTheClustersRangesAreNotUsed(t *testing.T) {
	const (
		acme = "organizations/acme"
		ws   = acme + "/tenants/t/workspaces/shop"
		set  = ws + "/workspacesettings/mc"
	)
	sel, err := selector.ParseSet([]string{"*/shop"})
	if err != nil {
		t.Fatal(err)
	}
	m := New(nil)
	m.in.workspaces[ws] = sel
	m.in.settings[set] = setting{fqn: set, workspace: ws, org: acme, ew: &pb.EastWestGatewaySettings{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}},
		ExposedServices:  []*pb.ExposedServices{{ServiceLabels: map[string]string{"expose": "yes"}}},
	}}
	clusters := m.in.clusters
	for n, ranges := range map[string][]any{"c1": nil, "c2": {"10.2.0.0/16"}, "c3": {"*.elb.example.com"}} {
		fqn := acme + "/clusters/" + n
		clusters[fqn] = clusterRef{name: n, org: acme}
		spec, _ := json.Marshal(map[string]any{"addressRanges": ranges})
		if _, err := m.in.edges.apply(store.Event{Type: store.EventPut, Record: store.Record{Kind: "Cluster", FQN: fqn, Name: n, Parent: acme, Spec: spec}}); err != nil {
			t.Fatal(err)
		}
	}
	reg := registry.New()
	for cluster, gw := range map[string]string{"c1": "203.0.113.9", "c2": "10.0.0.2", "c3": "a1.elb.example.com"} {
		r := &agentv1.Runtime{Seq: 1, Full: true, EastWestGateway: &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: gw, Port: 15443},
			Services: []*agentv1.ServiceState{{Namespace: "shop", Name: "reviews", Labels: map[string]string{"expose": "yes"},
				Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}}, Endpoints: []*agentv1.LocalityEndpoints{{Ready: 1}}}}}
		if err := reg.Apply(acme+"/clusters/"+cluster, r, time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	got := computeAll(m, reg)
	remotes := map[string]bundle.RemoteInstance{}
	for _, r := range got[acme+"/clusters/c1"].Services[0].Remotes {
		remotes[r.Cluster] = r
	}
	if r := remotes["c2"]; r.Address != "" || r.Refused != "10.0.0.2 (outside 10.2.0.0/16)" {
		t.Errorf("c2's gateway outside its ranges: address %q, refused %q; want no address and the refusal", r.Address, r.Refused)
	}
	if r := remotes["c3"]; r.Address != "a1.elb.example.com" || r.Refused != "" {
		t.Errorf("c3's gateway inside its ranges: %+v", r)
	}
	for _, r := range got[acme+"/clusters/c2"].Services[0].Remotes {
		if r.Cluster == "c1" && r.Address != "203.0.113.9" {
			t.Errorf("c1 declares no ranges, so its address is used: %+v", r)
		}
	}
	if e := got[acme+"/clusters/c2"].EastWest[0]; e.Address != "" || e.Refused == "" {
		t.Errorf("c2's own east-west entry: %+v, want its address refused", e)
	}
	// Changing the ranges is a change of the slices' inputs.
	spec, _ := json.Marshal(map[string]any{"addressRanges": []any{"10.0.0.0/24"}})
	changed, err := m.in.edges.apply(store.Event{Type: store.EventPut, Record: store.Record{Kind: "Cluster", FQN: acme + "/clusters/c2", Name: "c2", Parent: acme, Spec: spec}})
	if err != nil || !changed {
		t.Fatalf("new ranges: changed %v, %v", changed, err)
	}
	got = computeAll(m, reg)
	for _, r := range got[acme+"/clusters/c1"].Services[0].Remotes {
		if r.Cluster == "c2" && r.Address != "10.0.0.2" {
			t.Errorf("c2's gateway inside its new ranges: %+v", r)
		}
	}
}

// The east-west gateway is the Service that the setting's workload
// selector names, in each cluster: a gateway of one's own (app: my-ewgw,
// no istio label) carries the failover of the setting that names it, and
// a cluster may run several, one per setting.
func TestTheEastWestGatewayIsTheOneTheSettingNames(t *testing.T) {
	const acme = "organizations/acme"
	shop, err := selector.ParseSet([]string{"*/shop"})
	if err != nil {
		t.Fatal(err)
	}
	pay, err := selector.ParseSet([]string{"*/pay"})
	if err != nil {
		t.Fatal(err)
	}
	m := New(nil)
	own := acme + "/tenants/t/workspaces/shop/workspacesettings/own"
	std := acme + "/tenants/t/workspaces/pay/workspacesettings/std"
	m.in.workspaces[acme+"/tenants/t/workspaces/shop"] = shop
	m.in.workspaces[acme+"/tenants/t/workspaces/pay"] = pay
	expose := []*pb.ExposedServices{{ServiceLabels: map[string]string{"expose": "yes"}}}
	m.in.settings[own] = setting{fqn: own, workspace: acme + "/tenants/t/workspaces/shop", org: acme, ew: &pb.EastWestGatewaySettings{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "gw", Labels: map[string]string{"app": "my-ewgw"}}, ExposedServices: expose}}
	m.in.settings[std] = setting{fqn: std, workspace: acme + "/tenants/t/workspaces/pay", org: acme, ew: &pb.EastWestGatewaySettings{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}}, ExposedServices: expose}}
	clusters := m.in.clusters
	for _, n := range []string{"c1", "c2"} {
		clusters[acme+"/clusters/"+n] = clusterRef{name: n, org: acme}
	}
	reg := registry.New()
	for i, c := range []string{"c1", "c2"} {
		addr := func(net string) string { return fmt.Sprintf("10.%s.0.%d", net, i+1) }
		r := &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{
			{Namespace: "gw", Name: "my-ewgw", Labels: map[string]string{"app": "my-ewgw"}, Selector: map[string]string{"app": "my-ewgw"},
				ExternalAddress: addr("1"), Ports: []*agentv1.ServicePort{{Name: "tls", Port: 16443, Protocol: "TCP"}}},
			{Namespace: "istio-system", Name: "istio-eastwestgateway", Labels: map[string]string{"istio": "eastwestgateway"},
				Selector: map[string]string{"istio": "eastwestgateway", "app": "istio-eastwestgateway"}, ExternalAddress: addr("2"),
				Ports: []*agentv1.ServicePort{{Name: "tls", Port: 15443, Protocol: "TCP"}}},
			{Namespace: "gw", Name: "unrelated", Selector: map[string]string{"app": "other"}, ExternalAddress: addr("9")},
			{Namespace: "shop", Name: "reviews", Labels: map[string]string{"expose": "yes"}, Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}},
				Endpoints: []*agentv1.LocalityEndpoints{{Ready: 1}}},
			{Namespace: "pay", Name: "ledger", Labels: map[string]string{"expose": "yes"}, Ports: []*agentv1.ServicePort{{Name: "http", Port: 9080, Protocol: "TCP"}},
				Endpoints: []*agentv1.LocalityEndpoints{{Ready: 1}}},
		}}
		if err := reg.Apply(acme+"/clusters/"+c, r, time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	got := computeAll(m, reg)
	c1 := got[acme+"/clusters/c1"]
	gateways := map[string]string{}
	for _, e := range c1.EastWest {
		gateways[e.Owner] = e.Service + "@" + e.Address
	}
	if gateways[own] != "gw/my-ewgw@10.1.0.1" || gateways[std] != "istio-system/istio-eastwestgateway@10.2.0.1" {
		t.Errorf("c1's east-west gateways by setting: %v", gateways)
	}
	remotes := map[string]string{}
	for _, s := range c1.Services {
		for _, r := range s.Remotes {
			remotes[s.Namespace+"/"+s.Name] = fmt.Sprintf("%s:%d", r.Address, r.Port)
		}
	}
	if remotes["shop/reviews"] != "10.1.0.2:16443" || remotes["pay/ledger"] != "10.2.0.2:15443" {
		t.Errorf("c1 reaches c2's services through %v, want shop/reviews through c2's my-ewgw (10.1.0.2:16443) and pay/ledger through its istio gateway (10.2.0.2:15443)", remotes)
	}
}

// computeAll rebuilds every slice of d over reg and returns them, by cluster.
func computeAll(d *Discovery, reg *registry.Registry) map[string]*bundle.Multicluster {
	d.reg = reg
	d.mu.Lock()
	d.dirty = true
	d.mu.Unlock()
	d.Update(nil)
	out := map[string]*bundle.Multicluster{}
	for fqn := range d.digests {
		out[fqn] = d.Slice(fqn)
	}
	return out
}
