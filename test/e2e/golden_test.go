package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istio"
)

// Every object the compiler emits for the golden inputs is accepted by a
// real API server holding Istio's CRDs: each is server-side applied with
// dry-run, so the CRDs' schemas (types, enums, required fields) judge it
// and nothing is stored.
func TestEveryGoldenOutputPassesIstiosCRDSchemaInARealAPIServer(t *testing.T) {
	c := clusters(t)[0]
	paths, err := filepath.Glob(filepath.Join("..", "..", "internal", "compile", "testdata", "*", "bundle.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	ctx := context.Background()
	total := 0
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var gc struct {
			Namespaces       []string          `json:"namespaces"`
			DestinationRules map[string]string `json:"destinationRules"`
			NamespaceWide    map[string]string `json:"namespaceWide"`
			bundle.Bundle    `json:",inline"`
		}
		if err := yaml.Unmarshal(data, &gc); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		res := compile.CompileIn(&gc.Bundle, compile.Cluster{Namespaces: gc.Namespaces, DestinationRules: gc.DestinationRules, NamespaceWide: gc.NamespaceWide})
		for _, o := range res.Objects {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.GetNamespace()}}
			if _, err := c.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			k, ok := istio.Lookup(o.GetAPIVersion(), o.GetKind())
			if !ok {
				t.Fatalf("%s: %s %s is not catalogued", p, o.GetAPIVersion(), o.GetKind())
			}
			_, err := c.dyn.Resource(k.GVR).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o,
				metav1.ApplyOptions{FieldManager: "flotilla-golden", Force: true, DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Errorf("%s: the API server refuses %s %s/%s: %v", filepath.Base(filepath.Dir(p)), o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
			total++
		}
	}
	if total < 50 {
		t.Fatalf("only %d objects compiled from %d golden inputs: the inputs lost their content", total, len(paths))
	}
	t.Logf("%d objects from %d golden inputs accepted", total, len(paths))
}
