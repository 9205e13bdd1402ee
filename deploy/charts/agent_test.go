package charts

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/agent"
	"flotilla.io/flotilla/internal/testfleet"
)

// agentValues are the values `flotilla cluster onboard -o helm-values`
// gives: the least an install needs.
func agentValues() map[string]any {
	return map[string]any{
		"cluster":   "c1",
		"server":    map[string]any{"url": "https://flotilla.example.com"},
		"joinToken": "fjt_example",
	}
}

// everyAgentValue sets every value values.yaml documents to something
// other than its default.
func everyAgentValue() map[string]any {
	return map[string]any{
		"cluster":          "c1",
		"server":           map[string]any{"url": "https://a.example.com,https://b.example.com", "ca": testCA},
		"joinToken":        "fjt_example",
		"image":            map[string]any{"repository": "registry.example.com/flotilla", "tag": "v9", "digest": "sha256:" + strings.Repeat("ab", 32), "pullPolicy": "Always"},
		"imagePullSecrets": []any{map[string]any{"name": "pull"}},
		"logLevel":         "debug",
		"kubeQPS":          20,
		"kubeBurst":        40,
		"resources":        map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "128Mi"}, "limits": map[string]any{"memory": "1Gi"}},
		"healthPort":       9090,
		"istioNamespace":   "istio-system",
		"istioLifecycle":   map[string]any{"enabled": true},
		"networkPolicy": map[string]any{"enabled": true,
			"managementPlane": map[string]any{"cidrs": []any{"192.0.2.0/24"}, "port": 8443},
			"apiServer":       map[string]any{"cidrs": []any{"198.51.100.10/32"}, "port": 443}},
		"podAnnotations":    map[string]any{"example.com/team": "platform"},
		"podLabels":         map[string]any{"team": "platform"},
		"nodeSelector":      map[string]any{"kubernetes.io/os": "linux"},
		"tolerations":       []any{map[string]any{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}},
		"affinity":          map[string]any{"nodeAffinity": map[string]any{}},
		"priorityClassName": "system-cluster-critical",
	}
}

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func renderAgent(t *testing.T, namespace string, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	c, err := Load(Agent)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(c, "flotilla-agent", namespace, values)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

// decode splits a YAML stream into objects.
func decode(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(stream, "\n---") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, namespace string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace {
			return o
		}
	}
	return nil
}

func TestAgentChartLints(t *testing.T) {
	for name, values := range map[string]map[string]any{"defaults": agentValues(), "every value": everyAgentValue()} {
		t.Run(name, func(t *testing.T) {
			res := lintChart("flotilla-agent", values, AgentNamespace)
			for _, m := range res {
				t.Errorf("helm lint: %s", m)
			}
		})
	}
}

