package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestAServiceAccountLogsInFromTheCLIAndDoesOnlyWhatItsBindingAllows(t *testing.T) {
	s := startServer(t, t.TempDir())
	s.must("apply", "-f", "examples/tenancy.yaml")
	s.must("create", "serviceaccount", "ci", "--org", "acme", "--description", "the CI pipeline")
	s.must("create", "accessbinding", "ci-reads", "--org", "acme", "--target", "organizations/acme", "--role", "reader", "--subject", "serviceaccount:ci")
	keyFile := filepath.Join(t.TempDir(), "ci-key.json")
	if out := s.must("serviceaccount", "key", "create", "ci", "--org", "acme", "-f", keyFile); !strings.Contains(out, "saved to "+keyFile) {
		t.Fatalf("key create: %s", out)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the key file: %v %v, want mode 0600", fi, err)
	}

	ci := []string{"FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "ci.yaml")}
	if r := s.flotillaEnv(ci, "", "login", "--service-account-key", keyFile); r.code != 0 || !strings.Contains(r.stdout, "as serviceaccount:organizations/acme/serviceaccounts/ci") {
		t.Fatalf("login with the key: %+v", r)
	}
	if r := s.flotillaEnv(ci, "", "whoami"); !strings.Contains(r.stdout, "method:  serviceaccount") {
		t.Fatalf("whoami: %+v", r)
	}
	if r := s.flotillaEnv(ci, "", "get", "workspaces"); r.code != 0 || !strings.Contains(r.stdout, "payments") {
		t.Fatalf("the reader cannot read: %+v", r)
	}
	r := s.flotillaEnv(ci, "apiVersion: flotilla.io/v1alpha1\nkind: Tenant\nmetadata: {name: sneaky, organization: acme}\n", "apply", "-f", "-")
	if r.code == 0 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "nothing was applied") {
		t.Fatalf("the reader wrote: %+v", r)
	}
	if r := s.flotillaEnv(ci, "", "auth", "can-i", "Create", "tenant", "sneaky", "--org", "acme"); r.code != 1 || !strings.HasPrefix(r.stdout, "no:") {
		t.Fatalf("can-i Create: %+v", r)
	}
	if r := s.flotillaEnv(ci, "", "auth", "can-i", "Read", "workspace", "payments", "--org", "acme", "--tenant", "fintech"); r.code != 0 || !strings.Contains(r.stdout, "role reader on organizations/acme") {
		t.Fatalf("can-i Read: %+v", r)
	}

	// A cached token past its expiry is renewed with the key, silently.
	cfgFile := strings.TrimPrefix(ci[0], "FLOTILLA_CONFIG=")
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	old := regexp.MustCompile(`token: (\S+)`).FindStringSubmatch(string(b))[1]
	expired := regexp.MustCompile(`token-expiry: .*`).ReplaceAllString(string(b), `token-expiry: "2020-01-01T00:00:00Z"`)
	if err := os.WriteFile(cfgFile, []byte(expired), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := s.flotillaEnv(ci, "", "whoami"); r.code != 0 {
		t.Fatalf("whoami after the token expired: %+v", r)
	}
	if b, _ := os.ReadFile(cfgFile); strings.Contains(string(b), old) {
		t.Fatal("the expired token was not replaced in the config")
	}

	// The refusal is in the audit, with who and why.
	audit := s.must("audit", "--refused", "--since", "1h")
	if !regexp.MustCompile(`REFUSED  serviceaccount:organizations/acme/serviceaccounts/ci \(serviceaccount\)  Apply[\s\S]*reason: .*permission denied`).MatchString(audit) {
		t.Fatalf("the audit lacks the service account's refused apply:\n%s", audit)
	}
	// Nothing answers without a token.
	if r := s.flotillaEnv([]string{"FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "none.yaml")}, "", "get", "orgs"); r.code == 0 || !strings.Contains(r.stderr, "not logged in") {
		t.Fatalf("a client that never logged in: %+v", r)
	}
}

func TestAnAgentsKeyBoundCredentialIsExtendedAndTheSameKeyReconnectsAfterItsFirstExpiry(t *testing.T) {
	c1 := clusters(t)[0]
	c1.reset(t, "payments")
	c1.runWorkloads(t, quickstartWorkloads(8080)...)
	dir := t.TempDir()
	const ttl = 12 * time.Second
	s := startServer(t, dir, "--agent-credential-ttl", ttl.String())
	applyHost(t, s, "renew.example.com")
	token := strings.TrimSpace(s.must("cluster", "onboard", c1.name))
	if err := os.WriteFile(filepath.Join(dir, "c1.token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", c1.name, "--token-file", filepath.Join(dir, "c1.token"), "--kubeconfig", c1.kubeconfig)
	ctx := context.Background()
	stored := func() map[string][]byte {
		sec, err := c1.kube.CoreV1().Secrets("flotilla-system").Get(ctx, "flotilla-agent-credential", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return sec.Data
	}
	var first map[string][]byte
	eventually(t, 30*time.Second, "the agent joins and notes it", func() error {
		if first = stored(); len(first["cluster"]) == 0 {
			return fmt.Errorf("not joined yet")
		}
		return nil
	})
	if len(first["key"]) == 0 || len(first["credential"]) != 0 {
		t.Fatalf("the secret holds %d bytes of key and %d of bearer credential; want a key and no bearer secret", len(first["key"]), len(first["credential"]))
	}
	joined := time.Now()
	// Two thirds into its life the server extends it on the stream; the
	// key stays, and nothing secret travels.
	eventually(t, ttl, "the server extends the credential", func() error {
		if !strings.Contains(agent.log.String(), "credential extended") {
			return fmt.Errorf("no extension yet")
		}
		return nil
	})
	// Past the first expiry, a new stream (the server restarts) is opened
	// with the same key.
	if wait := time.Until(joined.Add(ttl + time.Second)); wait > 0 {
		time.Sleep(wait) // the first expiry is the point of this step
	}
	s.stop()
	s = s.restart(t)
	eventually(t, 30*time.Second, "the agent is back with its key", func() error {
		if n := connectedAgents(t, s); n != 1 {
			return fmt.Errorf("%d agents connected", n)
		}
		return nil
	})
	if !bytes.Equal(stored()["key"], first["key"]) {
		t.Fatal("the agent's key changed")
	}
	if strings.Contains(agent.log.String(), "refused this cluster's credential") {
		t.Fatalf("the agent's credential was refused:\n%s", agent.log)
	}
	analyzeClusters(t, c1)
}
