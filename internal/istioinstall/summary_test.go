package istioinstall

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// rendered renders installations for one cluster as the compiler does: the
// first is the base.
func rendered(t *testing.T, specs ...*pb.IstioInstallationSpec) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for i, s := range specs {
		objs, err := Render(Input{Spec: s, Cluster: Cluster{Name: "c1", Network: "n1", MeshID: "acme"}, Base: i == 0})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, objs...)
	}
	return out
}

func install(t *testing.T, rev string, tags []string, gateways ...string) *pb.IstioInstallationSpec {
	s := spec(t, nil)
	s.Revision, s.Tags = rev, tags
	for _, g := range gateways {
		s.Gateways = append(s.Gateways, &pb.IstioGateway{Name: g, Type: "ingress"})
	}
	return s
}

// The plan's Istio lines follow the canary sequence: install, canary beside
// it with the tag and the gateway moved, a mesh config change, removal.
func TestSummarySaysWhatAChangeDoesToTheClustersIstio(t *testing.T) {
	stable := install(t, "r1", []string{"prod-stable"}, "istio-ingressgateway")
	lines := Summary(nil, rendered(t, stable))
	crds := lines[len(lines)-1]
	if !strings.HasPrefix(crds, "install Istio's CRDs (") {
		t.Fatalf("last line %q, want the CRDs", crds)
	}
	want := []string{
		"install revision r1 (Istio 1.31.0)",
		"add tag prod-stable on revision r1",
		"add gateway istio-system/istio-ingressgateway on revision r1, once its istiod has rolled out",
		crds,
	}
	if d := cmp.Diff(want, lines); d != "" {
		t.Fatalf("install (-want +got):\n%s", d)
	}

	// The canary: r2 beside r1, the tag and the gateway moved to it.
	canary := install(t, "r2", []string{"prod-stable"}, "istio-ingressgateway")
	before := rendered(t, stable)
	after := rendered(t, install(t, "r1", nil), canary)
	want = []string{
		// The tag leaves r1's values (which record its tags).
		"reconfigure revision r1 (Istio 1.31.0): ConfigMap values-r1 changes",
		"install revision r2 (Istio 1.31.0)",
		"move tag prod-stable: revision r1 → r2 (its namespaces' pods move on their next restart)",
		"move gateway istio-system/istio-ingressgateway: revision r1 → r2, once r2's istiod has rolled out",
	}
	if d := cmp.Diff(want, Summary(before, after)); d != "" {
		t.Fatalf("canary (-want +got):\n%s", d)
	}
	if got := Summary(after, after); len(got) != 0 {
		t.Fatalf("no change says %q", got)
	}

	// A mesh config change reconfigures the revision it is on.
	tuned := install(t, "r1", nil)
	mc, err := structpb.NewStruct(map[string]any{"accessLogFile": "/dev/stdout"})
	if err != nil {
		t.Fatal(err)
	}
	tuned.MeshConfig = mc
	got := Summary(after, rendered(t, tuned, canary))
	if len(got) != 1 || !strings.HasPrefix(got[0], "reconfigure revision r1 (Istio 1.31.0): ") || !strings.Contains(got[0], "ConfigMap istio-r1 changes") {
		t.Fatalf("mesh config change: %q", got)
	}

	// Removing r1, then everything.
	alone := rendered(t, canary)
	if d := cmp.Diff([]string{"remove revision r1 (Istio 1.31.0)"}, Summary(after, alone)); d != "" {
		t.Fatalf("removal (-want +got):\n%s", d)
	}
	got = Summary(alone, nil)
	if len(got) != 4 || got[0] != "remove revision r2 (Istio 1.31.0)" || got[1] != "remove tag prod-stable (on revision r2)" ||
		got[2] != "remove gateway istio-system/istio-ingressgateway (on revision r2)" || !strings.HasPrefix(got[3], "release Istio's CRDs (") {
		t.Fatalf("uninstall: %q", got)
	}
}

func TestDirectionComparesVersions(t *testing.T) {
	for _, tc := range []struct{ from, to, want string }{
		{"1.30.2", "1.31.0", "upgrade"}, {"1.31.0", "1.30.2", "downgrade"}, {"1.31.0", "1.31.0-rc.1", "downgrade"}, {"latest", "1.31.0", "change"},
	} {
		if got := direction(tc.from, tc.to); got != tc.want {
			t.Errorf("%s → %s: %s, want %s", tc.from, tc.to, got, tc.want)
		}
	}
}
