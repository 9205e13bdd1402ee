package xdsprobe_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istio"
	"flotilla.io/flotilla/internal/testfleet"
	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

func TestMain(m *testing.M) {
	testfleet.Main(m, testfleet.Options{Clusters: 1, Istio: true})
}

// apply creates obj (apiVersion, kind, namespace, name, spec) in the
// cluster, replacing an older copy.
func apply(t *testing.T, c testfleet.Cluster, group, version, resource, kind, ns, name string, spec map[string]any) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: group, Version: version, Resource: resource}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": group + "/" + version, "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	ctx := context.Background()
	_ = dyn.Resource(gvr).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if _, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s/%s: %v", kind, ns, name, err)
	}
}

func namespace(t *testing.T, c testfleet.Cluster, name string) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// eventually fetches as p until check passes, for up to 30 s.
func eventually(t *testing.T, c testfleet.Cluster, p xdsprobe.Proxy, what string, check func(*xdsprobe.Snapshot) error) *xdsprobe.Snapshot {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		snap, err := xdsprobe.Fetch(ctx, c.Istiod.GRPC, p)
		cancel()
		if err == nil {
			if last = check(snap); last == nil {
				return snap
			}
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, last)
	return nil
}

func TestAGatewayProxyReceivesTheRouteOfAVirtualServiceBoundToItsGateway(t *testing.T) {
	c := testfleet.Get(t).Clusters()[0]
	if c.Istiod == nil {
		t.Fatal("the fleet has no istiod")
	}
	namespace(t, c, "shop")
	apply(t, c, "networking.istio.io", "v1", "gateways", "Gateway", "shop", "gw", map[string]any{
		"selector": map[string]any{"istio": "ingressgateway"},
		"servers":  []any{map[string]any{"port": map[string]any{"number": int64(80), "name": "http", "protocol": "HTTP"}, "hosts": []any{"shop.example.com"}}},
	})
	apply(t, c, "networking.istio.io", "v1", "virtualservices", "VirtualService", "shop", "shop", map[string]any{
		"hosts": []any{"shop.example.com"}, "gateways": []any{"gw"},
		"http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "web.shop.svc.cluster.local", "port": map[string]any{"number": int64(8080)}}}}}},
	})
	gw := xdsprobe.Proxy{Type: xdsprobe.Gateway, Namespace: "shop", Labels: map[string]string{"istio": "ingressgateway"},
		Workload: "ingressgateway", Cluster: c.Name, Network: c.Network, Region: c.Region, Zone: c.Zone}
	want := []string{"outbound|8080||web.shop.svc.cluster.local"}
	eventually(t, c, gw, "the gateway's route for shop.example.com", func(s *xdsprobe.Snapshot) error {
		if got := s.Upstreams("shop.example.com"); !slices.Equal(got, want) {
			return fmt.Errorf("upstreams %v, want %v (domains %v)", got, want, s.Domains())
		}
		return nil
	})

	// A proxy the Gateway does not select gets no such route.
	other := gw
	other.Labels = map[string]string{"istio": "eastwestgateway"}
	s := eventually(t, c, other, "a gateway the Gateway does not select", func(*xdsprobe.Snapshot) error { return nil })
	if got := s.Upstreams("shop.example.com"); len(got) != 0 {
		t.Fatalf("an unselected gateway received routes for shop.example.com: %v", got)
	}
}

func TestASidecarReceivesEndpointsWithLocalityAndFailoverPriority(t *testing.T) {
	c := testfleet.Get(t).Clusters()[0]
	namespace(t, c, "db")
	apply(t, c, "networking.istio.io", "v1", "serviceentries", "ServiceEntry", "db", "db", map[string]any{
		"hosts":      []any{"db.example.com"},
		"ports":      []any{map[string]any{"number": int64(5432), "name": "tcp", "protocol": "TCP"}},
		"resolution": "STATIC",
		"location":   "MESH_INTERNAL",
		"endpoints": []any{
			map[string]any{"address": "10.1.0.1", "locality": "region-1/zone-1a"},
			map[string]any{"address": "10.2.0.1", "locality": "region-2/zone-2a"},
		},
	})
	apply(t, c, "networking.istio.io", "v1", "destinationrules", "DestinationRule", "db", "db", map[string]any{
		"host": "db.example.com",
		"trafficPolicy": map[string]any{
			"loadBalancer":     map[string]any{"localityLbSetting": map[string]any{"enabled": true}},
			"outlierDetection": map[string]any{"consecutive5xxErrors": int64(3), "interval": "10s", "baseEjectionTime": "30s"},
		},
	})
	sidecar := xdsprobe.Proxy{Namespace: "db", Labels: map[string]string{"app": "client"}, Workload: "client",
		Cluster: c.Name, Network: c.Network, Region: "region-1", Zone: "zone-1a"}
	const name = "outbound|5432||db.example.com"
	s := eventually(t, c, sidecar, "the db endpoints with priorities", func(s *xdsprobe.Snapshot) error {
		eps := s.EndpointsOf(name)
		if len(eps) != 2 {
			return fmt.Errorf("endpoints of %s: %+v", name, eps)
		}
		return nil
	})
	prio := map[string]uint32{}
	for _, e := range s.EndpointsOf(name) {
		prio[e.Region] = e.Priority
		if e.Address != map[string]string{"region-1": "10.1.0.1:5432", "region-2": "10.2.0.1:5432"}[e.Region] {
			t.Errorf("endpoint %+v has the wrong locality", e)
		}
	}
	if !(prio["region-1"] == 0 && prio["region-2"] > 0) {
		t.Fatalf("priorities %v: want the proxy's own region first (0) and the other after", prio)
	}
}

