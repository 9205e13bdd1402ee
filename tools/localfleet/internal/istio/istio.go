// Package istio prepares a fresh cluster for Istio objects: it installs
// Istio's CustomResourceDefinitions, so that the API server validates Istio
// objects against Istio's own schemas, and creates the istio-system namespace
// carrying the cluster's topology labels.
package istio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// Namespace is the namespace created in every cluster.
const Namespace = "istio-system"

var (
	crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	nsResource  = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
)

// LoadCRDs reads a multi-document YAML file of CustomResourceDefinitions, such
// as istio.io/api's kubernetes/customresourcedefinitions.gen.yaml.
func LoadCRDs(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read crds: %w", err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 64*1024)
	var crds []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("decode %s, document %d: %w", path, doc, err)
		}
		if obj == nil {
			continue // an empty document
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s, document %d: kind %q, want CustomResourceDefinition", path, doc, u.GetKind())
		}
		crds = append(crds, u)
	}
	if len(crds) == 0 {
		return nil, fmt.Errorf("%s holds no CustomResourceDefinitions", path)
	}
	return crds, nil
}

// Install creates crds, waits until every one is Established, then creates
// the istio-system namespace with labels. crds are not modified.
func Install(ctx context.Context, cfg *rest.Config, crds []*unstructured.Unstructured, labels map[string]string) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	var errs []error
	for _, crd := range crds {
		_, err := client.Resource(crdResource).Create(ctx, crd.DeepCopy(), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			errs = append(errs, fmt.Errorf("create crd %s: %w", crd.GetName(), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := waitEstablished(ctx, client, crds); err != nil {
		return err
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(Namespace)
	ns.SetLabels(labels)
	if _, err := client.Resource(nsResource).Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", Namespace, err)
	}
	return nil
}

func waitEstablished(ctx context.Context, client dynamic.Interface, crds []*unstructured.Unstructured) error {
	want := make(map[string]bool, len(crds))
	for _, crd := range crds {
		want[crd.GetName()] = true
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		list, err := client.Resource(crdResource).List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, item := range list.Items {
				if established(&item) {
					delete(want, item.GetName())
				}
			}
			if len(want) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d crds to be established: %w (last list error: %v)", len(want), ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
