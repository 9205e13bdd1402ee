package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
)

// dex is a real OIDC provider (Dex, built from its Go module into bin/dex)
// on loopback, with one connector that logs anyone in as Kilgore Trout
// (kilgore@kilgore.trout, group "authors") without a password page, and
// the public client "flotilla" allowed the device-code flow.
type dex struct {
	issuer string
	cmd    *exec.Cmd
}

func startDex(t *testing.T, idTokenLife time.Duration) *dex {
	t.Helper()
	return startDexAt(t, idTokenLife, freePort(t), "")
}

// startDexAt starts Dex on addr; uiOrigin, when set, is a web UI allowed to
// log in from the browser: its callback is a redirect URI of the client,
// and Dex answers its cross-origin requests.
func startDexAt(t *testing.T, idTokenLife time.Duration, addr, uiOrigin string) *dex {
	t.Helper()
	bin := filepath.Join(repoRoot, "bin", "dex")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("bin/dex is missing: `make test` builds it (make $(pwd)/bin/dex): %v", err)
	}
	issuer := "http://" + addr + "/dex"
	origins, redirects := "[]", "[]"
	if uiOrigin != "" {
		origins, redirects = fmt.Sprintf("[%q]", uiOrigin), fmt.Sprintf("[%q]", uiOrigin+"/login/callback")
	}
	cfg := fmt.Sprintf(`issuer: %s
storage: {type: memory}
web: {http: %q, allowedOrigins: %s}
logger: {level: warn}
expiry: {idTokens: %q, deviceRequests: 5m}
oauth2:
  skipApprovalScreen: true
  grantTypes: [authorization_code, refresh_token, "urn:ietf:params:oauth:grant-type:device_code"]
staticClients:
- {id: flotilla, name: Flotilla, public: true, redirectURIs: %s}
connectors:
- {type: mockCallback, id: mock, name: Example}
enablePasswordDB: false
`, issuer, addr, origins, idTokenLife.String(), redirects)
	file := filepath.Join(t.TempDir(), "dex.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", file)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("dex log:\n%s", log)
		}
	})
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(issuer + "/.well-known/openid-configuration")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return &dex{issuer: issuer, cmd: cmd}
			}
		}
		select {
		case <-done:
			t.Fatalf("dex exited:\n%s", log)
		default:
		}
	}
	t.Fatalf("dex not ready:\n%s", log)
	return nil
}

// approve plays the person at the browser: it opens the verification page
// for userCode, which Dex sends through its connector and back, and
// confirms the device login succeeded.
func (d *dex) approve(t *testing.T, userCode string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 20 * time.Second}
	resp, err := browser.PostForm(d.issuer+"/device/auth/verify_code", url.Values{"user_code": {userCode}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(strings.ToLower(string(body)), "login successful") {
		t.Fatalf("device approval ended at %s with %d:\n%s", resp.Request.URL, resp.StatusCode, body)
	}
}

// deviceIDToken runs the device flow in Go, as a second client would, and
// returns the ID token.
func (d *dex) deviceIDToken(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	p, err := oidc.NewProvider(ctx, d.issuer)
	if err != nil {
		t.Fatal(err)
	}
	conf := &oauth2.Config{ClientID: "flotilla", Endpoint: p.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "email", "groups"}}
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d.approve(t, da.UserCode)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tok, err := conf.DeviceAccessToken(wctx, da)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := tok.Extra("id_token").(string)
	if id == "" {
		t.Fatal("no ID token")
	}
	return id
}

var userCodeRE = regexp.MustCompile(`enter the code (\S+)`)

