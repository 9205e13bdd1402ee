package apiserver_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/testauth"
)

func identityClient(url, token string) flotillav1alpha1connect.IdentityServiceClient {
	if token == "" {
		return flotillav1alpha1connect.NewIdentityServiceClient(http.DefaultClient, url)
	}
	return flotillav1alpha1connect.NewIdentityServiceClient(http.DefaultClient, url, testauth.Bearer(token))
}

func TestEveryCallButHealthAndLoginNeedsAToken(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	anon := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, s.url)
	for name, call := range map[string]func() error{
		"get": func() error {
			_, err := anon.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "org", Fqn: "organizations/acme"}))
			return err
		},
		"list":  func() error { _, err := anon.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "org"})); return err },
		"kinds": func() error { _, err := anon.Kinds(ctx, connect.NewRequest(&pb.KindsRequest{})); return err },
		"apply": func() error {
			_, err := anon.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: tenancy()[2:3]}))
			return err
		},
		"watch": func() error {
			w, err := anon.Watch(ctx, connect.NewRequest(&pb.WatchRequest{}))
			if err != nil {
				return err
			}
			defer w.Close()
			w.Receive()
			return w.Err()
		},
		"audit": func() error {
			_, err := flotillav1alpha1connect.NewAuditServiceClient(http.DefaultClient, s.url).ListAudit(ctx, connect.NewRequest(&pb.ListAuditRequest{}))
			return err
		},
		"whoami": func() error {
			_, err := identityClient(s.url, "").WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{}))
			return err
		},
	} {
		if err := call(); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "flotilla login") {
			t.Errorf("%s without a token: %v, want Unauthenticated saying how to log in", name, err)
		}
	}
	if _, err := identityClient(s.url, "").GetLoginConfig(ctx, connect.NewRequest(&pb.GetLoginConfigRequest{})); err != nil {
		t.Errorf("GetLoginConfig needs no token: %v", err)
	}
	if l, err := s.client.List(ctx, connect.NewRequest(&pb.ListRequest{Kind: "org"})); err != nil || len(l.Msg.GetResources()) != 0 {
		t.Fatalf("nothing was written by the refused apply: %v %v", l, err)
	}
}

// readSecret reads the bootstrap credential file.
func readSecret(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func bootstrapLogin(ctx context.Context, s *running, secret string) (string, error) {
	tok, err := identityClient(s.url, "").Token(ctx, connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_BootstrapCredential{BootstrapCredential: secret}}))
	if err != nil {
		return "", err
	}
	return tok.Msg.GetAccessToken(), nil
}

func TestBootstrapCredentialIsWrittenOnceAndLogsIn(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "data", apiserver.BootstrapAdminFile)
	b, err := s.auth.EnsureBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL)
	if err != nil || !b.Written || time.Until(b.Expires) > apiserver.DefaultBootstrapTTL || time.Until(b.Expires) < apiserver.DefaultBootstrapTTL-time.Minute {
		t.Fatalf("first start: %+v %v, want a credential written, good for 24 h", b, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap file: %v %v, want mode 0600", fi, err)
	}
	secret := readSecret(t, path)
	if again, err := s.auth.EnsureBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL); err != nil || again.Written || readSecret(t, path) != secret {
		t.Fatalf("second start made another credential: %+v %v", again, err)
	}
	tok, err := bootstrapLogin(ctx, s, secret)
	if err != nil {
		t.Fatalf("log in with the bootstrap credential: %v", err)
	}
	who, err := identityClient(s.url, tok).WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{}))
	if err != nil || who.Msg.GetMethod() != authn.MethodBootstrap || who.Msg.GetSubject() != authn.BootstrapSubject {
		t.Fatalf("whoami: %v %v", who, err)
	}
	if _, err := bootstrapLogin(ctx, s, secret+"x"); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), apiserver.BootstrapAdminFile) {
		t.Fatalf("a wrong bootstrap credential: %v", err)
	}
	// Resetting replaces it, mode 0600 whatever the file's mode was: the
	// old one stops logging in, and the sessions it opened end at once.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.auth.ResetBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL)
	if err != nil || !fresh.Written || readSecret(t, path) == secret {
		t.Fatalf("reset: %+v %v", fresh, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the reset's file: %v %v, want mode 0600", fi, err)
	}
	if _, err := bootstrapLogin(ctx, s, secret); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("the replaced credential still logs in: %v", err)
	}
	if _, err := identityClient(s.url, tok).WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("a session of the replaced credential: %v, want Unauthenticated saying it was replaced", err)
	}
	if _, err := bootstrapLogin(ctx, s, readSecret(t, path)); err != nil {
		t.Fatalf("the new credential: %v", err)
	}
}

