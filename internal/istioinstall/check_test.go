package istioinstall

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func spec(t *testing.T, values map[string]any) *pb.IstioInstallationSpec {
	t.Helper()
	s := &pb.IstioInstallationSpec{Clusters: &pb.ClusterSelector{Names: []string{"*"}}, Version: "1.31"}
	if values != nil {
		v, err := structpb.NewStruct(values)
		if err != nil {
			t.Fatal(err)
		}
		s.Values = v
	}
	return s
}

func TestCheckRefusesEachBadInputWithItsFieldAndTheFix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*pb.IstioInstallationSpec)
		values map[string]any
		field  string
		says   string
	}{
		{"no version", func(s *pb.IstioInstallationSpec) { s.Version = "" }, nil, "spec.version", "is required: one of 1.31"},
		{"a version without charts", func(s *pb.IstioInstallationSpec) { s.Version = "1.19" }, nil, "spec.version", `"1.19" is not a version this binary has charts for`},
		{"a revision with dots", func(s *pb.IstioInstallationSpec) { s.Revision = "1.31.0" }, nil, "spec.revision", `write "1-31-0"`},
		{"revision named default", func(s *pb.IstioInstallationSpec) { s.Revision = "default" }, nil, "spec.revision", "leave spec.revision empty"},
		{"an unknown profile", func(s *pb.IstioInstallationSpec) { s.Profile = "minimal" }, nil, "spec.profile", "use one of ambient"},
		{"no clusters", func(s *pb.IstioInstallationSpec) { s.Clusters = nil }, nil, "spec.clusters", "is required"},
		{"a bad cluster pattern", func(s *pb.IstioInstallationSpec) { s.Clusters.Names = []string{"a*b"} }, nil, "spec.clusters.names[0]", "a prefix ending in"},
		{"a tag twice", func(s *pb.IstioInstallationSpec) { s.Tags = []string{"stable", "stable"} }, nil, "spec.tags[1]", "is also spec.tags[0]"},
		{"a gateway without type", func(s *pb.IstioInstallationSpec) { s.Gateways = []*pb.IstioGateway{{Name: "gw"}} }, nil, "spec.gateways[0].type", "use one of ingress, eastwest, egress"},
		{"a gateway upgrade mode", func(s *pb.IstioInstallationSpec) {
			s.Gateways = []*pb.IstioGateway{{Name: "gw", Type: "ingress", Upgrade: "rolling"}}
		}, nil, "spec.gateways[0].upgrade", "use one of inPlace, revision"},
		{"a mistyped value", nil, map[string]any{"istiod": map[string]any{"replicaCont": 2}}, "spec.values.istiod.replicaCont", `did you mean replicaCount?`},
		{"an unknown nested value", nil, map[string]any{"global": map[string]any{"proxy": map[string]any{"nonsense": true}}}, "spec.values.global.proxy.nonsense", `the chart has no value "nonsense"`},
		{"a value of the wrong type", nil, map[string]any{"istiod": map[string]any{"autoscaleEnabled": "yes"}}, "spec.values.istiod.autoscaleEnabled", "is a string (yes), but the chart's value is a boolean"},
		{"a value Flotilla sets", nil, map[string]any{"global": map[string]any{"meshID": "m"}}, "spec.values.global.meshID", "is set by Flotilla from the organization's name"},
		{"the revision in values", nil, map[string]any{"istiod": map[string]any{"revision": "x"}}, "spec.values.istiod.revision", "from spec.revision"},
		{"not a chart", nil, map[string]any{"pilot": map[string]any{}}, "spec.values.pilot", `"pilot" is not a chart`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spec(t, tc.values)
			if tc.mutate != nil {
				tc.mutate(s)
			}
			problems := Check(s)
			for _, p := range problems {
				if p.Field == tc.field && strings.Contains(p.Message, tc.says) {
					if _, err := Render(Input{Spec: s, Cluster: Cluster{Name: "c1"}}); err == nil || !strings.Contains(err.Error(), tc.field) {
						t.Errorf("Render took what Check refused (err %v)", err)
					}
					return
				}
			}
			t.Errorf("want %s: …%s…; got %+v", tc.field, tc.says, problems)
		})
	}
}

func TestCheckTakesValuesTheChartsHave(t *testing.T) {
	s := spec(t, map[string]any{
		"global":  map[string]any{"hub": "registry.example/istio", "proxy": map[string]any{"resources": map[string]any{"requests": map[string]any{"cpu": "10m"}}}},
		"istiod":  map[string]any{"replicaCount": 2, "env": map[string]any{"PILOT_X": "1"}, "autoscaleEnabled": false},
		"gateway": map[string]any{"podAnnotations": map[string]any{"a": "b"}},
	})
	s.Revision, s.Profile, s.Tags = "canary", "ambient", []string{"prod-canary"}
	s.Gateways = []*pb.IstioGateway{{Name: "istio-ingressgateway", Type: "ingress"}, {Name: "istio-eastwestgateway", Type: "eastwest", Upgrade: "revision"}}
	if problems := Check(s); len(problems) > 0 {
		t.Fatalf("refused: %+v", problems)
	}
}
