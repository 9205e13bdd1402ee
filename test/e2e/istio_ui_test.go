package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stableForC2 is an IstioInstallation that selects c2.
const stableForC2 = `apiVersion: flotilla.io/v1alpha1
kind: IstioInstallation
metadata: {name: stable, organization: acme}
spec:
  clusters: {names: [c2]}
  version: "1.31"
  values:
    istiod: {autoscaleEnabled: false, replicaCount: 1}
`

// The cluster page of the web UI shows the cluster's Istio as `flotilla
// get istio` does, in a real browser (web/tests/istio.mjs). c1 runs an
// istiod Deployment of revision canary with 2 replicas, made here as
// Istio's chart makes it (the local fleet runs a real istiod for it and,
// having no controller manager, writes the Deployment's status as the
// Deployment controller would: every replica ready while that istiod is),
// its injection webhook, the revision tag prod-canary, and one pod it
// injected; c1's agent manages Istio's lifecycle, so it reports the
// webhooks and tags. The page shows the revision's version, tags, ready and
// desired replicas, proxies and webhooks, and that no IstioInstallation
// wants it. c2 runs no istiod: the page says so; once an IstioInstallation
// selects c2, whose agent does not manage Istio's lifecycle, the page shows
// the revision it wants, not running, and its error, without a reload.
func TestWebUIClusterPageShowsEachIstioRevisionAndWhetherFlotillaManagesIt(t *testing.T) {
	requireUI(t)
	cs := clusters(t)
	c1, c2 := cs[0], cs[1]
	for _, c := range cs[:2] {
		c.reset(t, "default")
	}
	runCanaryRevision(t, c1)
	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/fleet.yaml")
	// c1's agent, with --istio-lifecycle: only such an agent reads webhooks.
	token := strings.TrimSpace(s.must("cluster", "onboard", c1.name))
	file := filepath.Join(dir, c1.name+".token")
	if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c1.name, "--token-file", file, "--kubeconfig", c1.kubeconfig, "--istio-lifecycle")
	s.onboard(t, dir, c2)
	credential, err := os.ReadFile(bootstrapFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	out := runBrowser(t, "tests/istio.mjs", []string{"FLOTILLA_URL=" + s.url, "FLOTILLA_CREDENTIAL=" + strings.TrimSpace(string(credential)), "FLOTILLA_SCREENSHOTS=" + os.Getenv("FLOTILLA_UI_SCREENSHOTS")}, func(line string) string {
		if line != "INSTALL" {
			return ""
		}
		if r := s.flotilla(stableForC2, "apply", "-f", "-"); r.code != 0 {
			t.Errorf("apply the IstioInstallation for c2: %+v", r)
		}
		return "installed"
	})
	if !strings.Contains(out, "ok - no page broke its Content Security Policy") {
		t.Fatalf("the browser test stopped early:\n%s", out)
	}
}

// runCanaryRevision makes c the cluster of an Istio revision canary, until
// the test ends: istiod-canary's Deployment in istio-system (2 replicas,
// whose status the local fleet writes), its injection webhook and the revision tag prod-canary's (both
// without webhooks: nothing in c is injected by them), and a pod the
// revision injected.
func runCanaryRevision(t *testing.T, c *kcluster) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "istiod", "istio.io/rev": "canary"}
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod-canary", Namespace: "istio-system", Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "docker.io/istio/pilot:1.31.0", Args: []string{"discovery"}}}}}},
	}
	deps := c.kube.AppsV1().Deployments("istio-system")
	if _, err := deps.Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deps.Delete(context.Background(), dep.Name, metav1.DeleteOptions{}) })
	hooks := c.kube.AdmissionregistrationV1().MutatingWebhookConfigurations()
	for name, l := range map[string]map[string]string{
		"istio-sidecar-injector-canary":  {"istio.io/rev": "canary"},
		"istio-revision-tag-prod-canary": {"istio.io/rev": "canary", "istio.io/tag": "prod-canary"},
	} {
		if _, err := hooks.Create(ctx, &admissionv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hooks.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	c.runWorkloads(t, workload{namespace: "default", name: "injected-by-canary", labels: map[string]string{"app": "web", "istio.io/rev": "canary"}})
}
