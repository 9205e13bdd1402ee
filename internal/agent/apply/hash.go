package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Labels and annotations the applier reads and writes.
const (
	// ManagedByLabel marks every object Flotilla manages, with value ManagedByValue.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of ManagedByLabel on Flotilla's objects.
	ManagedByValue = "flotilla"
	// OwnerAnnotation holds the FQN of the Flotilla resource an object belongs to.
	OwnerAnnotation = "flotilla.io/owner"
	// HashAnnotation holds the hash of the desired content last applied.
	HashAnnotation = "flotilla.io/hash"
	// HoldAnnotation on a desired object asks Apply not to move it to this
	// content yet (Held); its value says what it waits for. It is never
	// written to the cluster.
	HoldAnnotation = "flotilla.io/hold"
)

// DesiredHash is the hash Apply stamps (HashAnnotation) on an object it
// writes from in: what a live object carries once it holds in.
func DesiredHash(in *unstructured.Unstructured) (string, error) {
	obj := in.DeepCopy()
	dropNulls(obj.Object)
	annotations := obj.GetAnnotations()
	delete(annotations, HashAnnotation)
	delete(annotations, HoldAnnotation)
	obj.SetAnnotations(annotations)
	return contentHash(obj.Object)
}

// contentHash returns the hash of an object's content: its labels, its
// annotations except HashAnnotation, and every top-level field other than
// apiVersion, kind, metadata and status (spec, and data for kinds that have
// no spec). encoding/json writes map keys sorted, so the hash is stable.
func contentHash(obj map[string]any) (string, error) {
	b, err := json.Marshal(content(obj))
	if err != nil {
		return "", fmt.Errorf("encode content for hashing: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// content is the part of obj that contentHash covers.
func content(obj map[string]any) map[string]any {
	out := map[string]any{}
	meta, _ := obj["metadata"].(map[string]any)
	if labels, ok := meta["labels"].(map[string]any); ok && len(labels) > 0 {
		out["labels"] = labels
	}
	if annotations, ok := meta["annotations"].(map[string]any); ok {
		kept := map[string]any{}
		for k, v := range annotations {
			if k != HashAnnotation {
				kept[k] = v
			}
		}
		if len(kept) > 0 {
			out["annotations"] = kept
		}
	}
	fields := map[string]any{}
	for k, v := range obj {
		switch k {
		case "apiVersion", "kind", "metadata", "status":
		default:
			fields[k] = v
		}
	}
	out["fields"] = fields
	return out
}

// projectOnto returns the part of live that has the shape of desired: the
// labels and annotations whose keys desired has, and the fields of desired's
// content, recursively. Fields that the API server or other field managers
// added to live are left out, so that projectOnto(live, d) hashes like d
// exactly when live holds everything d asks for.
func projectOnto(live, desired map[string]any) map[string]any {
	out := map[string]any{}
	liveMeta, _ := live["metadata"].(map[string]any)
	desiredMeta, _ := desired["metadata"].(map[string]any)
	metaOut := map[string]any{}
	for _, field := range []string{"labels", "annotations"} {
		want, ok := desiredMeta[field].(map[string]any)
		if !ok {
			continue
		}
		have, _ := liveMeta[field].(map[string]any)
		kept := map[string]any{}
		for k := range want {
			if v, ok := have[k]; ok {
				kept[k] = v
			}
		}
		metaOut[field] = kept
	}
	out["metadata"] = metaOut
	for k, want := range desired {
		switch k {
		case "apiVersion", "kind", "metadata", "status":
			continue
		}
		if have, ok := live[k]; ok {
			out[k] = project(have, want)
		}
	}
	return out
}

// project prunes have to the shape of want: maps keep only want's keys, lists
// of the same length are projected element by element, a quantity equal to
// want's is want, and anything else is returned as is (and then differs
// from want if it is not equal).
func project(have, want any) any {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return have
		}
		out := make(map[string]any, len(w))
		for k, wv := range w {
			if hv, ok := h[k]; ok {
				out[k] = project(hv, wv)
			}
		}
		return out
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return have
		}
		out := make([]any, len(h))
		for i := range h {
			out[i] = project(h[i], w[i])
		}
		return out
	case string:
		// The API server keeps quantities in canonical form (2048Mi is
		// 2Gi, 2000m is 2): the same amount is the same content.
		if h, ok := have.(string); ok && h != w && sameQuantity(h, w) {
			return w
		}
		return have
	default:
		return have
	}
}

// sameQuantity reports whether two strings are quantities of one amount.
func sameQuantity(a, b string) bool {
	qa, err := resource.ParseQuantity(a)
	if err != nil {
		return false
	}
	qb, err := resource.ParseQuantity(b)
	return err == nil && qa.Cmp(qb) == 0
}

// dropNulls removes map entries whose value is nil, recursively. The API
// server does not store them, so a desired object that has them would never
// look up to date.
func dropNulls(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if e == nil {
				delete(t, k)
				continue
			}
			t[k] = dropNulls(e)
		}
	case []any:
		for i := range t {
			t[i] = dropNulls(t[i])
		}
	}
	return v
}

// upToDate reports whether live, a managed object, already holds desired
// content: its hash annotation is d's hash, and its content, projected onto
// d's shape, hashes to the same value (so an edit that kept the annotation is
// still caught).
func upToDate(live *unstructured.Unstructured, d *desiredObject) bool {
	if live.GetAnnotations()[HashAnnotation] != d.hash {
		return false
	}
	h, err := contentHash(projectOnto(live.Object, d.obj.Object))
	return err == nil && h == d.hash
}