func TestOIDCDeviceLoginGroupTeamBindingAllowed(t *testing.T) {
	d := startDex(t, 8*time.Second)
	s := startServer(t, t.TempDir(), "--oidc-issuer", d.issuer, "--oidc-client-id", "flotilla")
	// The administrator maps the provider's group "authors" to a team and
	// makes the team editor of tenant "books".
	if r := s.flotilla(`apiVersion: flotilla.io/v1alpha1
kind: Organization
metadata: {name: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: books, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Tenant
metadata: {name: music, organization: acme}
---
apiVersion: flotilla.io/v1alpha1
kind: Team
metadata: {name: writers, organization: acme}
spec: {oidcGroups: [authors]}
`, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	if r := s.flotilla(`apiVersion: flotilla.io/v1alpha1
kind: AccessBinding
metadata: {name: writers-edit-books, organization: acme}
spec:
  target: organizations/acme/tenants/books
  allow: [{role: editor, subjects: ["team:writers"]}]
`, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply the binding: %+v", r)
	}

	// The person logs in from the CLI by device code.
	person := filepath.Join(t.TempDir(), "person.yaml")
	login := exec.Command(cliBin, "login", "--oidc", "--context", "kilgore")
	login.Dir = repoRoot
	login.Env = append(os.Environ(), "FLOTILLA_SERVER="+s.url, "FLOTILLA_CONFIG="+person)
	stderr, _ := login.StderrPipe()
	var out strings.Builder
	login.Stdout = &out
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	code := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := userCodeRE.FindStringSubmatch(sc.Text()); m != nil {
				code <- m[1]
			}
		}
		close(code)
	}()
	select {
	case c, ok := <-code:
		if !ok {
			t.Fatal("flotilla login --oidc printed no code")
		}
		d.approve(t, c)
	case <-time.After(30 * time.Second):
		login.Process.Kill()
		t.Fatal("flotilla login --oidc printed no code in 30s")
	}
	if err := login.Wait(); err != nil || !strings.Contains(out.String(), "as user:kilgore@kilgore.trout") {
		t.Fatalf("device login: %v\n%s", err, out.String())
	}
	as := []string{"FLOTILLA_CONFIG=" + person}
	who := s.flotillaEnv(as, "", "whoami")
	for _, want := range []string{"user:kilgore@kilgore.trout", "method:  oidc", "organizations/acme/teams/writers", "authors"} {
		if !strings.Contains(who.stdout, want) {
			t.Fatalf("whoami lacks %q:\n%+v", want, who)
		}
	}
	// group → team → binding → allowed, and nowhere else.
	if r := s.flotillaEnv(as, `apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: novels, organization: acme, tenant: books}
spec: {namespaceSelector: {names: ["*/novels"]}}
`, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("kilgore (team writers, editor of books) cannot create a workspace in books: %+v", r)
	}
	if r := s.flotillaEnv(as, `apiVersion: flotilla.io/v1alpha1
kind: Workspace
metadata: {name: jazz, organization: acme, tenant: music}
spec: {namespaceSelector: {names: ["*/jazz"]}}
`, "apply", "-f", "-"); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("kilgore created a workspace in music: %+v", r)
	}
	if r := s.flotillaEnv(as, "", "auth", "can-i", "Create", "workspace", "x", "--org", "acme", "--tenant", "books"); r.code != 0 || !strings.Contains(r.stdout, "team:organizations/acme/teams/writers") {
		t.Fatalf("can-i create in books: %+v", r)
	}
	audit := s.must("audit", "--kind", "workspace")
	if !strings.Contains(audit, "user:kilgore@kilgore.trout (oidc)  create Workspace organizations/acme/tenants/books/workspaces/novels") {
		t.Fatalf("the audit does not name kilgore and how he logged in:\n%s", audit)
	}

	// ID tokens: another issuer's, and an expired one, are refused clearly.
	id := d.deviceIDToken(t)
	exchange := func(srv *server, idToken string) error {
		_, err := flotillav1alpha1connect.NewIdentityServiceClient(http.DefaultClient, srv.url).Token(context.Background(),
			connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_OidcIdToken{OidcIdToken: idToken}}))
		return err
	}
	if err := exchange(s, id); err != nil {
		t.Fatalf("a fresh ID token: %v", err)
	}
	elsewhere := startServer(t, t.TempDir(), "--oidc-issuer", "http://127.0.0.1:1/other-provider", "--oidc-client-id", "flotilla")
	if err := exchange(elsewhere, id); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "trusts only") {
		t.Fatalf("an ID token of another issuer: %v", err)
	}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if err = exchange(s, id); err != nil {
			break
		}
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired ID token: %v", err)
	}
}