func TestAgentChartRendersWithDefaultsAndWithEveryValue(t *testing.T) {
	objs := renderAgent(t, AgentNamespace, agentValues())
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	slices.Sort(kinds)
	want := []string{"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Namespace", "Role", "Role", "RoleBinding", "RoleBinding", "Secret", "ServiceAccount"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds with the defaults: %v, want %v", kinds, want)
	}
	d := find(objs, "Deployment", AgentNamespace)
	args, _, _ := unstructured.NestedStringSlice(containerOf(t, d), "args")
	for _, a := range []string{"agent", "--server=https://flotilla.example.com", "--cluster=c1", "--token-file=/var/run/flotilla/join/token", "--health-listen=:8081"} {
		if !slices.Contains(args, a) {
			t.Errorf("agent args %v lack %s", args, a)
		}
	}
	if image, _, _ := unstructured.NestedString(containerOf(t, d), "image"); image != "flotilla:0.1.0" {
		t.Errorf("default image %q, want flotilla:<appVersion>", image)
	}

	objs = renderAgent(t, AgentNamespace, everyAgentValue())
	d = find(objs, "Deployment", AgentNamespace)
	c := containerOf(t, d)
	if image, _, _ := unstructured.NestedString(c, "image"); image != "registry.example.com/flotilla@sha256:"+strings.Repeat("ab", 32) {
		t.Errorf("image %q: the digest should win over the tag", image)
	}
	args, _, _ = unstructured.NestedStringSlice(c, "args")
	for _, a := range []string{"--ca-file=/var/run/flotilla/ca/ca.crt", "--health-listen=:9090", "--log-level=debug", "--kube-qps=20", "--server=https://a.example.com,https://b.example.com"} {
		if !slices.Contains(args, a) {
			t.Errorf("agent args %v lack %s", args, a)
		}
	}
	if np := find(objs, "NetworkPolicy", AgentNamespace); np == nil {
		t.Error("networkPolicy.enabled rendered no NetworkPolicy")
	}
	if cm := find(objs, "ConfigMap", AgentNamespace); cm == nil {
		t.Error("server.ca rendered no ConfigMap")
	} else if ca, _, _ := unstructured.NestedString(cm.Object, "data", "ca.crt"); ca != testCA {
		t.Errorf("CA in the ConfigMap: %q", ca)
	}
	if s := find(objs, "Secret", AgentNamespace); s == nil {
		t.Error("no Secret for the join token")
	} else if tok, _, _ := unstructured.NestedString(s.Object, "stringData", "token"); tok != "fjt_example" {
		t.Errorf("join token in the Secret: %q", tok)
	}

	// With a Secret of one's own, the chart writes none.
	v := agentValues()
	delete(v, "joinToken")
	v["existingSecret"] = "my-token"
	objs = renderAgent(t, AgentNamespace, v)
	if s := find(objs, "Secret", AgentNamespace); s != nil {
		t.Errorf("existingSecret still rendered Secret %s", s.GetName())
	}
	vols, _, _ := unstructured.NestedSlice(find(objs, "Deployment", AgentNamespace).Object, "spec", "template", "spec", "volumes")
	if name, _, _ := unstructured.NestedString(vols[0].(map[string]any), "secret", "secretName"); name != "my-token" {
		t.Errorf("the token volume mounts secret %q, want my-token", name)
	}
}

func containerOf(t *testing.T, d *unstructured.Unstructured) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("containers: %v", cs)
	}
	return cs[0].(map[string]any)
}

