package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.io/flotilla/internal/testfleet"
)

// On a bare cluster whose pods kwok runs (kube-controller-manager,
// kube-scheduler and kwok: the local fleet's --workloads), an ambient
// installation runs as Kubernetes runs it: istiod's Deployment Available
// through the Deployment controller with a real istiod serving for it,
// istio-cni's and ztunnel's DaemonSets ready on the node, the gateway
// created only once istiod is available, and the installation Applied.
func TestAnAmbientInstallationRunsOnABareClusterWithWorkloads(t *testing.T) {
	f, err := testfleet.Start(testfleet.Options{Clusters: 1, Bare: 1, Workloads: true, RunIstiods: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	c := f.Clusters()[0]
	kube := kubernetes.NewForConfigOrDie(c.RESTConfig(t))
	ctx := context.Background()

	dir := t.TempDir()
	s := startServer(t, dir)
	intent := fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: %s, organization: acme}
spec: {network: %s}
---
apiVersion: flotilla.io/v1alpha1
kind: IstioInstallation
metadata: {name: ambient, organization: acme}
spec:
  clusters: {names: [%s]}
  version: "1.31"
  profile: ambient
  tags: [default]
  values:
    istiod: {autoscaleEnabled: false, replicaCount: 1}
  gateways:
    - {name: istio-ingressgateway, type: ingress, replicas: 1}
`, c.Name, c.Network, c.Name)
	if r := s.flotilla(intent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	token := strings.TrimSpace(s.must("cluster", "onboard", c.Name))
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.Name, "--token-file", filepath.Join(dir, "token"), "--kubeconfig", c.Kubeconfig, "--istio-lifecycle")

	var available metav1.Time
	eventually(t, 120*time.Second, "istiod's Deployment Available through the Deployment controller", func() error {
		d, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range d.Status.Conditions {
			if cond.Type == appsv1.DeploymentAvailable && cond.Status == corev1.ConditionTrue && d.Status.ReadyReplicas == 1 && d.Status.ObservedGeneration == d.Generation {
				available = cond.LastTransitionTime
				return nil
			}
		}
		return fmt.Errorf("istiod: %+v", d.Status)
	})
	pods, err := kube.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != c.Name+"-node-1" || pods.Items[0].Status.Phase != corev1.PodRunning {
		t.Fatalf("istiod's pod is not running on the kwok node: %v %+v", err, pods)
	}
	eventually(t, 60*time.Second, "a real istiod serving for the Deployment", func() error {
		istiods, err := f.Istiods(c.Name)
		if err != nil || istiods["default"].GRPC == "" {
			return fmt.Errorf("no istiod of revision default (%v, %v)", istiods, err)
		}
		return nil
	})
	for _, name := range []string{"istio-cni-node", "ztunnel"} {
		eventually(t, 60*time.Second, name+"'s DaemonSet ready on the node", func() error {
			ds, err := kube.AppsV1().DaemonSets("istio-system").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if st := ds.Status; st.DesiredNumberScheduled != 1 || st.NumberReady != 1 || st.ObservedGeneration != ds.Generation {
				return fmt.Errorf("%s: %+v", name, st)
			}
			return nil
		})
	}
	d, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ambient := false
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		ambient = ambient || e.Name == "PILOT_ENABLE_AMBIENT" && e.Value == "true"
	}
	if !ambient {
		t.Error("istiod runs without PILOT_ENABLE_AMBIENT")
	}
	eventually(t, 60*time.Second, "the gateway's Deployment, after istiod", func() error {
		gw, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "istio-ingressgateway", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if gw.CreationTimestamp.Before(&available) {
			t.Fatalf("the gateway was created at %s, before istiod was available (%s)", gw.CreationTimestamp, available)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the installation Applied in "+c.Name, func() error {
		if _, rows := s.status("istioinstallation", "ambient"); rows[c.Name].State != "Applied" {
			return fmt.Errorf("status: %+v", rows[c.Name])
		}
		return nil
	})
	eventually(t, 30*time.Second, "describe istio: istiod's ready replica", func() error {
		if out := s.must("describe", "istio", c.Name); !regexpMatch(`istiod: +1/1 ready, version 1\.31\.0`, out) {
			return fmt.Errorf("describe istio:\n%s", out)
		}
		return nil
	})
}
