package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"flotilla.io/flotilla/internal/bundle"
)

// Namespace is where the agent keeps its state in its cluster.
const Namespace = "flotilla-system"

// cachedBundleName is the name of the Bundle custom resource holding the
// latest bundle.
const cachedBundleName = "current"

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	bundleGVR = schema.GroupVersionResource{Group: "flotilla.io", Version: "v1alpha1", Resource: "bundles"}
)

// bundleCRD describes the flotilla.io Bundle kind the agent installs.
func bundleCRD() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": "bundles.flotilla.io", "labels": map[string]any{"app.kubernetes.io/managed-by": "flotilla"}},
		"spec": map[string]any{
			"group": "flotilla.io",
			"scope": "Namespaced",
			"names": map[string]any{"plural": "bundles", "singular": "bundle", "kind": "Bundle", "listKind": "BundleList"},
			"versions": []any{map[string]any{
				"name": "v1alpha1", "served": true, "storage": true,
				"additionalPrinterColumns": []any{
					map[string]any{"name": "Version", "type": "string", "jsonPath": ".spec.version"},
					map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
				},
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type":        "object",
					"description": "The latest intent bundle the Flotilla agent received for this cluster; it reconciles from it when the central control plane is unreachable.",
					"properties": map[string]any{
						"spec": map[string]any{
							"type":     "object",
							"required": []any{"version", "content"},
							"properties": map[string]any{
								"version": map[string]any{"type": "string"},
								"content": map[string]any{"type": "string", "description": "The bundle as JSON."},
							},
						},
					},
				}},
			}},
		},
	}}
}

// bundleCache keeps the latest bundle in the cluster as a Bundle custom resource.
type bundleCache struct {
	dyn dynamic.Interface
}

// install creates the Bundle CRD if missing and waits until it is established.
func (c *bundleCache) install(ctx context.Context) error {
	crds := c.dyn.Resource(crdGVR)
	if _, err := crds.Create(ctx, bundleCRD(), metav1.CreateOptions{FieldManager: "flotilla-agent"}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("install CRD bundles.flotilla.io: %w", err)
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		crd, err := crds.Get(ctx, "bundles.flotilla.io", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
}

// load returns the stored bundle, or nil when there is none.
func (c *bundleCache) load(ctx context.Context) (*bundle.Bundle, string, error) {
	obj, err := c.dyn.Resource(bundleGVR).Namespace(Namespace).Get(ctx, cachedBundleName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", nil
	} else if err != nil {
		return nil, "", fmt.Errorf("read stored bundle: %w", err)
	}
	version, _, _ := unstructured.NestedString(obj.Object, "spec", "version")
	content, _, _ := unstructured.NestedString(obj.Object, "spec", "content")
	var b bundle.Bundle
	if err := json.Unmarshal([]byte(content), &b); err != nil {
		return nil, "", fmt.Errorf("decode stored bundle %s: %w", version, err)
	}
	return &b, version, nil
}

// store saves the bundle before anything is applied from it.
func (c *bundleCache) store(ctx context.Context, version string, content []byte) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "flotilla.io/v1alpha1",
		"kind":       "Bundle",
		"metadata":   map[string]any{"name": cachedBundleName, "namespace": Namespace, "labels": map[string]any{"app.kubernetes.io/managed-by": "flotilla"}},
		"spec":       map[string]any{"version": version, "content": string(content)},
	}}
	force := true
	_, err := c.dyn.Resource(bundleGVR).Namespace(Namespace).Apply(ctx, cachedBundleName, obj, metav1.ApplyOptions{FieldManager: "flotilla-agent", Force: force})
	if err != nil {
		return fmt.Errorf("store bundle %s: %w", version, err)
	}
	return nil
}