// The bootstrap credential ends: at its TTL (also one made by an older
// server for a hundred years), and when an administrator disables it,
// which is refused while nobody else administers every organization.
func TestTheBootstrapCredentialExpiresAndCanBeDisabledOnceAnotherAdministratorExists(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), apiserver.BootstrapAdminFile)
	s.auth.BootstrapFile = path

	// An old server's credential, made 25 hours ago for a century.
	old, hash := authn.NewSecret("fla_")
	made := time.Now().Add(-25 * time.Hour)
	if err := st.Update(ctx, "test", func(tx store.Tx) error {
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: "flotilla:bootstrap", Kind: "bootstrap", Expires: made.AddDate(100, 0, 0), CreateTime: made})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := bootstrapLogin(ctx, s, old); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "--reset-bootstrap-credential") {
		t.Fatalf("a bootstrap credential older than 24 h: %v, want Unauthenticated saying it expired and how to renew", err)
	}
	if _, err := s.auth.ResetBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL); err != nil {
		t.Fatal(err)
	}
	tok, err := bootstrapLogin(ctx, s, readSecret(t, path))
	if err != nil {
		t.Fatal(err)
	}
	root := identityClient(s.url, tok)
	disable := func(c flotillav1alpha1connect.IdentityServiceClient) (*pb.DisableBootstrapCredentialResponse, error) {
		out, err := c.DisableBootstrapCredential(ctx, connect.NewRequest(&pb.DisableBootstrapCredentialRequest{}))
		if err != nil {
			return nil, err
		}
		return out.Msg, nil
	}
	// Nobody else administers anything yet.
	if _, err := disable(root); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("disable with no other administrator: %v, want FailedPrecondition", err)
	}
	apply(t, clientFor(s.url, tok), res("Organization", md("acme"), nil), res("Organization", md("zeta"), nil))
	apply(t, clientFor(s.url, tok), binding("ops", "organizations/acme", "admin", "user:ops@example.com"), binding("rita", "organizations/acme", "reader", "user:rita@example.com"))
	// An administrator of one organization of two is not enough.
	if _, err := disable(root); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("disable with an administrator of acme only: %v, want FailedPrecondition", err)
	}
	ops := identityClient(s.url, testauth.Token(t, s.auth, "user:ops@example.com", authn.MethodOIDC))
	rita := identityClient(s.url, testauth.Token(t, s.auth, "user:rita@example.com", authn.MethodOIDC))
	if _, err := disable(ops); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("an administrator of one organization disables the bootstrap credential: %v", err)
	}
	if _, err := disable(rita); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("a reader disables the bootstrap credential: %v", err)
	}
	apply(t, clientFor(s.url, tok), res("AccessBinding", md("ops", "zeta"), map[string]any{"target": "organizations/zeta", "allow": []any{map[string]any{"role": "admin", "subjects": []any{"user:ops@example.com"}}}}))
	out, err := disable(ops)
	if err != nil || len(out.GetAdministrators()) != 1 || out.GetAdministrators()[0] != "user:ops@example.com" {
		t.Fatalf("ops disables the bootstrap credential: %v %v", out, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the disabled credential's file is still there: %v", err)
	}
	// Its sessions end at once, it logs in no more, a restart makes no new
	// one, and the audit says who disabled it.
	if _, err := root.WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("a session of the disabled credential: %v", err)
	}
	if b, err := s.auth.EnsureBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL); err != nil || b.Written || !b.Disabled {
		t.Fatalf("a restart after disabling: %+v %v, want no credential and Disabled", b, err)
	}
	var audited bool
	for _, r := range exportAudit(t, s.audit, &pb.ExportAuditRequest{}) {
		if r.GetOperation() == "DisableBootstrapCredential" && !r.GetRefused() && r.GetActor() == "user:ops@example.com" {
			audited = true
		}
	}
	if !audited {
		t.Error("the audit does not say that ops disabled the bootstrap credential")
	}
	// A reset, on the server's host, enables it again.
	if b, err := s.auth.ResetBootstrap(ctx, st, path, apiserver.DefaultBootstrapTTL); err != nil || !b.Written {
		t.Fatalf("reset after disabling: %+v %v", b, err)
	}
	if _, err := bootstrapLogin(ctx, s, readSecret(t, path)); err != nil {
		t.Fatalf("the reset credential: %v", err)
	}
}

