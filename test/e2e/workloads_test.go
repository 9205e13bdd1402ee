package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"flotilla.io/flotilla/internal/testfleet"
	"flotilla.io/flotilla/internal/testfleet/analyze"
	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

// deploy runs a Deployment of name (app=name) with replicas pods, and its
// Service on port 9080, in namespace shop.
func deploy(t *testing.T, kube kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "example.com/" + name + ":1"}}}}}}
	if _, err := kube.AppsV1().Deployments("shop").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}
	if _, err := kube.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scaleTo(t *testing.T, kube kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	s := &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}, Spec: autoscalingv1.ScaleSpec{Replicas: replicas}}
	cur, err := kube.AppsV1().Deployments("shop").GetScale(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.ResourceVersion = cur.ResourceVersion
	if _, err := kube.AppsV1().Deployments("shop").UpdateScale(context.Background(), name, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The acceptance scenario of fleet discovery on its own three-cluster fleet
// with workloads (kwok runs the pods) and an istiod per cluster: reviews in
// c1 and c2, ratings in c2 only; the registry lists them; c3 gets
// ServiceEntries for both, c1 a WorkloadEntry for reviews in c2 and a
// ServiceEntry for ratings; a sidecar in c1 is told its own pods first and
// c2's east-west gateway after them; one in c3 reaches ratings only through
// c2's gateway; a scale to zero in c2 (the Deployment's scale, as kubectl
// scale does) takes c2 out of the others' config, and back.
func TestThreeClustersWithWorkloadsFollowAScaleToZeroFleetWide(t *testing.T) {
	f, err := testfleet.Start(testfleet.Options{Clusters: 3, Workloads: true, Istio: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	ctx := context.Background()
	kube := map[string]kubernetes.Interface{}
	dyn := map[string]dynamic.Interface{}
	info := map[string]testfleet.Cluster{}
	for i, c := range f.Clusters() {
		kube[c.Name] = kubernetes.NewForConfigOrDie(c.RESTConfig(t))
		dyn[c.Name] = dynamic.NewForConfigOrDie(c.RESTConfig(t))
		info[c.Name] = c
		if _, err := kube[c.Name].CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "eastwest", Labels: map[string]string{"istio": "eastwestgateway"},
			Annotations: map[string]string{"flotilla.io/external-address": fmt.Sprintf("127.0.13.%d", i+1)}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"istio": "eastwestgateway"}, Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}}}}
		if _, err := kube[c.Name].CoreV1().Services("istio-system").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The gateway's pod, which the Gateway Flotilla writes selects.
		(&kcluster{name: c.Name, kube: kube[c.Name]}).runWorkloads(t, workload{namespace: "istio-system", name: "eastwest", labels: map[string]string{"istio": "eastwestgateway"}})
	}
	deploy(t, kube["c1"], "reviews", 2)
	deploy(t, kube["c2"], "reviews", 2)
	deploy(t, kube["c2"], "ratings", 1)

	dir := t.TempDir()
	s := startServer(t, dir)
	intent := strings.Replace(multiclusterIntent, "metadata: {name: c2, organization: acme}\n", "metadata: {name: c2, organization: acme}\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: c3, organization: acme}\n", 1)
	if r := s.flotilla(intent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	for _, c := range f.Clusters() {
		token := strings.TrimSpace(s.must("cluster", "onboard", c.Name))
		if err := os.WriteFile(filepath.Join(dir, c.Name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c.Name, "--token-file", filepath.Join(dir, c.Name+".token"), "--kubeconfig", c.Kubeconfig)
	}

	eventually(t, 90*time.Second, "the registry to list both services with their pods", func() error {
		out := s.must("get", "services", "-o", "yaml")
		for _, want := range []string{"name: reviews", "name: ratings", "cluster: organizations/acme/clusters/c1", "ready: 2"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %q in:\n%s", want, out)
			}
		}
		return nil
	})
	exists := func(cluster, res, ns, name string) error {
		_, err := dyn[cluster].Resource(map[string]schema.GroupVersionResource{"we": workloadEntryGVR, "se": serviceEntryGVR}[res]).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	}
	eventually(t, 60*time.Second, "the failover config in c1 and c3", func() error {
		for _, e := range []struct{ cluster, res, ns, name string }{
			{"c1", "we", "shop", "reviews-c2"}, {"c1", "se", "flotilla-multicluster", "shop-ratings"},
			{"c3", "se", "flotilla-multicluster", "shop-reviews"}, {"c3", "se", "flotilla-multicluster", "shop-ratings"},
			{"c2", "we", "shop", "reviews-c1"},
		} {
			if err := exists(e.cluster, e.res, e.ns, e.name); err != nil {
				return fmt.Errorf("%s: %s %s/%s: %w", e.cluster, e.res, e.ns, e.name, err)
			}
		}
		return nil
	})

	// The data plane. A sidecar in c1 (its locality) gets its own pods at
	// the highest priority and c2's gateway lower; one in c3 reaches
	// ratings only through c2's gateway.
	fetch := func(cluster string, host string) ([]xdsprobe.Endpoint, error) {
		c := info[cluster]
		p := xdsprobe.Proxy{Namespace: "shop", Labels: map[string]string{"app": "productpage"}, Workload: "productpage",
			Cluster: c.Name, Network: c.Network, Region: c.Region, Zone: c.Zone}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		snap, err := xdsprobe.Fetch(fctx, c.Istiod.GRPC, p)
		if err != nil {
			return nil, err
		}
		return snap.EndpointsOf("outbound|9080||" + host + ".shop.svc.cluster.local"), nil
	}
	eventually(t, 60*time.Second, "c1's EDS for reviews: own pods first, c2's gateway after", func() error {
		eps, err := fetch("c1", "reviews")
		if err != nil {
			return err
		}
		local, remote := 0, 0
		for _, e := range eps {
			switch {
			case e.Address == "127.0.13.2:15443" && e.Priority > 0 && e.Region == info["c2"].Region:
				remote++
			case strings.HasPrefix(e.Address, "10.244.") && e.Priority == 0:
				local++
			}
		}
		if local != 2 || remote != 1 {
			return fmt.Errorf("%d local endpoints at priority 0 and %d remote at a lower priority: %+v", local, remote, eps)
		}
		return nil
	})
	eventually(t, 60*time.Second, "c3 reaches ratings only through c2's gateway", func() error {
		eps, err := fetch("c3", "ratings")
		if err != nil {
			return err
		}
		if len(eps) != 1 || eps[0].Address != "127.0.13.2:15443" {
			return fmt.Errorf("c3's EDS for ratings: %+v", eps)
		}
		return nil
	})

	// c2's east-west gateway proxy passes reviews and ratings through by SNI.
	eventually(t, 60*time.Second, "c2's east-west gateway: AUTO_PASSTHROUGH chains for the exposed services", func() error {
		c := info["c2"]
		p := xdsprobe.Proxy{Type: xdsprobe.Gateway, Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"},
			Workload: "eastwest", Cluster: c.Name, Network: c.Network, Region: c.Region, Zone: c.Zone}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		snap, err := xdsprobe.Fetch(fctx, c.Istiod.GRPC, p)
		if err != nil {
			return err
		}
		names := snap.ServerNames(15443)
		for _, want := range []string{"outbound_.9080_._.reviews.shop.svc.cluster.local", "outbound_.9080_._.ratings.shop.svc.cluster.local"} {
			if !slices.Contains(names, want) {
				return fmt.Errorf("no filter chain for SNI %s on 15443: %v", want, names)
			}
		}
		return nil
	})

	// kubectl scale reviews --replicas 0 in c2, then back to 2.
	scaleTo(t, kube["c2"], "reviews", 0)
	eventually(t, 60*time.Second, "c2 out of c1 and c3 after its scale to zero", func() error {
		if err := exists("c1", "we", "shop", "reviews-c2"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("c1 still has reviews-c2: %v", err)
		}
		eps, err := fetch("c3", "reviews")
		if err != nil {
			return err
		}
		for _, e := range eps {
			if e.Address == "127.0.13.2:15443" {
				return fmt.Errorf("c3 still sends reviews to c2: %+v", eps)
			}
		}
		return nil
	})
	scaleTo(t, kube["c2"], "reviews", 2)
	eventually(t, 60*time.Second, "c2 back in c1 after scaling up", func() error {
		return exists("c1", "we", "shop", "reviews-c2")
	})
	for _, c := range f.Clusters() {
		analyze.CheckCluster(t, c.Name, c.RESTConfig(t))
	}
}