// Bad values are refused with the key named, by the schema (types,
// unknown keys, enums) or by the chart's own checks (what the schema cannot
// say).
func TestAgentChartRefusesBadValuesNamingTheKey(t *testing.T) {
	c, err := Load(Agent)
	if err != nil {
		t.Fatal(err)
	}
	set := func(k string, v any) map[string]any { m := agentValues(); m[k] = v; return m }
	cases := []struct {
		name      string
		namespace string
		values    map[string]any
		want      []string
	}{
		{"a wrong type", AgentNamespace, set("kubeQPS", "fast"), []string{"kubeQPS", "number"}},
		{"an unknown key", AgentNamespace, set("clustr", "c1"), []string{"clustr", "additional"}},
		{"an unknown nested key", AgentNamespace, set("server", map[string]any{"url": "https://x.example.com", "uri": "x"}), []string{"server", "uri"}},
		{"a value outside its enum", AgentNamespace, set("logLevel", "loud"), []string{"logLevel"}},
		{"a bad port", AgentNamespace, set("healthPort", 70000), []string{"healthPort"}},
		{"a URL without its scheme", AgentNamespace, set("server", map[string]any{"url": "flotilla.example.com"}), []string{"server", "url"}},
		{"no cluster", AgentNamespace, set("cluster", ""), []string{"cluster: required"}},
		{"no token", AgentNamespace, set("joinToken", ""), []string{"joinToken: required"}},
		{"another namespace", "default", agentValues(), []string{`namespace "default"`, "-n flotilla-system"}},
		{"a network policy without addresses", AgentNamespace, set("networkPolicy", map[string]any{"enabled": true}), []string{"networkPolicy.managementPlane.cidrs"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(c, "flotilla-agent", tc.namespace, tc.values)
			if err == nil {
				t.Fatal("rendered")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

// The chart grants the agent what internal/agent.Permissions lists, no
// more and no less.
func TestAgentChartGrantsExactlyThePermissionsOfTheCode(t *testing.T) {
	objs := renderAgent(t, AgentNamespace, agentValues())
	type scoped struct {
		Namespace string
		Rule      rbacv1.PolicyRule
	}
	var got, want []scoped
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		var role rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
			t.Fatal(err)
		}
		for _, r := range role.Rules {
			got = append(got, scoped{o.GetNamespace(), r})
		}
	}
	for _, p := range agent.Permissions() {
		want = append(want, scoped{p.Namespace, p.Rule})
	}
	key := func(s scoped) string {
		return s.Namespace + "|" + strings.Join(s.Rule.APIGroups, ",") + "|" + strings.Join(s.Rule.Resources, ",")
	}
	byKey := func(a, b scoped) int { return cmp.Compare(key(a), key(b)) }
	slices.SortFunc(got, byKey)
	slices.SortFunc(want, byKey)
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Fatalf("the chart's RBAC differs from agent.Permissions (-code +chart):\n%s", diff)
	}
	// The bindings name the chart's ServiceAccount, in the agent's namespace.
	for _, o := range objs {
		if o.GetKind() == "ClusterRoleBinding" || o.GetKind() == "RoleBinding" {
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			s := subjects[0].(map[string]any)
			if len(subjects) != 1 || s["name"] != "flotilla-agent" || s["namespace"] != AgentNamespace {
				t.Errorf("%s %s binds %v", o.GetKind(), o.GetName(), subjects)
			}
		}
	}
}

// With istioLifecycle.enabled, the chart grants besides them exactly
// internal/agent.LifecyclePermissions, in a ClusterRole of its own, and
// starts the agent with --istio-lifecycle; without, neither.
func TestAgentChartGrantsTheLifecyclePermissionsOnlyWhenAskedTo(t *testing.T) {
	lifecycle := func(objs []*unstructured.Unstructured) ([]rbacv1.PolicyRule, bool) {
		var rules []rbacv1.PolicyRule
		for _, o := range objs {
			if o.GetKind() != "ClusterRole" || o.GetName() != "flotilla-agent-istio-lifecycle" {
				continue
			}
			var role rbacv1.ClusterRole
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
				t.Fatal(err)
			}
			rules = role.Rules
		}
		dep := find(objs, "Deployment", AgentNamespace)
		containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
		args := fmt.Sprint(containers[0].(map[string]any)["args"])
		return rules, strings.Contains(args, "--istio-lifecycle")
	}
	if rules, flag := lifecycle(renderAgent(t, AgentNamespace, agentValues())); rules != nil || flag {
		t.Fatalf("off by default, yet rules %v, flag %v", rules, flag)
	}
	values := agentValues()
	values["istioLifecycle"] = map[string]any{"enabled": true}
	rules, flag := lifecycle(renderAgent(t, AgentNamespace, values))
	var want []rbacv1.PolicyRule
	for _, p := range agent.LifecyclePermissions() {
		want = append(want, p.Rule)
	}
	if diff := gocmp.Diff(want, rules); diff != "" || !flag {
		t.Fatalf("the lifecycle ClusterRole differs from agent.LifecyclePermissions (-code +chart), flag %v:\n%s", flag, diff)
	}
}

// The chart's CRD is the one the agent keeps current.
func TestAgentChartShipsTheAgentsBundleCRD(t *testing.T) {
	crd := find(renderAgent(t, AgentNamespace, agentValues()), "CustomResourceDefinition", "")
	if crd == nil {
		t.Fatal("no CRD rendered")
	}
	if diff := gocmp.Diff(agent.BundleCRD().Object, crd.Object); diff != "" {
		t.Fatalf("crds/ differs from agent.BundleCRD (-code +chart):\n%s", diff)
	}
}

func TestMain(m *testing.M) {
	testfleet.Main(m, testfleet.Options{Clusters: 1})
}

// Every rendered manifest passes the real API server's validation
// (server-side dry run), and the agent's pod passes Pod Security
// admission's restricted profile.
func TestAgentChartPassesTheAPIServersDryRunAndTheRestrictedProfile(t *testing.T) {
	f := testfleet.Get(t)
	c := f.Clusters()[0]
	k := newKube(t, c.RESTConfig(t))
	ctx := context.Background()
	// The restricted profile, enforced on the agent's namespace; the
	// Istio namespace, where it has a Role, exists.
	k.ensureNamespace(t, AgentNamespace, map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"})
	k.ensureNamespace(t, "istio-system", nil)
	// A pod's admission looks its ServiceAccount up, so that one is real.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "flotilla-agent", Namespace: AgentNamespace}}
	if _, err := k.typed.CoreV1().ServiceAccounts(AgentNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	for name, values := range map[string]map[string]any{"defaults": agentValues(), "every value": everyAgentValue()} {
		t.Run(name, func(t *testing.T) {
			objs := renderAgent(t, AgentNamespace, values)
			for _, o := range objs {
				if err := k.dryRun(ctx, o); err != nil {
					t.Errorf("%s %s/%s refused by the API server: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
			// Admission judges a Deployment's pods when they are made: the
			// pod its template makes, dry-run in the restricted namespace.
			pod := podOf(t, find(objs, "Deployment", AgentNamespace))
			if err := k.dryRun(ctx, pod); err != nil {
				t.Errorf("the agent's pod is refused by the restricted profile: %v", err)
			}
		})
	}

	// The check can fail: a pod that may escalate is refused there.
	pod := podOf(t, find(renderAgent(t, AgentNamespace, agentValues()), "Deployment", AgentNamespace))
	cs, _, _ := unstructured.NestedSlice(pod.Object, "spec", "containers")
	unstructured.SetNestedField(cs[0].(map[string]any), true, "securityContext", "allowPrivilegeEscalation")
	unstructured.SetNestedSlice(pod.Object, cs, "spec", "containers")
	if err := k.dryRun(ctx, pod); err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
		t.Fatalf("a pod with allowPrivilegeEscalation: %v, want refused by the restricted profile", err)
	}
}

// podOf is the pod a Deployment's template makes.
func podOf(t *testing.T, d *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	tmpl, _, _ := unstructured.NestedMap(d.Object, "spec", "template")
	var pt corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pt); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: pt.ObjectMeta, Spec: pt.Spec}
	pod.Name, pod.Namespace = d.GetName()+"-pod", d.GetNamespace()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// docs/install.md's table of the agent's permissions is the list in the
// code: one row per rule, with its scope, resources and verbs.
func TestTheInstallGuidesPermissionTableIsTheCodes(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Split(line, " | "); len(f) == 5 && (strings.HasPrefix(line, "| cluster |") || strings.HasPrefix(line, "| `")) {
			rows = append(rows, line)
		}
	}
	if len(rows) != len(agent.Permissions()) {
		t.Errorf("%d rows in the table, %d permissions in the code", len(rows), len(agent.Permissions()))
	}
	for _, p := range agent.Permissions() {
		where := "cluster"
		if p.Namespace != "" {
			where = "`" + p.Namespace + "`"
		}
		resources, verbs := strings.Join(p.Rule.Resources, ", "), strings.Join(p.Rule.Verbs, ", ")
		found := false
		for _, r := range rows {
			f := strings.Split(strings.Trim(r, "| "), " | ")
			if f[0] == where && strings.HasPrefix(f[2], resources) && f[3] == verbs {
				found = true
			}
		}
		if !found {
			t.Errorf("docs/install.md has no row for %s %v %s: %s", where, p.Rule.APIGroups, resources, verbs)
		}
	}
}

// docs/install.md's lifecycle table is internal/agent.LifecyclePermissions.
func TestTheInstallGuidesLifecycleTableIsTheCodes(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| cluster (lifecycle) |") {
			rows = append(rows, line)
		}
	}
	if len(rows) != len(agent.LifecyclePermissions()) {
		t.Errorf("%d lifecycle rows in the table, %d in the code", len(rows), len(agent.LifecyclePermissions()))
	}
	for i, p := range agent.LifecyclePermissions() {
		if i >= len(rows) {
			break
		}
		f := strings.Split(strings.Trim(rows[i], "| "), " | ")
		if f[2] != strings.Join(p.Rule.Resources, ", ") || f[3] != strings.Join(p.Rule.Verbs, ", ") {
			t.Errorf("row %d of the lifecycle table says %s: %s; the code %v: %v", i, f[2], f[3], p.Rule.Resources, p.Rule.Verbs)
		}
	}
}