func TestAServiceAccountLogsInWithItsKeyAndOnlyItsKey(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	apply(t, s.client, tenancy()[2], res("ServiceAccount", md("ci", "acme"), nil), res("ServiceAccount", md("other", "acme"), nil))
	apply(t, s.client, res("AccessBinding", md("ci-reader", "acme"), map[string]any{"target": "organizations/acme",
		"allow": []any{map[string]any{"role": "reader", "subjects": []any{"serviceaccount:ci"}}}}))
	admin := identityClient(s.url, s.token)
	key := func(account string) authn.ServiceAccountKeyFile {
		fqn := "organizations/acme/serviceaccounts/" + account
		k, err := admin.CreateServiceAccountKey(ctx, connect.NewRequest(&pb.CreateServiceAccountKeyRequest{Fqn: fqn}))
		if err != nil {
			t.Fatal(err)
		}
		return authn.ServiceAccountKeyFile{Account: fqn, KeyID: k.Msg.GetKeyId(), PrivateKey: k.Msg.GetPrivateKey()}
	}
	ci, other := key("ci"), key("other")
	cfg, err := identityClient(s.url, "").GetLoginConfig(ctx, connect.NewRequest(&pb.GetLoginConfigRequest{}))
	if err != nil || cfg.Msg.GetIssuer() != s.auth.Issuer.Name {
		t.Fatalf("GetLoginConfig names issuer %q (%v), want %q", cfg.Msg.GetIssuer(), err, s.auth.Issuer.Name)
	}
	audience := cfg.Msg.GetIssuer()
	exchange := func(kf authn.ServiceAccountKeyFile, now time.Time) (*pb.TokenResponse, error) {
		a, err := kf.SignAssertion(now, audience)
		if err != nil {
			t.Fatal(err)
		}
		res, err := identityClient(s.url, "").Token(ctx, connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_ServiceAccountAssertion{ServiceAccountAssertion: a}}))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}
	tok, err := exchange(ci, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(tok.GetExpireTime().AsTime()); life > apiserver.DefaultMachineTokenTTL || life < apiserver.DefaultMachineTokenTTL-time.Minute {
		t.Fatalf("a service account's token lives %s, want %s", life, apiserver.DefaultMachineTokenTTL)
	}
	who, err := identityClient(s.url, tok.GetAccessToken()).WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{}))
	if err != nil || who.Msg.GetSubject() != "serviceaccount:organizations/acme/serviceaccounts/ci" || who.Msg.GetMethod() != authn.MethodServiceAccount {
		t.Fatalf("whoami as ci: %v %v", who, err)
	}
	if _, err := clientFor(s.url, tok.GetAccessToken()).Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "org", Fqn: "organizations/acme"})); err != nil {
		t.Fatalf("ci (reader on acme) cannot read acme: %v", err)
	}
	// The server keeps the public key only.
	got, err := s.client.Get(ctx, connect.NewRequest(&pb.GetRequest{Kind: "ServiceAccount", Fqn: ci.Account}))
	if err != nil || !strings.Contains(fmt.Sprint(got.Msg), "PUBLIC KEY") || strings.Contains(fmt.Sprint(got.Msg), "PRIVATE") {
		t.Fatalf("the stored service account: %v %v", got, err)
	}
	// Another account's key does not speak for ci, nor does a stale assertion.
	forged := other
	forged.Account = ci.Account
	for name, kf := range map[string]authn.ServiceAccountKeyFile{"other's key under ci's key id": {Account: ci.Account, KeyID: ci.KeyID, PrivateKey: other.PrivateKey}, "another account's key id": forged} {
		if _, err := exchange(kf, time.Now()); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := exchange(ci, time.Now().Add(-10*time.Minute)); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired assertion: %v", err)
	}
	// An assertion made for another deployment (or for the constant
	// audience of older servers) is refused here.
	for _, aud := range []string{"https://flotilla.other.example", authn.Audience} {
		audience = aud
		if _, err := exchange(ci, time.Now()); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "not this server") {
			t.Errorf("an assertion for audience %q: %v, want Unauthenticated saying it is not for this server", aud, err)
		}
	}
	audience = cfg.Msg.GetIssuer()
	// Whether the account or its key exists is not told: no account, no
	// such key and a wrong signature get one answer.
	answers := map[string]string{}
	for name, kf := range map[string]authn.ServiceAccountKeyFile{
		"no such account":   {Account: "organizations/acme/serviceaccounts/ghost", KeyID: ci.KeyID, PrivateKey: ci.PrivateKey},
		"no such key":       {Account: ci.Account, KeyID: "k-none", PrivateKey: ci.PrivateKey},
		"a wrong signature": {Account: ci.Account, KeyID: ci.KeyID, PrivateKey: other.PrivateKey},
		"another org":       {Account: "organizations/zeta/serviceaccounts/ci", KeyID: ci.KeyID, PrivateKey: ci.PrivateKey},
	} {
		_, err := exchange(kf, time.Now())
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("%s: %v, want Unauthenticated", name, err)
		}
		answers[err.Error()] = name
	}
	if len(answers) != 1 {
		t.Errorf("refusals tell existing accounts and keys apart: %v", answers)
	}
}

