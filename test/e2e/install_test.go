package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/testfleet/agentchart"
)

// The agent installed the way a platform team installs it: `flotilla
// cluster onboard -o helm-values` piped into a Helm install of the agent
// chart. The agent then runs with exactly the chart's identity (a token of
// its ServiceAccount from the TokenRequest API, the pod's arguments), and
// everything it does works under that RBAC, while what it must not do is
// refused by the real API server.
func TestTheAgentChartInstallsAndItsAgentWorksWithItsLeastPrivilege(t *testing.T) {
	c1 := clusters(t)[0]
	ctx := context.Background()
	c1.reset(t, "payments")
	c1.runWorkloads(t, quickstartWorkloads(8080)...) // what the quickstart routes to
	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/quickstart.yaml")

	// onboard -o helm-values | helm install.
	valuesYAML := s.must("cluster", "onboard", c1.name, "-o", "helm-values")
	var values map[string]any
	if err := yaml.Unmarshal([]byte(valuesYAML), &values); err != nil {
		t.Fatalf("helm values: %v\n%s", err, valuesYAML)
	}
	if values["cluster"] != c1.name || values["server"].(map[string]any)["url"] != s.url || !strings.HasPrefix(fmt.Sprint(values["joinToken"]), "flj_") {
		t.Fatalf("onboard -o helm-values:\n%s", valuesYAML)
	}
	agentchart.Install(t, c1.kubeconfig, values)
	// The pod as the chart made it: its arguments, its Secret, its
	// ServiceAccount's token.
	pod := agentchart.PodOf(t, c1.info.RESTConfig(t), dir)
	health, saConfig := pod.Health, pod.Identity
	agent := startProcess(t, dir, nil, pod.Args...)

	t.Run("it converges the intent under its RBAC", func(t *testing.T) {
		eventually(t, 60*time.Second, "the quickstart's VirtualService in "+c1.name, func() error {
			_, err := c1.get(vsGVR, "payments", "shop-shop")
			return err
		})
		eventually(t, 30*time.Second, c1.name+" Applied", func() error {
			if _, rows := s.status("ingressgateway", "shop"); rows[c1.name].State != "Applied" {
				return fmt.Errorf("status: %+v", rows[c1.name])
			}
			return nil
		})
	})
	t.Run("it repairs drift", func(t *testing.T) {
		if err := c1.dyn.Resource(vsGVR).Namespace("payments").Delete(ctx, "shop-shop", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the deleted VirtualService restored", func() error {
			_, err := c1.get(vsGVR, "payments", "shop-shop")
			return err
		})
	})
	t.Run("it reports the cluster's services", func(t *testing.T) {
		eventually(t, 30*time.Second, "payments/api in the registry", func() error {
			if out := s.must("get", "services", "payments/api"); !strings.Contains(out, c1.name) {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
	})
	t.Run("its probes answer without the management plane", func(t *testing.T) {
		probe := func(path string) error {
			res, err := http.Get("http://" + health + path)
			if err != nil {
				return err
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %d %s", path, res.StatusCode, b)
			}
			return nil
		}
		eventually(t, 10*time.Second, "readyz", func() error { return errors.Join(probe("/healthz"), probe("/readyz")) })
		s.kill9()
		// The agent has lost its stream; its probes do not care. Several
		// rounds, so that a probe tied to the stream would have failed.
		for range 5 {
			if err := errors.Join(probe("/healthz"), probe("/readyz")); err != nil {
				t.Fatalf("with the management plane down: %v\nagent log:\n%s", err, agent.log)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Run("what its identity may not do is refused", func(t *testing.T) {
		checkRefused(t, saConfig)
	})
	analyzeClusters(t, c1)
}

// A join token joins once, before it expires; a refused join changes
// nothing in the store.
func TestAUsedOrExpiredJoinTokenIsRefusedAndChangesNothing(t *testing.T) {
	c1 := clusters(t)[0]
	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/quickstart.yaml")
	client := agentv1connect.NewAgentServiceClient(s.client, s.url)
	join := func(token string) error {
		key, err := agentcred.Generate()
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.Join(context.Background(), connect.NewRequest(&agentv1.JoinRequest{Cluster: c1.name, Token: token, PublicKey: key.Public()}))
		return err
	}
	refused := func(token, want string) {
		t.Helper()
		before := tableState(t, dir, "objects", "events", "audit", "credentials")
		err := join(token)
		if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "flotilla cluster onboard") {
			t.Fatalf("join: %v, want refused as %q with what to do", err, want)
		}
		if after := tableState(t, dir, "objects", "events", "audit", "credentials"); after != before {
			t.Fatalf("a refused join changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	}

	used := strings.TrimSpace(s.must("cluster", "onboard", c1.name))
	if err := join(used); err != nil {
		t.Fatalf("first join: %v", err)
	}
	refused(used, "already used")

	r := s.flotilla("", "cluster", "onboard", c1.name, "--ttl", "1s", "--force")
	if r.code != 0 {
		t.Fatalf("onboard --ttl 1s: %+v", r)
	}
	// Wait out the token's life (it ends at a time the server set, so this
	// is not a race), then join.
	time.Sleep(1100 * time.Millisecond)
	refused(strings.TrimSpace(r.stdout), "expired")
}

// checkRefused tries, as the agent's identity, what its RBAC must not
// allow, and wants each refused by the API server as forbidden.
func checkRefused(t *testing.T, cfg *rest.Config) {
	t.Helper()
	ctx := context.Background()
	k := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	patch := []byte(`{"metadata":{"labels":{"taken":"yes"}}}`)
	attempts := []struct {
		what string
		do   func() error
	}{
		{"read a Secret outside its namespace", func() error {
			_, err := k.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"read Secrets in every namespace", func() error {
			_, err := k.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"write a ConfigMap where no intent is", func() error {
			_, err := k.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"write a Secret in a tenant's namespace", func() error {
			_, err := k.CoreV1().Secrets("payments").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"create a namespace", func() error {
			_, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "agent-made"}}, metav1.CreateOptions{})
			return err
		}},
		{"change a workload", func() error {
			_, err := k.AppsV1().Deployments("istio-system").Patch(ctx, "istiod", "application/merge-patch+json", patch, metav1.PatchOptions{})
			return err
		}},
		{"change another CRD", func() error {
			_, err := dyn.Resource(crds).Patch(ctx, "virtualservices.networking.istio.io", "application/merge-patch+json", patch, metav1.PatchOptions{})
			return err
		}},
		{"grant itself cluster-admin", func() error {
			b := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "agent-escalates"},
				RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "flotilla-agent", Namespace: "flotilla-system"}}}
			_, err := k.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{})
			return err
		}},
		{"widen its own Role", func() error {
			_, err := k.RbacV1().Roles("flotilla-system").Patch(ctx, "flotilla-agent", "application/merge-patch+json",
				[]byte(`{"rules":[{"apiGroups":["*"],"resources":["*"],"verbs":["*"]}]}`), metav1.PatchOptions{})
			return err
		}},
		{"impersonate someone", func() error {
			imp := rest.CopyConfig(cfg)
			imp.Impersonate = rest.ImpersonationConfig{UserName: "system:admin"}
			_, err := kubernetes.NewForConfigOrDie(imp).CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	for _, a := range attempts {
		if err := a.do(); !apierrors.IsForbidden(err) {
			t.Errorf("the agent's identity could %s: %v", a.what, err)
		}
	}
	// And the one thing its CRD rule names is all it may touch there.
	if _, err := dyn.Resource(crds).Get(ctx, "bundles.flotilla.io", metav1.GetOptions{}); err != nil {
		t.Errorf("the agent cannot read its own CRD: %v", err)
	}
}

// `onboard -o manifests` is the chart rendered for users without Helm:
// every object passes the real API server's validation (a server-side dry
// run) and carries the cluster's values.
func TestOnboardManifestsPassTheAPIServersDryRun(t *testing.T) {
	c1 := clusters(t)[0]
	ctx := context.Background()
	s := startServer(t, t.TempDir())
	s.must("apply", "-f", "examples/quickstart.yaml")
	out := s.must("cluster", "onboard", c1.name, "-o", "manifests")
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c1.kube.Discovery()))
	kinds := map[string]bool{}
	for _, doc := range strings.Split(out, "\n---\n") {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil || len(obj.Object) == 0 {
			t.Fatalf("document %q: %v", doc, err)
		}
		kinds[obj.GetKind()] = true
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatal(err)
		}
		var r dynamic.ResourceInterface = c1.dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = c1.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
		if obj.GetKind() == "Namespace" {
			// For real: a dry run of the objects in it needs it to exist.
			dry.DryRun = nil
		}
		if _, err = r.Create(ctx, obj, dry); apierrors.IsAlreadyExists(err) {
			err = nil // the namespaces and the CRD the shared clusters have
		}
		if err != nil {
			t.Errorf("%s %s/%s: %v", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
		if obj.GetKind() == "Deployment" {
			args, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
			if a := fmt.Sprint(args[0].(map[string]any)["args"]); !strings.Contains(a, "--cluster="+c1.name) || !strings.Contains(a, "--server="+s.url) {
				t.Errorf("the agent's args: %s", a)
			}
		}
	}
	for _, k := range []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ClusterRole", "Role", "Deployment"} {
		if !kinds[k] {
			t.Errorf("no %s in the manifests", k)
		}
	}
}
