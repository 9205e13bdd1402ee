package compile

import (
	"encoding/json"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"flotilla.io/flotilla/internal/bundle"
)

// istioBundle is cluster c1's bundle with the given IstioInstallations
// (name → spec JSON) in the organization acme.
func istioBundle(facts *bundle.ClusterFacts, installs map[string]string) *bundle.Bundle {
	b := &bundle.Bundle{Cluster: "c1", Groups: []bundle.Group{
		{FQN: "organizations/acme", Type: GroupTypeOrganization, ConfigMode: ConfigModeBridged, Namespaces: []string{}},
		{FQN: "organizations/acme/clusters/c1", Type: GroupTypeCluster, ConfigMode: ConfigModeBridged, Namespaces: []string{}, Cluster: facts},
	}}
	for name, spec := range installs {
		b.Objects = append(b.Objects, bundle.Object{APIVersion: IngressGatewayAPIVersion, Kind: KindIstioInstallation,
			FQN: "organizations/acme/istioinstallations/" + name, Name: name, Group: "organizations/acme", Spec: json.RawMessage(spec)})
	}
	return b
}

func kinds(r Result) map[string]int {
	out := map[string]int{}
	for _, o := range r.Objects {
		out[o.GetKind()]++
	}
	return out
}

func TestIstioInstallationsRenderOnTheClustersTheySelect(t *testing.T) {
	facts := &bundle.ClusterFacts{Network: "net1", Region: "eu", Labels: map[string]string{"env": "prod"}}
	for _, tc := range []struct {
		selector string
		selected bool
	}{
		{`{"names":["c1"]}`, true},
		{`{"names":["c*"]}`, true},
		{`{"names":["c2"]}`, false},
		{`{"labels":{"env":"prod"}}`, true},
		{`{"labels":{"env":"dev"}}`, false},
		{`{"regions":["us","eu"]}`, true},
		{`{"names":["*"],"regions":["us"]}`, false},
	} {
		r := Compile(istioBundle(facts, map[string]string{"stable": `{"clusters":` + tc.selector + `,"version":"1.31","gateways":[{"name":"istio-eastwestgateway","type":"eastwest"}]}`}), nil)
		if len(r.Diagnostics) > 0 {
			t.Fatalf("%s: %v", tc.selector, r.Diagnostics)
		}
		k := kinds(r)
		if got := k["Deployment"] == 2 && k["CustomResourceDefinition"] > 10; got != tc.selected {
			t.Errorf("selector %s: istiod and its gateway rendered %v, want %v (%v)", tc.selector, got, tc.selected, k)
		}
		for _, o := range r.Objects {
			if o.GetLabels()[LabelManagedBy] != ManagedBy || o.GetAnnotations()[AnnotationOwner] != "organizations/acme/istioinstallations/stable" {
				t.Fatalf("%s %s is not labelled and annotated as Flotilla's: %v %v", o.GetKind(), o.GetName(), o.GetLabels(), o.GetAnnotations())
			}
			if o.GetKind() == "Service" && o.GetName() == "istio-eastwestgateway" && o.GetLabels()["topology.istio.io/network"] != "net1" {
				t.Errorf("the east-west gateway is not on the cluster's network: %v", o.GetLabels())
			}
		}
	}
}

func TestACanaryRendersTheSharedPartsOnceAndRefusesConflictsPerCluster(t *testing.T) {
	stable := `{"clusters":{"names":["*"]},"version":"1.31","tags":["default","prod-stable"]}`
	canary := `{"clusters":{"names":["*"]},"version":"1.31","revision":"canary","tags":["prod-canary"]}`
	r := Compile(istioBundle(nil, map[string]string{"stable": stable, "canary": canary}), nil)
	if len(r.Diagnostics) > 0 {
		t.Fatalf("a canary beside the stable revision: %v", r.Diagnostics)
	}
	names := map[string]bool{}
	for _, o := range r.Objects {
		names[o.GetKind()+"/"+o.GetName()] = true
	}
	for _, want := range []string{"Deployment/istiod", "Deployment/istiod-canary", "MutatingWebhookConfiguration/istio-sidecar-injector",
		"MutatingWebhookConfiguration/istio-sidecar-injector-canary", "MutatingWebhookConfiguration/istio-revision-tag-prod-canary",
		"MutatingWebhookConfiguration/istio-revision-tag-prod-stable", "ValidatingWebhookConfiguration/istiod-default-validator"} {
		if !names[want] {
			t.Errorf("no %s", want)
		}
	}
	// The same tag on both, and the same revision twice, in this cluster.
	r = Compile(istioBundle(nil, map[string]string{"stable": stable, "canary": strings.Replace(canary, "prod-canary", "prod-stable", 1)}), nil)
	if !hasDiag(r, "organizations/acme/istioinstallations/stable", "spec.tags[1]", `tag "prod-stable" already points at revision "canary"`) {
		t.Errorf("a tag on two revisions: %v", r.Diagnostics)
	}
	r = Compile(istioBundle(nil, map[string]string{"stable": stable, "other": strings.Replace(stable, `"tags":["default","prod-stable"]`, `"tags":[]`, 1)}), nil)
	if !hasDiag(r, "organizations/acme/istioinstallations/stable", "spec.revision", `already runs revision "default" from organizations/acme/istioinstallations/other`) {
		t.Errorf("one revision twice: %v", r.Diagnostics)
	}
}

