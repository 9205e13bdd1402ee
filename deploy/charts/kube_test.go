package charts

import (
	"context"
	"path/filepath"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// lintChart runs helm lint on the chart directory with values, and
// returns its warnings and errors (its informational notes left out).
func lintChart(dir string, values map[string]any, namespace string) []support.Message {
	kv, _ := common.ParseKubeVersion(KubeVersion)
	res := lint.RunAll(filepath.Join(".", dir), values, namespace, lint.WithKubeVersion(kv))
	var out []support.Message
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			out = append(out, m)
		}
	}
	return out
}

// kube reaches one local-fleet cluster as its administrator.
type kube struct {
	typed  kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newKube(t *testing.T, cfg *rest.Config) *kube {
	t.Helper()
	typed := kubernetes.NewForConfigOrDie(cfg)
	dc := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	return &kube{typed: typed, dyn: dynamic.NewForConfigOrDie(cfg), mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

func (k *kube) ensureNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	_, err := k.typed.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := k.typed.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
		if gerr != nil {
			t.Fatal(gerr)
		}
		for k, v := range labels {
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			cur.Labels[k] = v
		}
		_, err = k.typed.CoreV1().Namespaces().Update(context.Background(), cur, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// dryRun creates obj with a server-side dry run: the API server validates
// and admits it, and stores nothing.
func (k *kube) dryRun(ctx context.Context, obj *unstructured.Unstructured) error {
	m, err := k.mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
	if err != nil {
		return err
	}
	var r dynamic.ResourceInterface = k.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		r = k.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	_, err = r.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
	if apierrors.IsAlreadyExists(err) {
		// An object the cluster has (the Namespace): judge it as an update.
		cur, gerr := r.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		obj = obj.DeepCopy()
		obj.SetResourceVersion(cur.GetResourceVersion())
		_, err = r.Update(ctx, obj, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
	}
	return err
}
