package agent

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
)

func TestTheAgentWritesNothingOfAnIstioInstallationAndSaysWhy(t *testing.T) {
	b := &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{
		{FQN: "organizations/acme", Type: compile.GroupTypeOrganization, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}},
		{FQN: "organizations/acme/tenants/t/workspaces/w/groups/g", Type: "traffic", ConfigMode: compile.ConfigModeDirect, Namespaces: []string{"*/pay"}},
	}, Objects: []bundle.Object{
		{APIVersion: compile.IngressGatewayAPIVersion, Kind: compile.KindIstioInstallation, FQN: "organizations/acme/istioinstallations/stable", Name: "stable",
			Group: "organizations/acme", Spec: json.RawMessage(`{"clusters":{"names":["*"]},"version":"1.31"}`)},
		{APIVersion: "networking.istio.io/v1", Kind: "VirtualService", FQN: "organizations/acme/tenants/t/workspaces/w/groups/g/virtualservices/vs", Name: "vs",
			Group: "organizations/acme/tenants/t/workspaces/w/groups/g", Namespace: "pay", Spec: json.RawMessage(`{"hosts":["web"],"http":[{"route":[{"destination":{"host":"web"}}]}]}`)},
	}}
	res := compile.Compile(b, []string{"pay"})
	if len(res.Objects) < 10 {
		t.Fatalf("the compiler rendered %d objects", len(res.Objects))
	}
	res = withoutLifecycle(b, res, "c1")
	if len(res.Objects) != 1 || res.Objects[0].GetKind() != "VirtualService" {
		t.Fatalf("kept %d objects, want the VirtualService alone", len(res.Objects))
	}
	if len(res.Diagnostics) != 1 || res.Diagnostics[0].FQN != "organizations/acme/istioinstallations/stable" || !strings.Contains(res.Diagnostics[0].Message, "does not manage Istio's lifecycle") {
		t.Fatalf("diagnostics: %v", res.Diagnostics)
	}
}

// Every kind Istio's charts render, for the default and the ambient profile
// with every gateway type, is one the agent prunes and watches
// (LifecycleKinds) and may write (LifecyclePermissions).
func TestTheLifecyclePermissionsCoverEverythingIstiosChartsRender(t *testing.T) {
	kinds := map[string]bool{}
	for _, gvk := range LifecycleKinds() {
		kinds[gvk.Group+"/"+gvk.Kind] = true
	}
	may := func(group, resource string) bool {
		for _, p := range LifecyclePermissions() {
			if slices.Contains(p.Rule.APIGroups, group) && slices.Contains(p.Rule.Resources, resource) && slices.Contains(p.Rule.Verbs, "patch") && slices.Contains(p.Rule.Verbs, "delete") {
				return true
			}
		}
		return false
	}
	for _, profile := range []string{"", "ambient"} {
		spec := `{"clusters":{"names":["*"]},"version":"1.31","profile":"` + profile + `","tags":["default","stable"],"gateways":[` +
			`{"name":"istio-ingressgateway","type":"ingress"},{"name":"istio-eastwestgateway","type":"eastwest"},{"name":"istio-egressgateway","type":"egress"}]}`
		b := &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{{FQN: "organizations/acme", Type: compile.GroupTypeOrganization, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}}},
			Objects: []bundle.Object{{APIVersion: compile.IngressGatewayAPIVersion, Kind: compile.KindIstioInstallation, FQN: "organizations/acme/istioinstallations/i", Name: "i", Group: "organizations/acme", Spec: json.RawMessage(spec)}}}
		res := compile.Compile(b, nil)
		if len(res.Diagnostics) > 0 {
			t.Fatal(res.Diagnostics)
		}
		for _, o := range res.Objects {
			gvk := o.GroupVersionKind()
			resource := strings.ToLower(gvk.Kind)
			switch {
			case strings.HasSuffix(resource, "y"):
				resource = strings.TrimSuffix(resource, "y") + "ies"
			default:
				resource += "s"
			}
			if !kinds[gvk.Group+"/"+gvk.Kind] {
				t.Errorf("profile %q renders %s, which LifecycleKinds lacks", profile, gvk)
			}
			if !may(gvk.Group, resource) {
				t.Errorf("profile %q renders %s (%s), which LifecyclePermissions does not let the agent write", profile, gvk, resource)
			}
		}
	}
}