func TestTokensOfAnotherIssuerExpiredOrOfARemovedKeyAreRefusedClearly(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	get := func(tok string) error {
		_, err := identityClient(s.url, tok).WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{}))
		return err
	}
	old := s.token
	foreign := &authn.Issuer{Name: "someone-else", Keys: s.auth.Issuer.Keys}
	ftok, _, err := foreign.Mint(authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, _, err := s.auth.Issuer.Mint(authn.Principal{Subject: authn.BootstrapSubject, Method: authn.MethodBootstrap}, -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]string{ftok: `issued by "someone-else"`, expired: "expired", "abc.def": "malformed", old[:len(old)-4] + "AAAA": "signature"} {
		if err := get(tok); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), want) {
			t.Errorf("token refused with %v, want Unauthenticated saying %q", err, want)
		}
	}
	// Rotate: old tokens keep working, new ones carry the new key.
	admin := identityClient(s.url, s.token)
	first := s.auth.Issuer.Keys.Signer().ID
	rot, err := admin.RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{}))
	if err != nil || rot.Msg.GetKey().GetId() == first {
		t.Fatalf("rotate: %v %v", rot, err)
	}
	if err := get(old); err != nil {
		t.Fatalf("a token of the previous key stopped working after rotation: %v", err)
	}
	if _, err := admin.RemoveSigningKey(ctx, connect.NewRequest(&pb.RemoveSigningKeyRequest{Id: rot.Msg.GetKey().GetId()})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("removing the signing key must be refused: %v", err)
	}
	fresh := testauth.Token(t, s.auth, authn.BootstrapSubject, authn.MethodBootstrap)
	if _, err := identityClient(s.url, fresh).RemoveSigningKey(ctx, connect.NewRequest(&pb.RemoveSigningKeyRequest{Id: first})); err != nil {
		t.Fatal(err)
	}
	if err := get(old); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), first) {
		t.Fatalf("a token of a removed key: %v, want Unauthenticated naming key %s", err, first)
	}
	if err := get(fresh); err != nil {
		t.Fatalf("a token of the current key: %v", err)
	}
	// Nobody but the bootstrap administrator or an admin of every
	// organization changes keys.
	apply(t, clientFor(s.url, fresh), tenancy()[2])
	someone := identityClient(s.url, testauth.Token(t, s.auth, "user:mallory@example.com", authn.MethodOIDC))
	if _, err := someone.RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("mallory rotates the signing key: %v", err)
	}
}