func TestAnInvalidIstioInstallationIsReportedWhereverItLands(t *testing.T) {
	r := Compile(istioBundle(nil, map[string]string{"bad": `{"clusters":{"names":["elsewhere"]},"version":"1.31","revision":"1.31.0"}`}), nil)
	if !hasDiag(r, "organizations/acme/istioinstallations/bad", "spec.revision", "has a dot") || len(r.Objects) != 0 {
		t.Errorf("diagnostics %v, %d objects", r.Diagnostics, len(r.Objects))
	}
}

func TestTheCacheKeepsRendersAndNeverChangesTheOutput(t *testing.T) {
	b := istioBundle(nil, map[string]string{"stable": `{"clusters":{"names":["*"]},"version":"1.31"}`})
	var cache Cache
	first := CompileIn(b, Cluster{Cache: &cache})
	first.Objects[0].SetName("changed-by-the-caller")
	second := CompileIn(b, Cluster{Cache: &cache})
	plain := Compile(b, nil)
	a, _ := json.Marshal(second.Objects)
	p, _ := json.Marshal(plain.Objects)
	if string(a) != string(p) {
		t.Error("a compile from the cache differs from one without it")
	}
}

func hasDiag(r Result, fqn, field, says string) bool {
	for _, d := range r.Diagnostics {
		if d.FQN == fqn && d.Field == field && strings.Contains(d.Message, says) {
			return true
		}
	}
	return false
}

// injectors returns, for a namespace with nsLabels and a pod without
// labels, the revisions whose injection webhooks (in every rendered
// MutatingWebhookConfiguration) would inject that pod: the service each
// matching webhook calls.
func injectors(t *testing.T, r Result, nsLabels map[string]string) []string {
	t.Helper()
	var out []string
	for _, o := range r.Objects {
		if o.GetKind() != "MutatingWebhookConfiguration" {
			continue
		}
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		for _, h := range hooks {
			hook := h.(map[string]any)
			matches := func(field string, l map[string]string) bool {
				raw, ok := hook[field].(map[string]any)
				if !ok {
					return true
				}
				var sel metav1.LabelSelector
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &sel); err != nil {
					t.Fatal(err)
				}
				s, err := metav1.LabelSelectorAsSelector(&sel)
				if err != nil {
					t.Fatal(err)
				}
				return s.Matches(labels.Set(l))
			}
			if matches("namespaceSelector", nsLabels) && matches("objectSelector", nil) {
				svc, _, _ := unstructured.NestedString(hook, "clientConfig", "service", "name")
				out = append(out, strings.TrimPrefix(strings.TrimPrefix(svc, "istiod"), "-"))
			}
		}
	}
	return out
}

// No namespace is injected by two revisions, whatever the revisions and
// where the default tag points; each goes to the revision its label, its
// tag or the default tag names.
func TestNoNamespaceIsInjectedByTwoRevisions(t *testing.T) {
	install := func(revision string, tags ...string) string {
		spec := map[string]any{"clusters": map[string]any{"names": []any{"*"}}, "version": "1.31", "revision": revision, "tags": tags}
		data, _ := json.Marshal(spec)
		return string(data)
	}
	for _, tc := range []struct {
		name     string
		installs map[string]string
		want     map[string]string // namespace label → the one revision that injects ("": the unnamed; "none": nobody)
	}{
		{"unnamed default beside a canary", map[string]string{"stable": install("", "default", "prod-stable"), "canary": install("canary", "prod-canary")},
			map[string]string{"istio-injection=enabled": "", "istio.io/rev=default": "", "istio.io/rev=prod-stable": "", "istio.io/rev=canary": "canary", "istio.io/rev=prod-canary": "canary", "none": "none"}},
		{"two named revisions, default on the first", map[string]string{"a": install("1-31-a", "default", "prod-stable"), "b": install("1-31-b", "prod-canary")},
			map[string]string{"istio-injection=enabled": "1-31-a", "istio.io/rev=prod-stable": "1-31-a", "istio.io/rev=1-31-b": "1-31-b", "istio.io/rev=prod-canary": "1-31-b", "none": "none"}},
		{"the default tag moved to the second", map[string]string{"a": install("1-31-a", "prod-stable"), "b": install("1-31-b", "default", "prod-canary")},
			map[string]string{"istio-injection=enabled": "1-31-b", "istio.io/rev=prod-stable": "1-31-a", "istio.io/rev=1-31-a": "1-31-a", "istio.io/rev=prod-canary": "1-31-b", "none": "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Compile(istioBundle(nil, tc.installs), nil)
			if len(r.Diagnostics) > 0 {
				t.Fatal(r.Diagnostics)
			}
			for label, want := range tc.want {
				ns := map[string]string{}
				if k, v, ok := strings.Cut(label, "="); ok {
					ns[k] = v
				}
				got := injectors(t, r, ns)
				if want == "none" {
					if len(got) != 0 {
						t.Errorf("a namespace without labels is injected by %v", got)
					}
					continue
				}
				if len(got) != 1 || got[0] != want {
					t.Errorf("namespace %s is injected by %q, want by %q alone", label, got, want)
				}
			}
		})
	}
	// A default tag on a named revision beside the unnamed one would make
	// two webhooks inject istio-injection=enabled: refused per cluster.
	r := Compile(istioBundle(nil, map[string]string{"stable": install(""), "canary": install("canary", "default")}), nil)
	if !hasDiag(r, "organizations/acme/istioinstallations/canary", "spec.tags", "two webhooks would inject each pod") {
		t.Fatalf("diagnostics: %v", r.Diagnostics)
	}
	if got := injectors(t, r, map[string]string{"istio-injection": "enabled"}); len(got) != 1 || got[0] != "" {
		t.Errorf("istio-injection=enabled is injected by %q, want the unnamed revision alone", got)
	}
}
