package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// bind is a real BIND (Debian's named) serving zones on a loopback port.
type bind struct {
	addr string
	key  string // the TSIG secret of key "flotilla"
}

// startBIND runs named in the foreground with zones apps.example.net and
// bad.example.net, each updatable and transferable with key "flotilla"
// only; apps.example.net starts with a record that is not Flotilla's.
func startBIND(t *testing.T, dir string) *bind {
	t.Helper()
	named, err := exec.LookPath("named")
	if err != nil {
		named, err = exec.LookPath("/usr/sbin/named")
	}
	if err != nil {
		t.Fatalf("BIND's named is not installed (apt-get install bind9; .ci/run does): %v", err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	b := &bind{addr: freeUDPAndTCP(t), key: base64.StdEncoding.EncodeToString(secret)}
	_, port, _ := net.SplitHostPort(b.addr)
	key := fmt.Sprintf("key \"flotilla\" {\n\talgorithm hmac-sha256;\n\tsecret \"%s\";\n};\n", b.key)
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("bind.key", key)
	zone := func(name, extra string) string {
		return fmt.Sprintf("$TTL 300\n@ IN SOA ns.%[1]s. hostmaster.%[1]s. 1 3600 600 86400 60\n@ IN NS ns.%[1]s.\nns IN A 127.0.0.53\n%[2]s", name, extra)
	}
	write("db.apps", zone("apps.example.net", "other IN A 127.0.0.99\n"))
	write("db.bad", zone("bad.example.net", ""))
	conf := fmt.Sprintf(`options {
	directory "%[1]s";
	pid-file "%[1]s/named.pid";
	session-keyfile "%[1]s/session.key";
	managed-keys-directory "%[1]s";
	listen-on port %[2]s { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
};
include "%[1]s/bind.key";
zone "apps.example.net" { type primary; file "%[1]s/db.apps"; allow-update { key flotilla; }; allow-transfer { key flotilla; }; };
zone "bad.example.net" { type primary; file "%[1]s/db.bad"; allow-update { key flotilla; }; allow-transfer { key flotilla; }; };
`, dir, port)
	write("named.conf", conf)
	var log bytes.Buffer
	cmd := exec.Command(named, "-g", "-4", "-c", filepath.Join(dir, "named.conf"))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("named's log:\n%s", log.String())
		}
	})
	eventually(t, 20*time.Second, "named serving", func() error {
		_, err := bindLookup(b.addr, "ns.apps.example.net", dns.TypeA)
		return err
	})
	return b
}

// freeUDPAndTCP returns a loopback address free for both UDP and TCP.
func freeUDPAndTCP(t *testing.T) string {
	t.Helper()
	for range 50 {
		addr := freePort(t)
		if pc, err := net.ListenPacket("udp", addr); err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for UDP and TCP")
	return ""
}

// bindLookup asks the server at addr for name's records of type qtype, as
// strings ("127.0.0.1" for A, the text for TXT), sorted.
func bindLookup(addr, name string, qtype uint16) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		switch x := rr.(type) {
		case *dns.A:
			out = append(out, x.A.String())
		case *dns.TXT:
			out = append(out, strings.Join(x.Txt, ""))
		}
	}
	slices.Sort(out)
	return out, nil
}

