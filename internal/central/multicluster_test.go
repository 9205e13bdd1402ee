package central

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/selector"
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
	m := newMulticluster()
	m.workspaces[ws] = sel
	m.settings[set] = mcSetting{fqn: set, workspace: ws, org: acme, ew: &pb.EastWestGatewaySettings{
		WorkloadSelector: &pb.WorkloadSelector{Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}},
		ExposedServices:  []*pb.ExposedServices{{ServiceLabels: map[string]string{"expose": "yes"}}},
	}}
	clusters := map[string]*clusterEntry{}
	for _, n := range []string{"c1", "c2", "c3", "c4"} {
		clusters[acme+"/clusters/"+n] = &clusterEntry{fqn: acme + "/clusters/" + n, name: n, org: acme}
	}
	clusters["organizations/other/clusters/c1"] = &clusterEntry{fqn: "organizations/other/clusters/c1", name: "c1", org: "organizations/other"}

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

	got := m.compute(clusters, reg.Services(nil, registry.Filter{}), reg.Gateway)
	ew := func(gw string) []bundle.EastWest {
		e := bundle.EastWest{Owner: set, Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}}
		if gw != "" {
			e.Service, e.Address = "istio-system/eastwest", gw
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
