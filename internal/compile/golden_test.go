package compile

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/istio"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// goldenCase is testdata/<case>/bundle.yaml: a bundle plus the namespaces
// that exist in its cluster.
type goldenCase struct {
	Namespaces []string `json:"namespaces"`
	// DestinationRules are the cluster's own, by host (compile.Cluster).
	DestinationRules map[string]string `json:"destinationRules"`
	// NamespaceWide are the cluster's own namespace-wide policies.
	NamespaceWide map[string]string `json:"namespaceWide"`
	bundle.Bundle `json:",inline"`
}

func (gc goldenCase) cluster(namespaces []string) Cluster {
	return Cluster{Namespaces: namespaces, DestinationRules: gc.DestinationRules, NamespaceWide: gc.NamespaceWide}
}

func loadCases(t *testing.T) map[string]goldenCase {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "bundle.yaml"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases under testdata: %v", err)
	}
	cases := map[string]goldenCase{}
	for _, p := range dirs {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var gc goldenCase
		if err := yaml.UnmarshalStrict(data, &gc); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		cases[filepath.Base(filepath.Dir(p))] = gc
	}
	return cases
}

// render writes the objects as multi-document YAML, then the diagnostics.
// It uses yaml.v3, which does not fold long lines, so each message reads on
// one line.
func render(t *testing.T, r Result) []byte {
	t.Helper()
	type diagnostic struct {
		FQN     string `yaml:"fqn"`
		Field   string `yaml:"field,omitempty"`
		Message string `yaml:"message"`
	}
	diags := struct {
		Diagnostics []diagnostic `yaml:"diagnostics"`
	}{Diagnostics: []diagnostic{}}
	for _, d := range r.Diagnostics {
		diags.Diagnostics = append(diags.Diagnostics, diagnostic(d))
	}
	var buf bytes.Buffer
	enc := yamlv3.NewEncoder(&buf)
	enc.SetIndent(2)
	for _, o := range r.Objects {
		if err := enc.Encode(o.Object); err != nil {
			t.Fatalf("marshal %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	if err := enc.Encode(diags); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCompileMatchesTheGoldenFiles(t *testing.T) {
	for name, gc := range loadCases(t) {
		t.Run(name, func(t *testing.T) {
			b := gc.Bundle
			r := CompileIn(&b, gc.cluster(gc.Namespaces))
			checkEmittedObjects(t, r)
			got := render(t, r)
			path := filepath.Join("testdata", name, gc.Cluster+".golden.yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
			}
		})
	}
}

// checkEmittedObjects asserts what holds for every compilation: each object
// is an Istio kind whose spec Istio's schema and our semantic checks accept,
// carries the ownership label and annotation, and the output is sorted and
// unique.
func checkEmittedObjects(t *testing.T, r Result) {
	t.Helper()
	for i, o := range r.Objects {
		id := o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
		k, ok := istio.Lookup(o.GetAPIVersion(), o.GetKind())
		if !ok || k.APIVersion != o.GetAPIVersion() {
			t.Errorf("%s: %s is not a catalogued Istio apiVersion", id, o.GetAPIVersion())
			continue
		}
		if errs := istio.Validate(k, o.GetName(), o.GetNamespace(), o.Object["spec"]); errs != nil {
			t.Errorf("%s: emitted spec is invalid: %v", id, errs)
		}
		if o.GetLabels()[LabelManagedBy] != ManagedBy || o.GetAnnotations()[AnnotationOwner] == "" {
			t.Errorf("%s: missing the ownership label or annotation: %v %v", id, o.GetLabels(), o.GetAnnotations())
		}
		if o.GetName() == "" || o.GetNamespace() == "" {
			t.Errorf("%s: empty name or namespace", id)
		}
		if i > 0 && compareKeys(r.Objects[i-1], o) >= 0 {
			t.Errorf("%s: objects are not sorted and unique", id)
		}
	}
}

func TestCompileIsByteForByteDeterministicWhateverTheInputOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2)) // the test's randomness, not the compiler's
	for name, gc := range loadCases(t) {
		t.Run(name, func(t *testing.T) {
			b := gc.Bundle
			want := render(t, CompileIn(&b, gc.cluster(gc.Namespaces)))
			for i := 0; i < 50; i++ {
				s := bundle.Bundle{Cluster: gc.Cluster}
				s.Groups = append(s.Groups, gc.Groups...)
				s.Objects = append(s.Objects, gc.Objects...)
				ns := append([]string(nil), gc.Namespaces...)
				if mc := gc.Multicluster; mc != nil {
					m := &bundle.Multicluster{EastWest: slices.Clone(mc.EastWest)}
					for _, svc := range mc.Services {
						svc.Remotes = slices.Clone(svc.Remotes)
						rng.Shuffle(len(svc.Remotes), func(i, j int) { svc.Remotes[i], svc.Remotes[j] = svc.Remotes[j], svc.Remotes[i] })
						m.Services = append(m.Services, svc)
					}
					for _, e := range mc.Edges {
						e.Targets = slices.Clone(e.Targets)
						rng.Shuffle(len(e.Targets), func(i, j int) { e.Targets[i], e.Targets[j] = e.Targets[j], e.Targets[i] })
						m.Edges = append(m.Edges, e)
					}
					rng.Shuffle(len(m.Edges), func(i, j int) { m.Edges[i], m.Edges[j] = m.Edges[j], m.Edges[i] })
					rng.Shuffle(len(m.Services), func(i, j int) { m.Services[i], m.Services[j] = m.Services[j], m.Services[i] })
					rng.Shuffle(len(m.EastWest), func(i, j int) { m.EastWest[i], m.EastWest[j] = m.EastWest[j], m.EastWest[i] })
					s.Multicluster = m
				}
				rng.Shuffle(len(s.Groups), func(i, j int) { s.Groups[i], s.Groups[j] = s.Groups[j], s.Groups[i] })
				rng.Shuffle(len(s.Objects), func(i, j int) { s.Objects[i], s.Objects[j] = s.Objects[j], s.Objects[i] })
				rng.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })
				got := render(t, CompileIn(&s, gc.cluster(ns)))
				if !bytes.Equal(want, got) {
					t.Fatalf("shuffle %d gives different output:\n%s", i, cmp.Diff(string(want), string(got)))
				}
			}
		})
	}
}