// RFC 2136 against a real BIND: Flotilla keeps the hostname's records in
// BIND's zone as the health checks say, marks them with an ownership TXT
// record, leaves records that are not its own alone (and says so), shows a
// refused update (a key BIND does not know) as FAILED with BIND's reason
// while the other zone keeps working, and removes its records when the
// record set is deleted.
func TestRFC2136KeepsAZoneInBINDAsTheHealthChecksSay(t *testing.T) {
	dir := t.TempDir()
	b := startBIND(t, dir)
	// Flotilla's key file: the key BIND knows, and one it does not.
	keys := fmt.Sprintf("key \"flotilla\" { algorithm hmac-sha256; secret \"%s\"; };\nkey \"wrong\" { algorithm hmac-sha256; secret \"%s\"; };\n",
		b.key, base64.StdEncoding.EncodeToString([]byte("not the key bind has, 32 bytes..")))
	keyFile := writeFile(t, dir, "flotilla.keys", keys)
	s := startServer(t, t.TempDir(), "--dns-tsig-keys", keyFile, "--gslb-allow-cidr", loopbackRange)
	_, c2, port := twoEntryPoints(t, "127.0.22", "shop.apps.example.net")
	intent := shopTenancy + fmt.Sprintf(`apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: apps, organization: acme}
spec:
  zone: apps.example.net
  provider: RFC2136
  rfc2136: {server: "%[1]s", tsigKey: flotilla}
---
apiVersion: flotilla.io/v1alpha1
kind: DNSZone
metadata: {name: bad, organization: acme}
spec:
  zone: bad.example.net
  provider: RFC2136
  rfc2136: {server: "%[1]s", tsigKey: wrong}
---
`, b.addr) + checkedRecordSet("shop.apps.example.net", "127.0.22", port, 30) + `---
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: other, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: other.apps.example.net
  ttl: 30
  entryPoints: [{cluster: c1, address: 127.0.22.1}]
---
apiVersion: flotilla.io/v1alpha1
kind: DNSRecordSet
metadata: {name: refused, organization: acme, tenant: fintech, workspace: shop}
spec:
  hostname: www.bad.example.net
  ttl: 30
  entryPoints: [{cluster: c1, address: 127.0.22.1}]
`
	if r := s.flotilla(intent, "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}
	inBIND := func(name string, want ...string) error {
		got, err := bindLookup(b.addr, name, dns.TypeA)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("BIND has %s A %v, want %v", name, got, want)
		}
		return nil
	}
	eventually(t, 20*time.Second, "both entry points in BIND", func() error { return inBIND("shop.apps.example.net", "127.0.22.1", "127.0.22.2") })
	if txt, err := bindLookup(b.addr, "_flotilla-owner.shop.apps.example.net", dns.TypeTXT); err != nil ||
		!slices.Equal(txt, []string{"heritage=flotilla,record=organizations/acme/tenants/fintech/workspaces/shop/dnsrecordsets/shop"}) {
		t.Fatalf("ownership TXT record: %v %v", txt, err)
	}

	_ = c2.srv.Close()
	eventually(t, 20*time.Second, "c2 out of BIND's zone", func() error { return inBIND("shop.apps.example.net", "127.0.22.1") })
	c2 = startEntryPointFor(t, c2.addr, "shop.apps.example.net")
	eventually(t, 20*time.Second, "c2 back in BIND's zone", func() error { return inBIND("shop.apps.example.net", "127.0.22.1", "127.0.22.2") })

	// A record that is not Flotilla's stays, and the record set says why.
	if err := inBIND("other.apps.example.net", "127.0.0.99"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the conflict in other's status", func() error {
		_, rows := s.status("dnsrecordset", "other")
		row := rows["dns "+b.addr]
		if row.State != "Failed" || !strings.Contains(row.Message, "not Flotilla's") {
			return fmt.Errorf("rows %+v", rows)
		}
		return nil
	})
	// BIND refuses updates signed with a key it does not know: FAILED with
	// its reason; the good zone is untouched by that.
	eventually(t, 20*time.Second, "the refusal in refused's status", func() error {
		agg, rows := s.status("dnsrecordset", "refused")
		row := rows["dns "+b.addr]
		if agg != "FAILED" || row.State != "Failed" || !strings.Contains(row.Message, "bad.example.net") {
			return fmt.Errorf("%s rows %+v", agg, rows)
		}
		return nil
	})
	_, rows := s.status("dnsrecordset", "refused")
	t.Logf("a wrong TSIG key shows as: %s", rows["dns "+b.addr].Message)
	if agg, rows := s.status("dnsrecordset", "shop"); agg != "READY" || rows["dns "+b.addr].State != "Applied" {
		t.Fatalf("the good zone's record set: %s %+v", agg, rows)
	}

	// Deleting the record set removes its records (and only its).
	s.must("delete", "dnsrecordset", "shop", "--org", "acme")
	eventually(t, 20*time.Second, "shop's records gone from BIND", func() error { return inBIND("shop.apps.example.net") })
	if txt, _ := bindLookup(b.addr, "_flotilla-owner.shop.apps.example.net", dns.TypeTXT); len(txt) != 0 {
		t.Fatalf("the ownership record stayed: %v", txt)
	}
	if err := inBIND("other.apps.example.net", "127.0.0.99"); err != nil {
		t.Fatal(err)
	}
}
