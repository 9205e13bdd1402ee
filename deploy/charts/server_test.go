package charts

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/engine"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/testfleet"
)

// serverNamespace is where the tests install the server chart.
const serverNamespace = "flotilla"

// everyServerValue sets every value values.yaml documents, with
// PostgreSQL, to something other than its default; everySQLiteValue sets
// those of SQLite.
func everyServerValue() map[string]any {
	return map[string]any{
		"replicas": 3,
		"store": map[string]any{"type": "postgres",
			"postgres": map[string]any{"url": "postgres://flotilla:secret@db.example.com:5432/flotilla?sslmode=verify-full", "existingSecretKey": "dsn"}},
		"issuer":             "flotilla-prod",
		"bootstrap":          map[string]any{"ttl": "2h", "reset": true},
		"agentCredentialTTL": "168h",
		"tls":                map[string]any{"secretName": "flotilla-tls"},
		"trustedProxies":     []any{"10.0.0.0/8", "192.0.2.7"},
		"oidc":               map[string]any{"issuer": "https://login.example.com", "clientID": "flotilla-cli", "ca": testCA},
		"logLevel":           "debug",
		"extraArgs":          []any{"--gslb-allow-cidr=10.20.0.0/16"},
		"image":              map[string]any{"repository": "registry.example.com/flotilla", "tag": "v9", "digest": "sha256:" + strings.Repeat("cd", 32), "pullPolicy": "Always"},
		"imagePullSecrets":   []any{map[string]any{"name": "pull"}},
		"service":            map[string]any{"type": "LoadBalancer", "port": 443, "annotations": map[string]any{"example.com/lb": "internal"}},
		"ingress": map[string]any{"enabled": true, "className": "nginx",
			"annotations": map[string]any{"nginx.ingress.kubernetes.io/backend-protocol": "GRPCS"},
			"hosts":       []any{"flotilla.example.com", "api.flotilla.example.com"},
			"tls":         []any{map[string]any{"secretName": "flotilla-ingress-tls", "hosts": []any{"flotilla.example.com"}}}},
		"podDisruptionBudget":       map[string]any{"maxUnavailable": 2},
		"resources":                 map[string]any{"requests": map[string]any{"cpu": "500m", "memory": "1Gi"}, "limits": map[string]any{"memory": "4Gi"}},
		"podAnnotations":            map[string]any{"example.com/team": "platform"},
		"podLabels":                 map[string]any{"team": "platform"},
		"nodeSelector":              map[string]any{"kubernetes.io/os": "linux"},
		"tolerations":               []any{map[string]any{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}},
		"affinity":                  map[string]any{"nodeAffinity": map[string]any{}},
		"topologySpreadConstraints": []any{map[string]any{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": map[string]any{"matchLabels": map[string]any{"app.kubernetes.io/name": "flotilla-server"}}}},
		"priorityClassName":         "system-cluster-critical",
	}
}

func everySQLiteValue() map[string]any {
	return map[string]any{"store": map[string]any{"type": "sqlite", "sqlite": map[string]any{"size": "20Gi", "storageClassName": "fast"}}}
}

// serverVariants are the value sets the tests render: the defaults, every
// value of each store, and the Secrets and the claim of one's own.
func serverVariants() map[string]map[string]any {
	return map[string]map[string]any{
		"defaults":              {},
		"every value, postgres": everyServerValue(),
		"every value, sqlite":   everySQLiteValue(),
		"existing secrets": {"store": map[string]any{"type": "postgres", "postgres": map[string]any{"existingSecret": "my-store"}},
			"signingKeys": map[string]any{"existingSecret": "my-keys"}},
		"existing claim": {"store": map[string]any{"sqlite": map[string]any{"existingClaim": "restored"}}},
	}
}

func renderServer(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	c, err := Load(Server)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(c, Server, serverNamespace, values)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

// findNamed is the object of kind called name.
func findNamed(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// workload is the server's StatefulSet (SQLite) or Deployment (PostgreSQL).
func workload(t *testing.T, objs []*unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	sts, d := find(objs, "StatefulSet", serverNamespace), find(objs, "Deployment", serverNamespace)
	if (sts == nil) == (d == nil) {
		t.Fatalf("want one StatefulSet or one Deployment, have %v and %v", sts, d)
	}
	if sts != nil {
		return sts
	}
	return d
}

// serverPod is the first pod the workload makes: a StatefulSet's has the
// volumes of its claim templates, as its controller adds them.
func serverPod(t *testing.T, w *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	pod := podOf(t, w)
	tmpls, _, _ := unstructured.NestedSlice(w.Object, "spec", "volumeClaimTemplates")
	vols, _, _ := unstructured.NestedSlice(pod.Object, "spec", "volumes")
	for _, tm := range tmpls {
		name, _, _ := unstructured.NestedString(tm.(map[string]any), "metadata", "name")
		vols = append(vols, map[string]any{"name": name, "persistentVolumeClaim": map[string]any{"claimName": name + "-" + w.GetName() + "-0"}})
	}
	unstructured.SetNestedSlice(pod.Object, vols, "spec", "volumes")
	return pod
}

func serverArgs(t *testing.T, w *unstructured.Unstructured) []string {
	t.Helper()
	args, _, _ := unstructured.NestedStringSlice(containerOf(t, w), "args")
	return args
}

func volume(t *testing.T, w *unstructured.Unstructured, name string) map[string]any {
	t.Helper()
	vols, _, _ := unstructured.NestedSlice(w.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		if v.(map[string]any)["name"] == name {
			return v.(map[string]any)
		}
	}
	return nil
}

func TestServerChartLints(t *testing.T) {
	for name, values := range serverVariants() {
		t.Run(name, func(t *testing.T) {
			for _, m := range lintChart(Server, values, serverNamespace) {
				t.Errorf("helm lint: %s", m)
			}
		})
	}
}

func TestServerChartRendersWithDefaultsAndWithEveryValue(t *testing.T) {
	// The defaults: SQLite in a StatefulSet of one, its claim kept.
	objs := renderServer(t, nil)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	slices.Sort(kinds)
	if want := []string{"Role", "RoleBinding", "Secret", "Secret", "Service", "ServiceAccount", "StatefulSet"}; !slices.Equal(kinds, want) {
		t.Fatalf("kinds with the defaults: %v, want %v", kinds, want)
	}
	w := workload(t, objs)
	if r := num(w, "spec", "replicas"); r != 1 {
		t.Errorf("SQLite replicas %v", r)
	}
	if p, _, _ := unstructured.NestedString(w.Object, "spec", "persistentVolumeClaimRetentionPolicy", "whenDeleted"); p != "Retain" {
		t.Errorf("the store's claim is %q on delete, want Retain", p)
	}
	args := serverArgs(t, w)
	for _, a := range []string{"server", "--listen=:8080", "--data-dir=/var/lib/flotilla", "--store=sqlite",
		"--signing-key-file=/etc/flotilla/signing-keys/signing-keys.json", "--bootstrap-secret=flotilla-server-bootstrap-admin", "--bootstrap-credential-ttl=24h"} {
		if !slices.Contains(args, a) {
			t.Errorf("server args %v lack %s", args, a)
		}
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--tls-") || a == "--reset-bootstrap-credential" || a == "--insecure-no-auth" {
			t.Errorf("default args carry %s", a)
		}
	}
	c := containerOf(t, w)
	if image, _, _ := unstructured.NestedString(c, "image"); image != "flotilla:0.1.0" {
		t.Errorf("default image %q, want flotilla:<appVersion>", image)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
		path, _, _ := unstructured.NestedString(c, probe, "httpGet", "path")
		scheme, _, _ := unstructured.NestedString(c, probe, "httpGet", "scheme")
		if want := map[string]string{"readinessProbe": "/readyz"}[probe]; path != cmpOr(want, "/healthz") || scheme != "HTTP" {
			t.Errorf("%s: %s %s", probe, scheme, path)
		}
	}
	// Writable: the data volume and /tmp only.
	if ro, _, _ := unstructured.NestedBool(c, "securityContext", "readOnlyRootFilesystem"); !ro {
		t.Error("the root filesystem is writable")
	}
	mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
	var writable []string
	for _, m := range mounts {
		if ro, _, _ := unstructured.NestedBool(m.(map[string]any), "readOnly"); !ro {
			writable = append(writable, m.(map[string]any)["mountPath"].(string))
		}
	}
	if want := []string{"/var/lib/flotilla", "/tmp"}; !slices.Equal(writable, want) {
		t.Errorf("writable mounts %v, want %v", writable, want)
	}
	if sk := volume(t, w, "signing-keys"); sk == nil || sk["secret"].(map[string]any)["secretName"] != "flotilla-server-signing-keys" {
		t.Errorf("signing-keys volume %v", sk)
	}
	// The Role: patch of the bootstrap Secret, nothing else.
	role := find(objs, "Role", serverNamespace)
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	if len(rules) != 1 {
		t.Fatalf("Role rules %v", rules)
	}
	r := rules[0].(map[string]any)
	if !slices.Equal(strs(r["resources"]), []string{"secrets"}) || !slices.Equal(strs(r["verbs"]), []string{"patch"}) || !slices.Equal(strs(r["resourceNames"]), []string{"flotilla-server-bootstrap-admin"}) {
		t.Errorf("Role rule %v, want patch on secrets/flotilla-server-bootstrap-admin only", r)
	}
	if b := findNamed(objs, "Secret", "flotilla-server-bootstrap-admin"); b == nil {
		t.Error("no bootstrap Secret")
	} else if _, has := b.Object["data"]; has {
		t.Errorf("the chart writes data into the bootstrap Secret: %v", b.Object["data"])
	}
	// The chart's key set is one the server takes and signs with.
	keys := findNamed(objs, "Secret", "flotilla-server-signing-keys")
	if keys == nil {
		t.Fatal("no signing keys Secret")
	}
	if keys.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Error("the signing keys are not kept on uninstall")
	}
	ks := openRenderedKeySet(t, keys)
	if n := len(ks.Keys()); n != 1 {
		t.Errorf("the chart's key set has %d keys", n)
	}
	is := &authn.Issuer{Name: "flotilla", Keys: ks}
	tok, _, err := is.Mint(authn.Principal{Subject: "user:a", Method: authn.MethodOIDC}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Verify(tok); err != nil {
		t.Errorf("a token signed with the chart's key: %v", err)
	}
	if other := findNamed(renderServer(t, nil), "Secret", "flotilla-server-signing-keys"); other.Object["data"].(map[string]any)["signing-keys.json"] == keys.Object["data"].(map[string]any)["signing-keys.json"] {
		t.Error("two installs got the same signing key")
	}

	// Every value, PostgreSQL: a Deployment of three, a PodDisruptionBudget,
	// an Ingress, TLS, OIDC.
	objs = renderServer(t, everyServerValue())
	w = workload(t, objs)
	if w.GetKind() != "Deployment" {
		t.Fatalf("PostgreSQL runs in a %s", w.GetKind())
	}
	if r := num(w, "spec", "replicas"); r != 3 {
		t.Errorf("replicas %v, want 3", r)
	}
	if pdb := find(objs, "PodDisruptionBudget", serverNamespace); pdb == nil {
		t.Error("three replicas and no PodDisruptionBudget")
	} else if mu := num(pdb, "spec", "maxUnavailable"); mu != 2 {
		t.Errorf("PodDisruptionBudget maxUnavailable %v", mu)
	}
	args = serverArgs(t, w)
	for _, a := range []string{"--store=$(FLOTILLA_STORE)", "--tls-cert=/etc/flotilla/tls/tls.crt", "--tls-key=/etc/flotilla/tls/tls.key", "--issuer=flotilla-prod",
		"--reset-bootstrap-credential", "--bootstrap-credential-ttl=2h", "--agent-credential-ttl=168h", "--trusted-proxy=10.0.0.0/8", "--trusted-proxy=192.0.2.7",
		"--oidc-issuer=https://login.example.com", "--oidc-client-id=flotilla-cli", "--oidc-ca-file=/etc/flotilla/oidc/ca.crt", "--log-level=debug", "--gslb-allow-cidr=10.20.0.0/16"} {
		if !slices.Contains(args, a) {
			t.Errorf("server args %v lack %s", args, a)
		}
	}
	c = containerOf(t, w)
	if image, _, _ := unstructured.NestedString(c, "image"); image != "registry.example.com/flotilla@sha256:"+strings.Repeat("cd", 32) {
		t.Errorf("image %q: the digest should win over the tag", image)
	}
	if scheme, _, _ := unstructured.NestedString(c, "readinessProbe", "httpGet", "scheme"); scheme != "HTTPS" {
		t.Errorf("with TLS the probes use %s", scheme)
	}
	env, _, _ := unstructured.NestedSlice(c, "env")
	if len(env) != 1 || env[0].(map[string]any)["name"] != "FLOTILLA_STORE" {
		t.Fatalf("env %v", env)
	}
	ref := env[0].(map[string]any)["valueFrom"].(map[string]any)["secretKeyRef"].(map[string]any)
	if ref["name"] != "flotilla-server-store" || ref["key"] != "dsn" {
		t.Errorf("the store URL comes from %v", ref)
	}
	if s := findNamed(objs, "Secret", "flotilla-server-store"); s == nil {
		t.Error("no Secret for store.postgres.url")
	} else if u, _, _ := unstructured.NestedString(s.Object, "stringData", "dsn"); !strings.HasPrefix(u, "postgres://flotilla:secret@") {
		t.Errorf("store Secret holds %q", u)
	}
	for _, a := range args {
		if strings.Contains(a, "secret@") {
			t.Errorf("the store's password is in the pod spec: %s", a)
		}
	}
	if v := volume(t, w, "data"); v == nil || v["emptyDir"] == nil {
		t.Errorf("with PostgreSQL the data directory is %v, want an emptyDir", v)
	}
	if findNamed(objs, "Secret", "flotilla-server-signing-keys") == nil {
		t.Error("no signing keys Secret")
	}
	if cm := find(objs, "ConfigMap", serverNamespace); cm == nil {
		t.Error("oidc.ca rendered no ConfigMap")
	}
	ing := find(objs, "Ingress", serverNamespace)
	if ing == nil {
		t.Fatal("ingress.enabled rendered no Ingress")
	}
	if rules, _, _ := unstructured.NestedSlice(ing.Object, "spec", "rules"); len(rules) != 2 {
		t.Errorf("Ingress rules %v, want one per host", rules)
	}
	if class, _, _ := unstructured.NestedString(ing.Object, "spec", "ingressClassName"); class != "nginx" {
		t.Errorf("ingressClassName %q", class)
	}
	svc := find(objs, "Service", serverNamespace)
	if typ, _, _ := unstructured.NestedString(svc.Object, "spec", "type"); typ != "LoadBalancer" {
		t.Errorf("Service type %q", typ)
	}

	// SQLite's claim.
	w = workload(t, renderServer(t, everySQLiteValue()))
	tmpls, _, _ := unstructured.NestedSlice(w.Object, "spec", "volumeClaimTemplates")
	if len(tmpls) != 1 {
		t.Fatalf("claim templates %v", tmpls)
	}
	spec := tmpls[0].(map[string]any)["spec"].(map[string]any)
	if spec["storageClassName"] != "fast" || spec["resources"].(map[string]any)["requests"].(map[string]any)["storage"] != "20Gi" {
		t.Errorf("claim template %v", spec)
	}

	// Secrets and claims of one's own: the chart makes none.
	v := serverVariants()["existing secrets"]
	objs = renderServer(t, v)
	if s := findNamed(objs, "Secret", "flotilla-server-signing-keys"); s != nil {
		t.Error("signingKeys.existingSecret still rendered the chart's key Secret")
	}
	if s := findNamed(objs, "Secret", "flotilla-server-store"); s != nil {
		t.Error("store.postgres.existingSecret still rendered the chart's store Secret")
	}
	w = workload(t, objs)
	if sk := volume(t, w, "signing-keys"); sk["secret"].(map[string]any)["secretName"] != "my-keys" {
		t.Errorf("signing-keys volume %v, want my-keys", sk)
	}
	env, _, _ = unstructured.NestedSlice(containerOf(t, w), "env")
	if ref := env[0].(map[string]any)["valueFrom"].(map[string]any)["secretKeyRef"].(map[string]any); ref["name"] != "my-store" || ref["key"] != "url" {
		t.Errorf("the store URL comes from %v", ref)
	}
	if find(objs, "PodDisruptionBudget", serverNamespace) != nil {
		t.Error("one replica and a PodDisruptionBudget")
	}
	w = workload(t, renderServer(t, serverVariants()["existing claim"]))
	if tmpls, _, _ := unstructured.NestedSlice(w.Object, "spec", "volumeClaimTemplates"); len(tmpls) != 0 {
		t.Errorf("existingClaim and claim templates %v", tmpls)
	}
	if v := volume(t, w, "data"); v == nil || v["persistentVolumeClaim"].(map[string]any)["claimName"] != "restored" {
		t.Errorf("data volume %v, want the claim restored", v)
	}
}

// num is a number of a decoded manifest (JSON numbers decode as float64).
func num(o *unstructured.Unstructured, fields ...string) float64 {
	v, _, _ := unstructured.NestedFieldNoCopy(o.Object, fields...)
	f, _ := v.(float64)
	return f
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func strs(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// openRenderedKeySet opens the key file of a rendered signing-keys Secret
// the way the server does.
func openRenderedKeySet(t *testing.T, s *unstructured.Unstructured) *authn.KeySet {
	t.Helper()
	enc, _, _ := unstructured.NestedString(s.Object, "data", "signing-keys.json")
	data, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	if err := os.WriteFile(path, data, 0o444); err != nil {
		t.Fatal(err)
	}
	ks, err := authn.OpenKeySet(path)
	if err != nil {
		t.Fatalf("the server refuses the chart's key set: %v\n%s", err, data)
	}
	return ks
}

// Bad values are refused with the key named, by the schema (types,
// unknown keys, enums, patterns) or by the chart's own checks.
func TestServerChartRefusesBadValuesNamingTheKey(t *testing.T) {
	c, err := Load(Server)
	if err != nil {
		t.Fatal(err)
	}
	pg := func(p map[string]any) map[string]any { return map[string]any{"type": "postgres", "postgres": p} }
	cases := []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"a wrong type", map[string]any{"replicas": "three"}, []string{"replicas", "integer"}},
		{"an unknown key", map[string]any{"replica": 2}, []string{"replica", "additional"}},
		{"an unknown nested key", map[string]any{"store": pg(map[string]any{"uri": "postgres://db"})}, []string{"store", "uri"}},
		{"a store outside its enum", map[string]any{"store": map[string]any{"type": "mysql"}}, []string{"store", "type"}},
		{"a URL of another database", map[string]any{"store": pg(map[string]any{"url": "mysql://db"})}, []string{"store", "url"}},
		{"a bad duration", map[string]any{"bootstrap": map[string]any{"ttl": "1 day"}}, []string{"bootstrap", "ttl"}},
		{"a bad port", map[string]any{"service": map[string]any{"port": 0}}, []string{"service", "port"}},
		{"an extra argument that is no flag", map[string]any{"extraArgs": []any{"oops"}}, []string{"extraArgs"}},
		{"several SQLite replicas", map[string]any{"replicas": 2}, []string{"replicas: 2 with store.type sqlite", "store.type postgres"}},
		{"PostgreSQL without a URL", map[string]any{"store": pg(map[string]any{})}, []string{"store.postgres.url: required"}},
		{"a URL and a Secret", map[string]any{"store": pg(map[string]any{"url": "postgres://db", "existingSecret": "s"})}, []string{"store.postgres.url and store.postgres.existingSecret"}},
		{"a PostgreSQL URL with SQLite", map[string]any{"store": map[string]any{"postgres": map[string]any{"url": "postgres://db"}}}, []string{"store.postgres", "store.type postgres"}},
		{"a claim with PostgreSQL", map[string]any{"store": map[string]any{"type": "postgres", "postgres": map[string]any{"url": "postgres://db"}, "sqlite": map[string]any{"existingClaim": "c"}}}, []string{"store.sqlite.existingClaim"}},
		{"an Ingress without hosts", map[string]any{"ingress": map[string]any{"enabled": true}}, []string{"ingress.hosts: required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(c, Server, serverNamespace, tc.values)
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

// On upgrade the chart keeps the signing keys it made (and whatever
// rotations put in them): it reads the Secret back from the cluster, as
// `helm upgrade` lets it. Rendered without the cluster, it makes new ones.
func TestServerChartKeepsItsSigningKeysOnUpgrade(t *testing.T) {
	cfg := testfleet.Get(t).Clusters()[0].RESTConfig(t)
	k := newKube(t, cfg)
	ctx := context.Background()
	const ns = "flotilla-upgrade"
	k.ensureNamespace(t, ns, nil)
	c, err := Load(Server)
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := common.ParseKubeVersion(KubeVersion)
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	render := func(upgrade bool, withCluster bool) string {
		t.Helper()
		opts := common.ReleaseOptions{Name: Server, Namespace: ns, Revision: 1, IsInstall: !upgrade, IsUpgrade: upgrade}
		vals, err := util.ToRenderValuesWithSchemaValidation(c, nil, opts, caps, false)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]string
		if withCluster {
			out, err = engine.RenderWithClient(c, vals, cfg)
		} else {
			out, err = engine.Render(c, vals)
		}
		if err != nil {
			t.Fatal(err)
		}
		keys := findNamed(decode(t, out[Server+"/templates/secrets.yaml"]), "Secret", "flotilla-server-signing-keys")
		enc, _, _ := unstructured.NestedString(keys.Object, "data", "signing-keys.json")
		return enc
	}
	installed := render(false, true)
	// What a rotation leaves in the Secret: another key set.
	rotated := render(false, false)
	if rotated == installed {
		t.Fatal("two renders made the same keys")
	}
	data, _ := base64.StdEncoding.DecodeString(rotated)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "flotilla-server-signing-keys", Namespace: ns}, Data: map[string][]byte{"signing-keys.json": data}}
	if _, err := k.typed.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if got := render(true, true); got != rotated {
		t.Errorf("helm upgrade replaced the signing keys in the cluster")
	}
}

// Every rendered manifest of every variant passes the real API server's
// validation (server-side dry run), and the server's pod passes Pod
// Security admission's restricted profile.
func TestServerChartPassesTheAPIServersDryRunAndTheRestrictedProfile(t *testing.T) {
	k := newKube(t, testfleet.Get(t).Clusters()[0].RESTConfig(t))
	ctx := context.Background()
	k.ensureNamespace(t, serverNamespace, map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"})
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: Server, Namespace: serverNamespace}}
	if _, err := k.typed.CoreV1().ServiceAccounts(serverNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for name, values := range serverVariants() {
		t.Run(name, func(t *testing.T) {
			objs := renderServer(t, values)
			for _, o := range objs {
				if err := k.dryRun(ctx, o); err != nil {
					t.Errorf("%s %s/%s refused by the API server: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
			if err := k.dryRun(ctx, serverPod(t, workload(t, objs))); err != nil {
				t.Errorf("the server's pod is refused by the restricted profile: %v", err)
			}
		})
	}

	// The check can fail: a pod that runs as root is refused there.
	pod := serverPod(t, workload(t, renderServer(t, nil)))
	unstructured.SetNestedField(pod.Object, int64(0), "spec", "securityContext", "runAsUser")
	unstructured.RemoveNestedField(pod.Object, "spec", "securityContext", "runAsNonRoot")
	cs, _, _ := unstructured.NestedSlice(pod.Object, "spec", "containers")
	unstructured.RemoveNestedField(cs[0].(map[string]any), "securityContext", "runAsNonRoot")
	unstructured.SetNestedSlice(pod.Object, cs, "spec", "containers")
	if err := k.dryRun(ctx, pod); err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
		t.Fatalf("a pod running as root: %v, want refused by the restricted profile", err)
	}
}
