// This file is of package charts_test: it runs the flotilla command
// (internal/cli), which renders these charts, so package charts cannot
// import it.
package charts_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/deploy/charts"
	"flotilla.io/flotilla/internal/cli"
	"flotilla.io/flotilla/internal/syncbuf"
	"flotilla.io/flotilla/internal/testfleet"
)

// The server, run as the chart's ServiceAccount with the chart's Role and
// its empty Secret (`flotilla server --bootstrap-secret`, as the chart
// runs it), writes its bootstrap credential into that Secret, where kubectl
// reads it, and logs in with it; it can do nothing else with Secrets, and
// disabling the credential empties the Secret. A start that may not write
// the Secret fails, naming the Role, and leaves no credential that nobody
// holds.
func TestTheServerWritesItsBootstrapCredentialIntoTheChartsSecret(t *testing.T) {
	admin := testfleet.Get(t).Clusters()[0].RESTConfig(t)
	kube := kubernetes.NewForConfigOrDie(admin)
	ctx := context.Background()
	const ns = "flotilla-bootstrap"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	installIdentity(t, kube, ns)
	tok, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, charts.Server, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := writeKubeconfig(t, admin, tok.Status.Token, ns)
	dir := filepath.Join(t.TempDir(), "data")
	const secretName = charts.Server + "-bootstrap-admin"

	// A Secret the Role does not name: refused, and no credential made.
	_, errOut, err := runServer(t, ctx, "--data-dir", dir, "--kubeconfig", kubeconfig, "--bootstrap-secret", charts.Server+"-signing-keys")
	if err == nil || !strings.Contains(err.Error(), "Secret "+ns+"/"+charts.Server+"-signing-keys: the server may not patch it") || !strings.Contains(err.Error(), "Role") {
		t.Fatalf("a server that may not write its Secret: %v, want refused naming the Secret and the Role\n%s", err, errOut)
	}

	// The chart's Secret: written, with what the file holds.
	stop, errOut, err := runServer(t, ctx, "--data-dir", dir, "--kubeconfig", kubeconfig, "--bootstrap-secret", secretName)
	if err != nil {
		t.Fatalf("server: %v\n%s", err, errOut)
	}
	defer stop()
	file, err := os.ReadFile(filepath.Join(dir, "bootstrap-admin"))
	if err != nil {
		t.Fatalf("the start after a refused one made no credential: %v", err)
	}
	s, err := kube.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Data["bootstrap-admin"]; !bytes.Equal(got, file) {
		t.Fatalf("the Secret holds %q, the file %q", got, file)
	}
	if strings.Contains(errOut.String(), strings.TrimSpace(string(file))) {
		t.Errorf("the credential was printed:\n%s", errOut)
	}
	if want := "kubectl -n " + ns + " get secret " + secretName; !strings.Contains(errOut.String(), want) {
		t.Errorf("the output does not say how to fetch it (%s):\n%s", want, errOut)
	}

	// What kubectl fetched logs in.
	addr := regexp.MustCompile(`management plane serving" addr=(\S+)`).FindStringSubmatch(errOut.String())
	if addr == nil {
		t.Fatalf("no address in:\n%s", errOut)
	}
	fetched := filepath.Join(t.TempDir(), "bootstrap-admin")
	if err := os.WriteFile(fetched, s.Data["bootstrap-admin"], 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	if out, err := flotilla(ctx, "login", "--server", "http://"+addr[1], "--bootstrap-file", fetched); err != nil || !strings.Contains(out, "logged in") {
		t.Fatalf("login with the Secret's credential: %v\n%s", err, out)
	}

	// Nothing else: no Secret read, listed, created, or patched but this one.
	sa := kubernetes.NewForConfigOrDie(&rest.Config{Host: admin.Host, TLSClientConfig: admin.TLSClientConfig, BearerToken: tok.Status.Token})
	secrets := sa.CoreV1().Secrets(ns)
	forbidden := map[string]error{}
	_, forbidden["get its own Secret"] = secrets.Get(ctx, secretName, metav1.GetOptions{})
	_, forbidden["list Secrets"] = secrets.List(ctx, metav1.ListOptions{})
	_, forbidden["create a Secret"] = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	_, forbidden["patch another Secret"] = secrets.Patch(ctx, charts.Server+"-signing-keys", types.MergePatchType, []byte(`{"data":{}}`), metav1.PatchOptions{})
	_, forbidden["patch a Secret elsewhere"] = sa.CoreV1().Secrets("default").Patch(ctx, secretName, types.MergePatchType, []byte(`{"data":{}}`), metav1.PatchOptions{})
	for what, err := range forbidden {
		if !apierrors.IsForbidden(err) {
			t.Errorf("the server's ServiceAccount may %s: %v", what, err)
		}
	}

	// Disabling the credential empties the Secret.
	admins := filepath.Join(t.TempDir(), "admins.yaml")
	if err := os.WriteFile(admins, []byte(adminsYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := flotilla(ctx, "apply", "-f", admins); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if out, err := flotilla(ctx, "auth", "bootstrap", "disable"); err != nil {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	if s, err = kube.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Data["bootstrap-admin"]; ok {
		t.Errorf("the disabled credential is still in the Secret: %q", v)
	}
}

// adminsYAML makes someone else administrator of every organization, so
// that the bootstrap credential may be disabled.
const adminsYAML = `apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: AccessBinding
metadata: {name: ops, organization: acme}
spec:
  target: organizations/acme
  allow:
  - role: admin
    subjects: ["user:ops@example.com"]
`

// flotilla runs the CLI and returns what it printed.
func flotilla(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	root := cli.NewRoot(strings.NewReader(""), &out, &out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// installIdentity creates, for real, what of the rendered chart the
// server's identity is: its ServiceAccount, Role and RoleBinding, and the
// empty bootstrap Secret.
func installIdentity(t *testing.T, kube kubernetes.Interface, ns string) {
	t.Helper()
	ctx := context.Background()
	c, err := charts.Load(charts.Server)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := charts.Render(c, charts.Server, ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(stream, "\n---") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var err error
		switch meta.Kind {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			unmarshal(t, doc, &o)
			_, err = kube.CoreV1().ServiceAccounts(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "Role":
			var o rbacv1.Role
			unmarshal(t, doc, &o)
			_, err = kube.RbacV1().Roles(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "RoleBinding":
			var o rbacv1.RoleBinding
			unmarshal(t, doc, &o)
			_, err = kube.RbacV1().RoleBindings(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "Secret":
			var o corev1.Secret
			unmarshal(t, doc, &o)
			if o.Name != charts.Server+"-bootstrap-admin" {
				continue
			}
			_, err = kube.CoreV1().Secrets(ns).Create(ctx, &o, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create the chart's %s: %v", meta.Kind, err)
		}
	}
}

func unmarshal(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
}

// writeKubeconfig writes a kubeconfig for the API server of admin that
// authenticates with token, its context in namespace ns.
func writeKubeconfig(t *testing.T, admin *rest.Config, token, ns string) string {
	t.Helper()
	ca := admin.CAData
	if len(ca) == 0 {
		var err error
		if ca, err = os.ReadFile(admin.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["fleet"] = &clientcmdapi.Cluster{Server: admin.Host, CertificateAuthorityData: ca}
	cfg.AuthInfos["server"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["server"] = &clientcmdapi.Context{Cluster: "fleet", AuthInfo: "server", Namespace: ns}
	cfg.CurrentContext = "server"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// runServer runs `flotilla server` on a loopback port with args until it
// serves, and returns what stops it; or the error it stopped with.
func runServer(t *testing.T, ctx context.Context, args ...string) (stop func(), errOut *syncbuf.Buffer, err error) {
	t.Helper()
	errOut = &syncbuf.Buffer{}
	root := cli.NewRoot(strings.NewReader(""), errOut, errOut)
	root.SetArgs(append([]string{"server", "--listen", "127.0.0.1:0"}, args...))
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(errOut.String(), "management plane serving") {
		select {
		case err := <-done:
			cancel()
			if err == nil {
				t.Fatalf("the server stopped without an error:\n%s", errOut)
			}
			return nil, errOut, err
		case <-deadline:
			cancel()
			t.Fatalf("the server did not start:\n%s", errOut)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}, errOut, nil
}