func TestFetchFromNoIstiodFailsWithinItsContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := xdsprobe.Fetch(ctx, "127.0.0.1:1", xdsprobe.Proxy{Namespace: "x"}); err == nil {
		t.Fatal("a fetch from a closed port succeeded")
	}
}

// What the compiler writes for cross-cluster failover is accepted by the
// API server (Istio's CRD schemas) and becomes, through the real istiod, the
// endpoints a sidecar is told: the remote east-west gateway on 15443 with
// the remote locality, for a service that also runs here (WorkloadEntry
// selected by the local Service) and for one that runs only elsewhere
// (ServiceEntry).
func TestFailoverConfigFromTheCompilerReachesASidecarThroughIstiod(t *testing.T) {
	c := testfleet.Get(t).Clusters()[0]
	for _, ns := range []string{"shop", compile.MulticlusterNamespace} {
		namespace(t, c, ns)
	}
	cs, err := kubernetes.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_ = cs.CoreV1().Services("shop").Delete(ctx, "reviews", metav1.DeleteOptions{})
	if _, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	owner := "organizations/acme/tenants/fintech/workspaces/shop/workspacesettings/multicluster"
	remote := bundle.RemoteInstance{Cluster: "c2", Address: "127.0.0.2", Port: 15443, Region: "region-2", Zone: "zone-2a", Ready: 3}
	b := &bundle.Bundle{Cluster: c.Name, Multicluster: &bundle.Multicluster{
		EastWest: []bundle.EastWest{{Owner: owner, Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}, Service: "istio-system/eastwest", Address: "127.0.0.1"}},
		Services: []bundle.RemoteService{
			{Owner: owner, Namespace: "shop", Name: "reviews", Local: true, Selector: map[string]string{"app": "reviews"},
				Ports: []bundle.ServicePort{{Name: "http", Number: 9080, Protocol: "TCP"}}, Remotes: []bundle.RemoteInstance{remote}},
			{Owner: owner, Namespace: "shop", Name: "ratings",
				Ports: []bundle.ServicePort{{Name: "http", Number: 9080, Protocol: "TCP"}}, Remotes: []bundle.RemoteInstance{remote}},
		},
	}}
	res := compile.Compile(b, []string{"istio-system", "shop", compile.MulticlusterNamespace})
	if len(res.Diagnostics) != 0 || len(res.Objects) != 5 {
		t.Fatalf("compiled %d objects with diagnostics %v; want 5 and none", len(res.Objects), res.Diagnostics)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range res.Objects {
		gv, _ := schema.ParseGroupVersion(o.GetAPIVersion())
		gvr := gv.WithResource(map[string]string{"Gateway": "gateways", "WorkloadEntry": "workloadentries", "ServiceEntry": "serviceentries", "DestinationRule": "destinationrules"}[o.GetKind()])
		_ = dyn.Resource(gvr).Namespace(o.GetNamespace()).Delete(ctx, o.GetName(), metav1.DeleteOptions{})
		if _, err := dyn.Resource(gvr).Namespace(o.GetNamespace()).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatalf("the API server refused %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	sidecar := xdsprobe.Proxy{Namespace: "shop", Labels: map[string]string{"app": "productpage"}, Workload: "productpage",
		Cluster: c.Name, Network: c.Network, Region: c.Region, Zone: c.Zone}
	want := xdsprobe.Endpoint{Address: "127.0.0.2:15443", Region: "region-2", Zone: "zone-2a"}
	for _, host := range []string{"reviews", "ratings"} {
		name := "outbound|9080||" + host + ".shop.svc.cluster.local"
		eventually(t, c, sidecar, "the remote gateway in the EDS of "+host, func(s *xdsprobe.Snapshot) error {
			for _, e := range s.EndpointsOf(name) {
				if e.Address == want.Address && e.Region == want.Region && e.Zone == want.Zone {
					return nil
				}
			}
			return fmt.Errorf("endpoints of %s: %+v", name, s.EndpointsOf(name))
		})
	}
}

// settingsBundle is a workspace "secure" whose organization sets mTLS mode
// and NAMESPACE authorization, with a ServiceRoute splitting reviews 90/10.
func settingsBundle(cluster, mtls string) *bundle.Bundle {
	const org, ws = "organizations/acme", "organizations/acme/tenants/t/workspaces/secure"
	group := ws + "/groups/routes"
	return &bundle.Bundle{Cluster: cluster,
		Groups: []bundle.Group{
			{FQN: org, Type: compile.GroupTypeOrganization, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}},
			{FQN: org + "/tenants/t", Type: compile.GroupTypeTenant, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{}},
			{FQN: ws, Type: compile.GroupTypeWorkspace, ConfigMode: compile.ConfigModeBridged, Namespaces: []string{"*/secure"}},
			{FQN: group, Type: "traffic", ConfigMode: compile.ConfigModeBridged, Namespaces: []string{"*/secure"}},
		},
		Objects: []bundle.Object{
			{APIVersion: "flotilla.io/v1alpha1", Kind: compile.KindOrganizationSetting, FQN: org + "/organizationsettings/d", Name: "d", Group: org,
				Spec: []byte(`{"defaultSecuritySetting":{"mtlsMode":"` + mtls + `","authorization":{"mode":"NAMESPACE"}}}`)},
			{APIVersion: "flotilla.io/v1alpha1", Kind: compile.KindServiceRoute, FQN: group + "/serviceroutes/reviews", Name: "reviews", Group: group,
				Spec: []byte(`{"service":"secure/reviews","subsets":[{"name":"v1","labels":{"version":"v1"},"weight":90},{"name":"v2","labels":{"version":"v2"},"weight":10}]}`)},
		},
	}
}

