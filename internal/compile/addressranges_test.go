package compile

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.io/flotilla/internal/bundle"
)

// An address the central refused (outside its cluster's declared ranges)
// makes no endpoint, and the diagnostics name the cluster, the address and
// what to fix; an accepted one makes its WorkloadEntry.
func TestARefusedGatewayAddressMakesNoEndpointAndIsDiagnosed(t *testing.T) {
	const owner = "organizations/acme/tenants/t/workspaces/shop/workspacesettings/mc"
	b := &bundle.Bundle{Cluster: "c1", Multicluster: &bundle.Multicluster{
		EastWest: []bundle.EastWest{{Owner: owner, Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}, Service: "istio-system/eastwest", Refused: "10.0.0.1 (outside 10.9.0.0/16)"}},
		Services: []bundle.RemoteService{{Owner: owner, Namespace: "shop", Name: "reviews", Ports: []bundle.ServicePort{{Name: "http", Number: 9080, Protocol: "TCP"}},
			Remotes: []bundle.RemoteInstance{
				{Cluster: "c2", Refused: "10.0.0.2 (outside 10.9.0.0/16)", Port: 15443, Ready: 1},
				{Cluster: "c3", Address: "10.9.0.3", Port: 15443, Ready: 1},
			}}},
	}}
	res := Compile(b, []string{"istio-system", "shop", MulticlusterNamespace})
	var diags []string
	for _, d := range res.Diagnostics {
		diags = append(diags, d.String())
	}
	all := strings.Join(diags, "\n")
	for _, want := range []string{
		"cluster c2 runs shop/reviews but reports its east-west gateway at 10.0.0.2 (outside 10.9.0.0/16), outside that cluster's spec.addressRanges",
		"cluster c1 reports its east-west gateway Service istio-system/eastwest at 10.0.0.1 (outside 10.9.0.0/16)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, all)
		}
	}
	var addresses []string
	for _, o := range res.Objects {
		if o.GetKind() == "ServiceEntry" {
			eps, _, _ := unstructured.NestedSlice(o.Object, "spec", "endpoints")
			for _, ep := range eps {
				addresses = append(addresses, ep.(map[string]any)["address"].(string))
			}
		}
	}
	if strings.Join(addresses, ",") != "10.9.0.3" {
		t.Errorf("ServiceEntry endpoints at %v, want only c3's 10.9.0.3", addresses)
	}
}