func TestRotatingTheSigningKeyUnderLoadFailsNoRequest(t *testing.T) {
	s := serve(t, backends[0].open(t))
	ctx := context.Background()
	apply(t, s.client, tenancy()[2])
	const clients, applies = 16, 40
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []error
		done     = make(chan struct{})
	)
	oldTokens := make([]string, clients)
	for i := range clients {
		oldTokens[i] = testauth.Token(t, s.auth, authn.BootstrapSubject, authn.MethodBootstrap)
	}
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := oldTokens[i]
			for n := range applies {
				if n == applies/2 { // half way, log in again: a token of whichever key signs now
					tok = testauth.Token(t, s.auth, authn.BootstrapSubject, authn.MethodBootstrap)
				}
				r := res("Tenant", md(fmt.Sprintf("t%d", i), "acme"), map[string]any{"description": fmt.Sprint(n)})
				if _, err := clientFor(s.url, tok).Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}})); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	admin := identityClient(s.url, s.token)
	rotations := 0
	for rotations < 10 {
		if _, err := admin.RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{})); err != nil {
			t.Fatal(err)
		}
		rotations++
		select {
		case <-done:
		case <-time.After(300 * time.Millisecond): // spread the rotations over the load
			continue
		}
		break
	}
	<-done
	if len(failures) > 0 {
		t.Fatalf("%d of %d applies failed during %d key rotations, e.g. %v", len(failures), clients*applies, rotations, failures[0])
	}
	for _, tok := range oldTokens {
		if _, err := clientFor(s.url, tok).Kinds(ctx, connect.NewRequest(&pb.KindsRequest{})); err != nil {
			t.Fatalf("a token from before the rotations stopped working: %v", err)
		}
	}
	t.Logf("%d applies by %d clients across %d rotations: 0 failed", clients*applies, clients, rotations)
}

// refusals lists the audit's refused records.
func refusals(t *testing.T, s *running) []*pb.AuditRecord {
	t.Helper()
	out, err := s.audit.ListAudit(context.Background(), connect.NewRequest(&pb.ListAuditRequest{Refused: true}))
	if err != nil {
		t.Fatal(err)
	}
	var r []*pb.AuditRecord
	for _, a := range out.Msg.GetRecords() {
		if a.GetRefused() {
			r = append(r, a)
		}
	}
	return r
}

func TestBadInputIsRefusedClearlyAuditedAndWritesNothing(t *testing.T) {
	st := backends[0].open(t)
	s := serve(t, st)
	ctx := context.Background()
	apply(t, s.client, tenancy()[2])
	before, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big := `{"resources":[{"apiVersion":"flotilla.io/v1alpha1","kind":"Tenant","metadata":{"name":"big","organization":"acme"},"spec":{"description":"` + strings.Repeat("x", 10<<20) + `"}}]}`
	post := func(body, token string, chunked bool) (int, string) {
		var rd = strings.NewReader(body)
		req, _ := http.NewRequest("POST", s.url+flotillav1alpha1connect.ResourceServiceApplyProcedure, rd)
		if chunked {
			req, _ = http.NewRequest("POST", s.url+flotillav1alpha1connect.ResourceServiceApplyProcedure, struct{ *strings.Reader }{rd})
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	for _, chunked := range []bool{false, true} {
		code, body := post(big, s.token, chunked)
		if code == 200 || !strings.Contains(body, "resource_exhausted") {
			t.Fatalf("a 10 MB body (chunked=%v): %d %s", chunked, code, body)
		}
	}
	code, body := post(`{"resources":[]}`, "not-a-token", false)
	if code != 401 || !strings.Contains(body, "malformed token") {
		t.Fatalf("a malformed token: %d %s", code, body)
	}
	for name, r := range map[string]struct {
		res  *pb.Resource
		want string
	}{
		"a binding to an unknown role":          {res("AccessBinding", md("bad", "acme"), map[string]any{"target": "organizations/acme", "allow": []any{map[string]any{"role": "superuser", "subjects": []any{"user:x@example.com"}}}}), `unknown role "superuser"`},
		"a role granting an unknown permission": {res("Role", md("bad", "acme"), map[string]any{"rules": []any{map[string]any{"permissions": []any{"Destroy"}, "kinds": []any{"*"}}}}), `unknown permission "Destroy"`},
	} {
		_, err := s.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r.res}}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), r.want) || !strings.Contains(err.Error(), "spec.") {
			t.Errorf("%s: %v, want InvalidArgument naming the field and saying %s", name, err, r.want)
		}
	}
	after, err := st.Revision(ctx)
	if err != nil || after != before {
		t.Fatalf("bad input wrote something: revision %d → %d (%v)", before, after, err)
	}
	got := refusals(t, s)
	var reasons []string
	for _, r := range got {
		reasons = append(reasons, r.GetActor()+": "+r.GetReason())
		if strings.Contains(r.GetReason(), "request body") && (r.GetActor() != authn.BootstrapSubject || r.GetMethod() != authn.MethodBootstrap) {
			t.Errorf("an oversized body sent with the administrator's token is audited as %s (%s)", r.GetActor(), r.GetMethod())
		}
	}
	joined := strings.Join(reasons, "\n")
	for _, want := range []string{"request body is", "malformed token", `unknown role "superuser"`, `unknown permission "Destroy"`} {
		if !strings.Contains(joined, want) {
			t.Errorf("the audit's refusals lack %q:\n%s", want, joined)
		}
	}
	if len(got) != 5 {
		t.Errorf("%d refusals audited, want 5 (two bodies, a token, a binding, a role):\n%s", len(got), joined)
	}
}