// What the settings compile to is what a sidecar is told: under mTLS
// STRICT its inbound listener takes no plain text (under PERMISSIVE it
// does), NAMESPACE authorization becomes an RBAC filter allowing the
// namespace's service accounts, and a 90/10 ServiceRoute becomes weighted
// clusters 90/10.
func TestSettingsFromTheCompilerReachASidecarThroughIstiod(t *testing.T) {
	c := testfleet.Get(t).Clusters()[0]
	namespace(t, c, "secure")
	cs, err := kubernetes.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_ = cs.CoreV1().Services("secure").Delete(ctx, "reviews", metav1.DeleteOptions{})
	if _, err := cs.CoreV1().Services("secure").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(mtls string) {
		res := compile.Compile(settingsBundle(c.Name, mtls), []string{"secure"})
		if len(res.Diagnostics) != 0 || len(res.Objects) != 4 {
			t.Fatalf("compiled %d objects with diagnostics %v; want 4 and none", len(res.Objects), res.Diagnostics)
		}
		for _, o := range res.Objects {
			k, _ := istio.Lookup(o.GetAPIVersion(), o.GetKind())
			_ = dyn.Resource(k.GVR).Namespace(o.GetNamespace()).Delete(ctx, o.GetName(), metav1.DeleteOptions{})
			if _, err := dyn.Resource(k.GVR).Namespace(o.GetNamespace()).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("the API server refused %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}
	sidecar := xdsprobe.Proxy{Namespace: "secure", Labels: map[string]string{"app": "productpage"}, Workload: "productpage",
		Cluster: c.Name, Network: c.Network, Region: c.Region, Zone: c.Zone}

	deliver("PERMISSIVE")
	eventually(t, c, sidecar, "plain text accepted under PERMISSIVE", func(s *xdsprobe.Snapshot) error {
		if tls, plain := s.InboundChains(); plain == 0 || tls == 0 {
			return fmt.Errorf("inbound chains: %d with TLS, %d plain; want both", tls, plain)
		}
		return nil
	})
	deliver("STRICT")
	eventually(t, c, sidecar, "the sidecar's inbound listener under STRICT", func(s *xdsprobe.Snapshot) error {
		if tls, plain := s.InboundChains(); plain != 0 || tls == 0 {
			var names []string
			for _, fc := range s.Listeners[xdsprobe.InboundListener].GetFilterChains() {
				names = append(names, fmt.Sprintf("%s(tls=%v, match=%v)", fc.GetName(), fc.GetTransportSocket() != nil, fc.GetFilterChainMatch()))
			}
			return fmt.Errorf("inbound chains: %d with TLS, %d plain; want only TLS: %v", tls, plain, names)
		}
		want := []string{"spiffe://cluster.local/ns/secure/sa/"}
		if got := s.InboundPrincipals(); !slices.Equal(got["ALLOW"], want) || len(got["DENY"]) != 0 {
			return fmt.Errorf("RBAC principals %v, want ALLOW %v", got, want)
		}
		const host = "reviews.secure.svc.cluster.local"
		want2 := map[string]uint32{"outbound|9080|v1|" + host: 90, "outbound|9080|v2|" + host: 10}
		if got := s.WeightedClusters(host); !maps.Equal(got, want2) {
			return fmt.Errorf("weighted clusters %v, want %v", got, want2)
		}
		return nil
	})
}
