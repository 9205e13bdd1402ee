package resource

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func TestWorkspaceSettingNamesItsGatewayAndValidLabels(t *testing.T) {
	reg := Builtin()
	md := &pb.Metadata{Name: "multicluster", Organization: "acme", Tenant: "fintech", Workspace: "payments"}
	for _, tc := range []struct {
		name string
		spec map[string]any
		want []string
	}{
		{"valid", map[string]any{"eastWestGateway": map[string]any{
			"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}},
			"exposedServices":  []any{map[string]any{"serviceLabels": map[string]any{"app": "reviews"}}},
			"failoverPriority": []any{"topology.kubernetes.io/region"}}}, nil},
		{"empty", map[string]any{}, []string{"spec: is empty: set eastWestGateway (the east-west gateway's workloadSelector and, optionally, which services to expose), defaultTrafficSetting or defaultSecuritySetting"}},
		{"defaults only", map[string]any{"defaultSecuritySetting": map[string]any{"mtlsMode": "STRICT"}}, nil},
		{"bad defaults", map[string]any{"defaultSecuritySetting": map[string]any{"mtlsMode": "LOOSE"}}, []string{`spec.defaultSecuritySetting.mtlsMode: "LOOSE" is not one of STRICT, PERMISSIVE, DISABLE`}},
		{"a gateway without namespace or labels", map[string]any{"eastWestGateway": map[string]any{"workloadSelector": map[string]any{}}}, []string{
			"spec.eastWestGateway.workloadSelector.namespace: is required: the namespace of the east-west gateway pods, e.g. istio-system",
			"spec.eastWestGateway.workloadSelector.labels: is required: the labels of the east-west gateway pods, e.g. {istio: eastwestgateway}",
		}},
		{"an empty exposure and a bad failover label", map[string]any{"eastWestGateway": map[string]any{
			"workloadSelector": map[string]any{"namespace": "istio-system", "labels": map[string]any{"istio": "eastwestgateway"}},
			"exposedServices":  []any{map[string]any{}},
			"failoverPriority": []any{"not a label"}}}, []string{
			"spec.eastWestGateway.exposedServices[0].serviceLabels: is empty and would match every service: to expose them all, leave exposedServices empty",
			`spec.eastWestGateway.failoverPriority[0]: "not a label" is not a label key: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := structpb.NewStruct(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			obj, vs := reg.Parse(0, &pb.Resource{ApiVersion: APIVersion, Kind: KindWorkspaceSetting, Metadata: md, Spec: spec})
			var got []string
			for _, v := range vs {
				got = append(got, v.Field+": "+v.Message)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("violations (-want +got):\n%s", diff)
			}
			if tc.want == nil && obj.FQN() != "organizations/acme/tenants/fintech/workspaces/payments/workspacesettings/multicluster" {
				t.Fatalf("fqn %s", obj.FQN())
			}
		})
	}
}
