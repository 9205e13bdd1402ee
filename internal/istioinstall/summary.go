package istioinstall

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/Masterminds/semver/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Summary says, a line each, what turning a cluster's rendered objects
// before into those after does to its Istio: revisions installed, upgraded
// or downgraded in place, reconfigured or removed; revision tags added,
// moved or removed; gateways added, moved between revisions, reconfigured
// or removed; Istio's CRDs installed or released. Objects that are not
// Istio's are ignored; nothing changed gives no lines.
func Summary(before, after []*unstructured.Unstructured) []string {
	was, now := observe(before), observe(after)
	var out []string
	for _, rev := range union(was.revisions, now.revisions) {
		b, a := was.revisions[rev], now.revisions[rev]
		switch {
		case b == nil:
			out = append(out, fmt.Sprintf("install revision %s (Istio %s)", rev, a.version))
		case a == nil:
			out = append(out, fmt.Sprintf("remove revision %s (Istio %s)", rev, b.version))
		case b.version != a.version:
			out = append(out, fmt.Sprintf("%s revision %s in place: Istio %s → %s", direction(b.version, a.version), rev, b.version, a.version))
		case b.content != a.content:
			out = append(out, fmt.Sprintf("reconfigure revision %s (Istio %s): %s", rev, a.version, strings.Join(changed(b.objects, a.objects), ", ")))
		}
	}
	for _, tag := range union(was.tags, now.tags) {
		b, a := was.tags[tag], now.tags[tag]
		switch {
		case b == "":
			out = append(out, fmt.Sprintf("add tag %s on revision %s", tag, a))
		case a == "":
			out = append(out, fmt.Sprintf("remove tag %s (on revision %s)", tag, b))
		case a != b:
			out = append(out, fmt.Sprintf("move tag %s: revision %s → %s (its namespaces' pods move on their next restart)", tag, b, a))
		}
	}
	for _, gw := range union(was.gateways, now.gateways) {
		b, a := was.gateways[gw], now.gateways[gw]
		switch {
		case b == nil:
			out = append(out, fmt.Sprintf("add gateway %s on revision %s, once its istiod has rolled out", gw, a.revision))
		case a == nil:
			out = append(out, fmt.Sprintf("remove gateway %s (on revision %s)", gw, b.revision))
		case a.revision != b.revision:
			out = append(out, fmt.Sprintf("move gateway %s: revision %s → %s, once %s's istiod has rolled out", gw, b.revision, a.revision, a.revision))
		case a.content != b.content:
			out = append(out, fmt.Sprintf("reconfigure gateway %s (revision %s)", gw, a.revision))
		}
	}
	switch {
	case was.crds == 0 && now.crds > 0:
		out = append(out, fmt.Sprintf("install Istio's CRDs (%d)", now.crds))
	case was.crds > 0 && now.crds == 0:
		out = append(out, fmt.Sprintf("release Istio's CRDs (%d): they stay in the cluster, no longer Flotilla's", was.crds))
	}
	return out
}

// istioObjects is what Summary compares of a cluster's rendered objects.
type istioObjects struct {
	revisions map[string]*revisionObjects // by revision
	tags      map[string]string           // tag → revision
	gateways  map[string]*gatewayObjects  // by namespace/name
	crds      int
}

type revisionObjects struct {
	version string
	content string            // every object of the revision, encoded
	objects map[string]string // "Kind name" → encoded
}

type gatewayObjects struct {
	revision, content string
}

func observe(objs []*unstructured.Unstructured) istioObjects {
	out := istioObjects{revisions: map[string]*revisionObjects{}, tags: map[string]string{}, gateways: map[string]*gatewayObjects{}}
	byRev := map[string]map[string]string{}
	for _, o := range objs {
		labels := o.GetLabels()
		switch {
		case o.GetKind() == "CustomResourceDefinition" && strings.HasSuffix(o.GetName(), ".istio.io"):
			out.crds++
		case o.GetKind() == "MutatingWebhookConfiguration" && labels["istio.io/tag"] != "":
			out.tags[labels["istio.io/tag"]] = labels["istio.io/rev"]
		case o.GetKind() == "Deployment" && labels["app"] == "istiod":
			rev := cmp.Or(labels["istio.io/rev"], "default")
			out.revisions[rev] = &revisionObjects{version: imageTag(o)}
		case o.GetKind() == "Deployment":
			pod, _, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "labels")
			if pod["sidecar.istio.io/inject"] == "true" {
				out.gateways[o.GetNamespace()+"/"+o.GetName()] = &gatewayObjects{revision: cmp.Or(pod["istio.io/rev"], "default"), content: encode(o)}
			}
		}
	}
	// A revision's objects: those labelled with it, besides the tags'.
	for _, o := range objs {
		rev := o.GetLabels()["istio.io/rev"]
		if rev == "" || o.GetLabels()["istio.io/tag"] != "" || o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		if _, gateway := out.gateways[o.GetNamespace()+"/"+o.GetName()]; gateway && o.GetKind() == "Deployment" {
			continue
		}
		if byRev[rev] == nil {
			byRev[rev] = map[string]string{}
		}
		byRev[rev][o.GetKind()+" "+o.GetName()] = encode(o)
	}
	for rev, r := range out.revisions {
		r.objects = byRev[rev]
		var all strings.Builder
		for _, k := range slices.Sorted(maps.Keys(r.objects)) {
			all.WriteString(k + "\x00" + r.objects[k] + "\x00")
		}
		r.content = all.String()
	}
	return out
}

// changed names what differs between two revisions' objects.
func changed(before, after map[string]string) []string {
	var out []string
	for _, k := range union(before, after) {
		switch b, a := before[k], after[k]; {
		case b == "":
			out = append(out, k+" added")
		case a == "":
			out = append(out, k+" removed")
		case a != b:
			out = append(out, k+" changes")
		}
	}
	return out
}

// direction is "upgrade" or "downgrade" from one version to another,
// "change" when they do not compare.
func direction(from, to string) string {
	f, err1 := semver.NewVersion(from)
	t, err2 := semver.NewVersion(to)
	switch {
	case err1 != nil || err2 != nil:
		return "change"
	case t.LessThan(f):
		return "downgrade"
	default:
		return "upgrade"
	}
}

// imageTag is the tag of a Deployment's first container's image.
func imageTag(o *unstructured.Unstructured) string {
	containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		if image, _ := c.(map[string]any)["image"].(string); image != "" {
			if i := strings.LastIndex(image, ":"); i >= 0 {
				return image[i+1:]
			}
		}
	}
	return "unknown"
}

func encode(o *unstructured.Unstructured) string {
	b, _ := json.Marshal(o.Object)
	return string(b)
}

// union is the keys of two maps, sorted.
func union[V any](a, b map[string]V) []string {
	keys := slices.Collect(maps.Keys(a))
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
