package agent

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.io/flotilla/internal/agent/apply"
	"flotilla.io/flotilla/internal/compile"
)

// Istio upgrades a gateway after its control plane: a gateway's pods are
// injected by their revision's webhook, which its istiod serves, so a
// gateway that moved first would have pods that cannot start, or start on
// a template the old istiod wrote. The agent therefore holds (apply's
// HoldAnnotation) every Deployment an IstioInstallation rendered whose pods
// a revision injects, until that revision's istiod Deployment has rolled out
// at the content desired now.

// injectLabel marks pods that Istio's webhook injects (gateways).
const injectLabel = "sidecar.istio.io/inject"

// gateRecheck is how soon the agent reconciles again while it holds
// something back for an istiod.
const gateRecheck = 2 * time.Second

// holdGateways marks, among objs, the injected Deployments of
// IstioInstallations that would change while their revision's istiod is
// not rolled out, and returns how many it marked. objs are the compiler's:
// marking changes them.
func (a *Agent) holdGateways(ctx context.Context, objs []*unstructured.Unstructured) int {
	istiods := map[string]*unstructured.Unstructured{} // revision → desired istiod
	for _, o := range objs {
		if installed(o) && o.GetLabels()["app"] == "istiod" {
			istiods[cmp.Or(o.GetLabels()[revisionLabel], "default")] = o
		}
	}
	waits := map[string]string{} // revision → why its istiod is not ready ("" when it is)
	held := 0
	for _, o := range objs {
		if !installed(o) {
			continue
		}
		pod, _, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "labels")
		if pod[injectLabel] != "true" {
			continue
		}
		rev := cmp.Or(pod[revisionLabel], "default")
		istiod := istiods[rev]
		if istiod == nil {
			continue // a revision Flotilla does not install here: nothing to wait for
		}
		why, seen := waits[rev]
		if !seen {
			why = a.notRolledOut(ctx, istiod)
			waits[rev] = why
		}
		if why == "" || a.holds(ctx, o) {
			continue
		}
		ann := o.GetAnnotations()
		ann[apply.HoldAnnotation] = fmt.Sprintf("waits for revision %s's istiod, which Istio upgrades first: %s", rev, why)
		o.SetAnnotations(ann)
		held++
	}
	return held
}

// holds reports whether the cluster already holds o as desired now: then
// there is nothing to wait for.
func (a *Agent) holds(ctx context.Context, o *unstructured.Unstructured) bool {
	want, err := apply.DesiredHash(o)
	if err != nil {
		return false
	}
	live, err := a.kube.AppsV1().Deployments(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
	return err == nil && live.Annotations[apply.HashAnnotation] == want
}

// installed reports whether o is a Deployment an IstioInstallation rendered.
func installed(o *unstructured.Unstructured) bool {
	return o.GetKind() == "Deployment" && o.GroupVersionKind().Group == "apps" &&
		strings.Contains(o.GetAnnotations()[compile.AnnotationOwner], "/istioinstallations/")
}

// notRolledOut says why the cluster's istiod Deployment is not the desired
// one, rolled out and available, or "" when it is.
func (a *Agent) notRolledOut(ctx context.Context, desired *unstructured.Unstructured) string {
	name := desired.GetNamespace() + "/" + desired.GetName()
	want, err := apply.DesiredHash(desired)
	if err != nil {
		return err.Error()
	}
	live, err := a.kube.AppsV1().Deployments(desired.GetNamespace()).Get(ctx, desired.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("Deployment %s is not created yet", name)
	case err != nil:
		return fmt.Sprintf("read Deployment %s: %v", name, err)
	case live.Annotations[apply.HashAnnotation] != want:
		return fmt.Sprintf("Deployment %s is not at its new content yet", name)
	}
	return rolloutPending(live)
}

// rolloutPending says why a Deployment's rollout is not complete, as
// `kubectl rollout status` judges it, or "" when it is.
func rolloutPending(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	name := d.Namespace + "/" + d.Name
	switch {
	case s.ObservedGeneration < d.Generation:
		return fmt.Sprintf("Deployment %s's controller has not seen generation %d yet", name, d.Generation)
	case want == 0:
		return fmt.Sprintf("Deployment %s has no replicas", name)
	case s.UpdatedReplicas < want:
		return fmt.Sprintf("Deployment %s has %d of %d replicas updated", name, s.UpdatedReplicas, want)
	case s.Replicas > s.UpdatedReplicas:
		return fmt.Sprintf("Deployment %s still has %d old replicas", name, s.Replicas-s.UpdatedReplicas)
	case s.AvailableReplicas < want:
		return fmt.Sprintf("Deployment %s has %d of %d replicas available", name, s.AvailableReplicas, want)
	}
	return ""
}
