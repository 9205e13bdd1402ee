package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

// IstioReportInterval is how often the agent looks at Istio's control
// plane in its cluster, and reports it when it changed.
const IstioReportInterval = 10 * time.Second

// Istio's labels and annotation on what a revision owns or injected.
const (
	revisionLabel    = "istio.io/rev"
	tagLabel         = "istio.io/tag"
	sidecarStatusKey = "sidecar.istio.io/status"
)

// istioState reports Istio's control plane in the cluster: whether istiod
// runs and at which version (the first revision's), and each revision of
// it, with the injection webhooks and revision tags that name it (when the
// agent may read them: webhooks) and the proxies it injected (proxies: by
// revision, from the pods the agent watches).
func istioState(ctx context.Context, kube kubernetes.Interface, webhooks bool, proxies map[string]int32) *agentv1.Istio {
	deps, err := kube.AppsV1().Deployments(IstiodNamespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app": "istiod"}.String()})
	if err != nil && !apierrors.IsNotFound(err) || err == nil && len(deps.Items) == 0 {
		d, gerr := kube.AppsV1().Deployments(IstiodNamespace).Get(ctx, "istiod", metav1.GetOptions{})
		if gerr != nil {
			return &agentv1.Istio{Installed: false}
		}
		deps = &appsv1.DeploymentList{Items: []appsv1.Deployment{*d}}
	}
	if err != nil {
		return &agentv1.Istio{Installed: false}
	}
	out := &agentv1.Istio{Installed: true}
	byName := map[string]*agentv1.IstioRevision{}
	for _, d := range deps.Items {
		rev := &agentv1.IstioRevision{Name: cmp.Or(d.Labels[revisionLabel], "default"), Version: imageVersion(d), ReadyReplicas: d.Status.ReadyReplicas}
		if d.Spec.Replicas != nil {
			rev.Replicas = *d.Spec.Replicas
		}
		if _, dup := byName[rev.Name]; !dup {
			byName[rev.Name] = rev
			out.Revisions = append(out.Revisions, rev)
		}
	}
	// The webhooks: each revision's injector, and the revision tags'. Only
	// an agent that manages Istio's lifecycle may read them.
	if webhooks {
		hooks, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: revisionLabel})
		for _, h := range hooksOf(hooks, err) {
			rev := byName[h.Labels[revisionLabel]]
			if rev == nil {
				continue
			}
			rev.Webhooks = append(rev.Webhooks, h.Name)
			if t := h.Labels[tagLabel]; t != "" {
				rev.Tags = append(rev.Tags, t)
			}
		}
	}
	for _, rev := range out.Revisions {
		rev.Proxies = proxies[rev.Name]
		slices.Sort(rev.Webhooks)
		slices.Sort(rev.Tags)
		rev.Tags = slices.Compact(rev.Tags)
	}
	slices.SortFunc(out.Revisions, func(a, b *agentv1.IstioRevision) int { return strings.Compare(a.Name, b.Name) })
	out.Version = out.Revisions[0].Version
	if d := byName["default"]; d != nil {
		out.Version = d.Version
	}
	return out
}

// hooksOf is the webhooks listed, none when the list failed.
func hooksOf(l *admissionv1.MutatingWebhookConfigurationList, err error) []admissionv1.MutatingWebhookConfiguration {
	if err != nil {
		return nil
	}
	return l.Items
}

// imageVersion is a Deployment's app.kubernetes.io/version label, or its
// first image's tag.
func imageVersion(d appsv1.Deployment) string {
	if v := d.Labels["app.kubernetes.io/version"]; v != "" {
		return v
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if i := strings.LastIndex(c.Image, ":"); i >= 0 {
			return c.Image[i+1:]
		}
	}
	return ""
}

// proxyRevision is the revision that injected a pod: the one its sidecar
// status annotation names, else its istio.io/rev label; empty for a pod
// without a sidecar.
func proxyRevision(labels, annotations map[string]string) string {
	if s := annotations[sidecarStatusKey]; s != "" {
		var status struct {
			Revision string `json:"revision"`
		}
		if json.Unmarshal([]byte(s), &status) == nil {
			return cmp.Or(status.Revision, "default")
		}
	}
	return labels[revisionLabel]
}

// istioLoop reports Istio's state every IstioReportInterval when it
// changed since the last report (full or delta).
func (w *inventoryWatch) istioLoop(ctx context.Context) {
	t := time.NewTicker(IstioReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := istioState(ctx, w.kube, w.webhooks, w.proxies())
		w.mu.Lock()
		same := proto.Equal(now, w.lastIstio)
		if !same {
			w.lastIstio = now
		}
		w.mu.Unlock()
		if !same {
			w.send(&agentv1.Inventory{Istio: now})
		}
	}
}