var _ = store.Actor

// Two replicas on one store and one key file rotate the signing key at
// the same moment, 20 times each: afterwards every token either signed,
// before or between the rotations, is accepted by both, and every
// rotation is in the audit with who made it.
func TestTwoReplicasRotatingAtOnceKeepEveryTokenAndAuditEveryRotation(t *testing.T) {
	url := pgtest.NewDatabase(t)
	keyFile := filepath.Join(t.TempDir(), apiserver.SigningKeyFile)
	ctx := context.Background()
	var replicas []*running
	for range 2 {
		st, err := postgres.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		auth, err := apiserver.NewAuth(keyFile, "flotilla-test")
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, serveAuth(t, st, auth, testauth.Token(t, auth, authn.BootstrapSubject, authn.MethodBootstrap)))
	}
	const rounds = 20
	tokens := make([][]string, len(replicas))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, r := range replicas {
		tokens[i] = append(tokens[i], r.token)
		wg.Go(func() {
			admin := identityClient(r.url, r.token)
			<-start
			for range rounds {
				if _, err := admin.RotateSigningKey(ctx, connect.NewRequest(&pb.RotateSigningKeyRequest{})); err != nil {
					t.Errorf("replica %d rotates: %v", i, err)
					return
				}
				// A token of whichever key this replica signs with now.
				tokens[i] = append(tokens[i], testauth.Token(t, r.auth, authn.BootstrapSubject, authn.MethodBootstrap))
			}
		})
	}
	close(start)
	wg.Wait()
	for i := range replicas {
		for j, r := range replicas {
			for n, tok := range tokens[i] {
				if _, err := identityClient(r.url, tok).WhoAmI(ctx, connect.NewRequest(&pb.WhoAmIRequest{})); err != nil {
					t.Errorf("replica %d refuses token %d of replica %d: %v", j, n, i, err)
				}
			}
		}
	}
	keys, err := identityClient(replicas[0].url, replicas[0].token).ListSigningKeys(ctx, connect.NewRequest(&pb.ListSigningKeysRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(keys.Msg.GetKeys()), 2*rounds+1; got != want {
		t.Errorf("%d signing keys after %d rotations on each replica, want %d", got, rounds, want)
	}
	var rotations int
	for _, r := range exportAudit(t, replicas[1].audit, &pb.ExportAuditRequest{}) {
		if r.GetOperation() == "RotateSigningKey" && !r.GetRefused() {
			rotations++
			if r.GetActor() != authn.BootstrapSubject || r.GetMethod() != authn.MethodBootstrap || r.GetKind() != "SigningKey" || !strings.Contains(r.GetReason(), "signs new tokens") {
				t.Errorf("rotation audited as %v", r)
			}
		}
	}
	if rotations != 2*rounds {
		t.Errorf("the audit holds %d rotations, want %d", rotations, 2*rounds)
	}
}