func TestCompileDoesNotChangeItsInput(t *testing.T) {
	for name, gc := range loadCases(t) {
		before, err := yaml.Marshal(gc)
		if err != nil {
			t.Fatal(err)
		}
		b := gc.Bundle
		CompileIn(&b, gc.cluster(gc.Namespaces))
		after, _ := yaml.Marshal(goldenCase{Namespaces: gc.Namespaces, DestinationRules: gc.DestinationRules, NamespaceWide: gc.NamespaceWide, Bundle: b})
		if diff := cmp.Diff(string(before), string(after)); diff != "" {
			t.Errorf("%s: Compile changed the bundle:\n%s", name, diff)
		}
	}
}

func TestGoldenCasesNameTheirCluster(t *testing.T) {
	for name, gc := range loadCases(t) {
		if gc.Cluster == "" || strings.ContainsAny(gc.Cluster, "/.") {
			t.Errorf("%s: cluster %q cannot name a golden file", name, gc.Cluster)
		}
	}
}

// A Cache only saves work: every golden case compiles to the same bytes
// with a cache shared across all of them, compiled twice, as without one.
func TestACacheNeverChangesTheOutput(t *testing.T) {
	cache := &Cache{}
	cases := loadCases(t)
	for round := range 2 {
		for name, gc := range cases {
			b := gc.Bundle
			want := render(t, CompileIn(&b, gc.cluster(gc.Namespaces)))
			in := gc.cluster(gc.Namespaces)
			in.Cache = cache
			if got := render(t, CompileIn(&b, in)); !bytes.Equal(want, got) {
				t.Fatalf("round %d, %s: with a cache the output differs:\n%s", round, name, cmp.Diff(string(want), string(got)))
			}
		}
	}
}
