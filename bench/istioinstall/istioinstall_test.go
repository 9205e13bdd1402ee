// Package istioinstall measures installing Istio into a bare cluster from
// intent (issue 25's "install time from a bare cluster"): a local-fleet
// cluster started without Istio's CRDs, istio-system or istiod; the
// flotilla-agent chart installed with istioLifecycle.enabled and its agent
// run with exactly the chart's arguments and ServiceAccount token; the
// management plane a `flotilla server` child process on SQLite.
//
// One iteration:
//
//	install    apply an IstioInstallation (istiod, an ingress and an east-west
//	           gateway) that selects the cluster → Istio's CRDs served, istiod's
//	           Deployment, its injection webhook and both gateways' Services in
//	           the cluster: seconds, and the agent's CPU seconds
//	remove     the installation made to select no cluster → istiod, the webhook
//	           and the gateways gone, the CRDs released (kept): seconds
//
// The first install creates the CRDs; later ones take back the released
// ones. Results are in docs/benchmarks.md.
//
//	make fleet && go test -run '^$' -bench . -benchtime 5x -timeout 30m ./bench/istioinstall/
package istioinstall

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"flotilla.io/flotilla/bench/internal/harness"
	"flotilla.io/flotilla/deploy/charts"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/testauth"
	"flotilla.io/flotilla/internal/testfleet"
	"flotilla.io/flotilla/internal/testfleet/agentchart"
)

// TestMain starts one bare cluster, only when benchmarks are asked for.
func TestMain(m *testing.M) { harness.FleetMain(m, testfleet.Options{Clusters: 1, Bare: 1}) }

const converge = 3 * time.Minute // bound on an install or a removal reaching the cluster

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	depGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	mwcGVR = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}
	svcGVR = schema.GroupVersionResource{Version: "v1", Resource: "services"}
)

func installation(clusters []any) *pb.Resource {
	return harness.Resource("IstioInstallation", &pb.Metadata{Name: "stable", Organization: "acme"}, map[string]any{
		"clusters": map[string]any{"names": clusters}, "version": "1.31", "tags": []any{"default"},
		"gateways": []any{map[string]any{"name": "istio-ingressgateway", "type": "ingress"}, map[string]any{"name": "istio-eastwestgateway", "type": "eastwest"}},
	})
}

func BenchmarkInstallIstioIntoABareCluster(b *testing.B) {
	ctx := context.Background()
	c1 := testfleet.Get(b).Cluster(b, "c1")
	admin := c1.RESTConfig(b)
	dyn := dynamic.NewForConfigOrDie(admin)
	dir := b.TempDir()
	srv := harness.StartServer(b, dir)
	api := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, srv.URL, testauth.Bearer(srv.Token))
	fleet := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, srv.URL, testauth.Bearer(srv.Token))
	apply := func(rs ...*pb.Resource) {
		if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
			b.Fatalf("apply: %v", err)
		}
	}
	apply(harness.Resource("Organization", &pb.Metadata{Name: "acme"}, nil),
		harness.Resource("Cluster", &pb.Metadata{Name: c1.Name, Organization: "acme"}, map[string]any{"network": "net1"}))
	tok, err := fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: c1.Name, Organization: "acme"}}))
	if err != nil {
		b.Fatalf("onboard %s: %v", c1.Name, err)
	}
	values := charts.AgentValues(c1.Name, srv.URL, "", tok.Msg.GetToken())
	values["istioLifecycle"] = map[string]any{"enabled": true}
	agentchart.Install(b, c1.Kubeconfig, values)
	agent := harness.StartProcess(b, filepath.Join(dir, "agent.log"), agentchart.PodOf(b, admin, dir).Args...)

	get := func(gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
		if ns == "" {
			return dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		}
		return dyn.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	}
	installed := func() error {
		crd, err := get(crdGVR, "", "virtualservices.networking.istio.io")
		if err != nil {
			return err
		}
		if conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions"); !strings.Contains(fmt.Sprint(conds), "type:Established") ||
			crd.GetLabels()["app.kubernetes.io/managed-by"] != "flotilla" {
			return fmt.Errorf("the VirtualService CRD is not established and Flotilla's")
		}
		for _, o := range [][3]string{{"deployments", "istio-system", "istiod"}, {"mutatingwebhookconfigurations", "", "istio-sidecar-injector"},
			{"services", "istio-system", "istio-ingressgateway"}, {"services", "istio-system", "istio-eastwestgateway"}} {
			gvr := map[string]schema.GroupVersionResource{"deployments": depGVR, "mutatingwebhookconfigurations": mwcGVR, "services": svcGVR}[o[0]]
			if _, err := get(gvr, o[1], o[2]); err != nil {
				return err
			}
		}
		return nil
	}
	removed := func() error {
		for _, o := range []struct {
			gvr      schema.GroupVersionResource
			ns, name string
		}{{depGVR, "istio-system", "istiod"}, {mwcGVR, "", "istio-sidecar-injector"}, {svcGVR, "istio-system", "istio-eastwestgateway"}} {
			if _, err := get(o.gvr, o.ns, o.name); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s %s still there (%v)", o.gvr.Resource, o.name, err)
			}
		}
		return nil
	}
	// waitFor polls every 100 ms until cond holds; it returns when it did.
	waitFor := func(what string, cond func() error) time.Time {
		var err error
		for deadline := time.Now().Add(converge); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if err = cond(); err == nil {
				return time.Now()
			}
			agent.Alive()
		}
		b.Fatalf("%s: not within %s: %v\nagent log:\n%s", what, converge, err, agent.LogTail())
		return time.Time{}
	}

	var sumInstall, sumCPU, sumRemove float64
	n := 0
	for b.Loop() {
		cpu0, start := agent.CPU(), time.Now()
		apply(installation([]any{c1.Name}))
		install := waitFor("Istio installed", installed).Sub(start).Seconds()
		cpu := agent.CPU() - cpu0
		start = time.Now()
		apply(installation([]any{"nowhere"}))
		remove := waitFor("Istio removed", removed).Sub(start).Seconds()
		b.Logf("sample %d: install %.2f s (%.2f agent CPU-s), remove %.2f s", n, install, cpu, remove)
		sumInstall, sumCPU, sumRemove = sumInstall+install, sumCPU+cpu, sumRemove+remove
		n++
	}
	b.ReportMetric(sumInstall/float64(n), "install-s")
	b.ReportMetric(sumCPU/float64(n), "install-agent-cpu-s")
	b.ReportMetric(sumRemove/float64(n), "remove-s")
	b.ReportMetric(0, "ns/op") // an iteration is an install and a removal: its ns/op means nothing
}
