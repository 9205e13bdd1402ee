package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths; the certificate is its own CA.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flotilla test server"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestCLIAndAgentsTalkToAnHTTPSServer(t *testing.T) {
	c1 := clusters(t)[0]
	c1.reset(t, "payments")
	c1.runWorkloads(t, quickstartWorkloads(8080)...)
	certFile, keyFile := selfSigned(t)
	dir := t.TempDir()
	s := startServerTLS(t, dir, certFile, "--tls-cert", certFile, "--tls-key", keyFile)

	// Without the CA the client refuses the server, and says why.
	// (The login context remembers the CA; a client without it is refused.)
	os.Unsetenv("FLOTILLA_CA_FILE")
	bare := []string{"FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "none.yaml"), "FLOTILLA_TOKEN=" + s.token}
	if r := s.flotillaEnv(bare, "", "get", "orgs"); r.code == 0 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("an untrusted server was accepted: %+v", r)
	}
	ca := []string{"FLOTILLA_CA_FILE=" + certFile}
	if r := s.flotillaEnv(ca, "", "apply", "-f", "examples/quickstart.yaml"); r.code != 0 {
		t.Fatalf("apply over https: %+v", r)
	}
	token := strings.TrimSpace(s.flotillaEnv(ca, "", "cluster", "onboard", "c1").stdout)
	tokenFile := filepath.Join(dir, "c1.token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, dir, nil, "agent", "--server", s.url, "--ca-file", certFile, "--cluster", "c1", "--token-file", tokenFile, "--kubeconfig", c1.kubeconfig)
	eventually(t, 60*time.Second, "c1 applies over an https stream", func() error {
		r := s.flotillaEnv(ca, "", "status", "ingressgateway", "shop")
		if !strings.Contains(r.stdout, "c1 ") || !strings.Contains(r.stdout, "Applied") {
			return fmt.Errorf("%s%s", r.stdout, r.stderr)
		}
		return nil
	})
	if _, err := c1.get(gatewayGVR, "payments", "shop"); err != nil {
		t.Fatalf("c1 lacks the gateway: %v", err)
	}
	analyzeClusters(t, c1)
}
