package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
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

// BundleCRD describes the flotilla.io Bundle kind the agent keeps current
// (the agent chart ships the same in crds/, which a test checks).
func BundleCRD() *unstructured.Unstructured {
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
					map[string]any{"name": "Revision", "type": "integer", "jsonPath": ".spec.revision"},
					map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
				},
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type":        "object",
					"description": "The latest intent bundle the Flotilla agent received for this cluster (\"current\"), or one part of a large one; the agent reconciles from it when the central control plane is unreachable.",
					"properties": map[string]any{
						"spec": map[string]any{
							"type":     "object",
							"required": []any{"version"},
							"properties": map[string]any{
								"version":  map[string]any{"type": "string"},
								"revision": map[string]any{"type": "integer", "format": "int64", "description": "The store revision the bundle was computed from."},
								"content":  map[string]any{"type": "string", "description": "The bundle as JSON, or this part of it."},
								"parts":    map[string]any{"type": "array", "items": map[string]any{"type": "string"}, "description": "For a large bundle: the names of the Bundle objects holding its parts, in order."},
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

// install applies the Bundle CRD (so an older schema is upgraded) and waits
// until it is established.
func (c *bundleCache) install(ctx context.Context) error {
	crds := c.dyn.Resource(crdGVR)
	if _, err := crds.Apply(ctx, "bundles.flotilla.io", BundleCRD(), metav1.ApplyOptions{FieldManager: "flotilla-agent", Force: true}); err != nil {
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

// partSize bounds one stored Bundle object's content, well inside etcd's
// request limit (about 1.5 MiB) whatever the bundle's size.
const partSize = 512 << 10

// partLabel marks the Bundle objects that hold parts of a large bundle.
const partLabel = "flotilla.io/bundle-part"

// load returns the stored bundle, or nil when there is none. A bundle whose
// parts are missing or do not hash to its version is refused.
func (c *bundleCache) load(ctx context.Context) (*bundle.Bundle, string, int64, error) {
	bundles := c.dyn.Resource(bundleGVR).Namespace(Namespace)
	obj, err := bundles.Get(ctx, cachedBundleName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", 0, nil
	} else if err != nil {
		return nil, "", 0, fmt.Errorf("read stored bundle: %w", err)
	}
	version, _, _ := unstructured.NestedString(obj.Object, "spec", "version")
	rev, _, _ := unstructured.NestedInt64(obj.Object, "spec", "revision")
	content, _, _ := unstructured.NestedString(obj.Object, "spec", "content")
	parts, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "parts")
	var buf strings.Builder
	buf.WriteString(content)
	for _, name := range parts {
		p, err := bundles.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, "", 0, fmt.Errorf("read part %s of stored bundle %s: %w", name, version, err)
		}
		pc, _, _ := unstructured.NestedString(p.Object, "spec", "content")
		buf.WriteString(pc)
	}
	var b bundle.Bundle
	if err := json.Unmarshal([]byte(buf.String()), &b); err != nil {
		return nil, "", 0, fmt.Errorf("decode stored bundle %s: %w", version, err)
	}
	if got := b.Version(); got != version {
		return nil, "", 0, fmt.Errorf("stored bundle %s hashes to %s", version, got)
	}
	return &b, version, rev, nil
}

// store saves the bundle before anything is applied from it. A bundle
// larger than partSize goes into content-addressed part objects first and
// then into "current", which names them, so "current" only ever names parts
// that are all there; parts no longer named are then removed. An unchanged
// part is not rewritten.
func (c *bundleCache) store(ctx context.Context, version string, rev int64, content []byte) error {
	bundles := c.dyn.Resource(bundleGVR).Namespace(Namespace)
	spec := map[string]any{"version": version, "revision": rev}
	var parts []string
	if len(content) <= partSize {
		spec["content"] = string(content)
	} else {
		existing, err := bundles.List(ctx, metav1.ListOptions{LabelSelector: partLabel})
		if err != nil {
			return fmt.Errorf("store bundle %s: list parts: %w", version, err)
		}
		have := map[string]bool{}
		for _, p := range existing.Items {
			have[p.GetName()] = true
		}
		for off := 0; off < len(content); off += partSize {
			chunk := content[off:min(off+partSize, len(content))]
			sum := sha256.Sum256(chunk)
			name := "part-" + hex.EncodeToString(sum[:12])
			parts = append(parts, name)
			if have[name] {
				continue
			}
			if err := c.put(ctx, name, map[string]any{partLabel: "true"}, map[string]any{"version": version, "content": string(chunk)}); err != nil {
				return fmt.Errorf("store part %s of bundle %s: %w", name, version, err)
			}
		}
		spec["parts"] = toAny(parts)
	}
	if err := c.put(ctx, cachedBundleName, nil, spec); err != nil {
		return fmt.Errorf("store bundle %s: %w", version, err)
	}
	return c.prune(ctx, parts)
}

// put server-side applies one Bundle object.
func (c *bundleCache) put(ctx context.Context, name string, labels map[string]any, spec map[string]any) error {
	l := map[string]any{"app.kubernetes.io/managed-by": "flotilla"}
	for k, v := range labels {
		l[k] = v
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "flotilla.io/v1alpha1",
		"kind":       "Bundle",
		"metadata":   map[string]any{"name": name, "namespace": Namespace, "labels": l},
		"spec":       spec,
	}}
	_, err := c.dyn.Resource(bundleGVR).Namespace(Namespace).Apply(ctx, name, obj, metav1.ApplyOptions{FieldManager: "flotilla-agent", Force: true})
	return err
}

// prune deletes the part objects that the current bundle does not name.
func (c *bundleCache) prune(ctx context.Context, keep []string) error {
	bundles := c.dyn.Resource(bundleGVR).Namespace(Namespace)
	existing, err := bundles.List(ctx, metav1.ListOptions{LabelSelector: partLabel})
	if err != nil {
		return fmt.Errorf("list bundle parts: %w", err)
	}
	for _, p := range existing.Items {
		if slices.Contains(keep, p.GetName()) {
			continue
		}
		if err := bundles.Delete(ctx, p.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete bundle part %s: %w", p.GetName(), err)
		}
	}
	return nil
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
