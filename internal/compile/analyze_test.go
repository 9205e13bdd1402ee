package compile_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/internal/testfleet/analyze"
)

// Every golden output is fed to Istio's analyzers offline, as `istioctl
// analyze --use-kube=false` does with files, with the cluster the outputs
// are meant for supplied beside them (goldenCluster), so that the analyzers
// judge the compiler's objects and not the absence of a cluster. An Error or
// Warning on an object the compiler emitted fails the case, unless it is a
// known analyzer limitation (internal/testfleet/analyze/limitations.go).
// TestCompileMatchesTheGoldenFiles keeps the golden files equal to the
// compiler's output.
func TestEveryGoldenOutputPassesIstiosAnalyzers(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*", "*.golden.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden files under testdata: %v", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			objects := goldenObjects(t, path)
			c := readCase(t, filepath.Join(filepath.Dir(path), "bundle.yaml"))
			var out bytes.Buffer
			for _, o := range objects {
				writeDoc(t, &out, o)
			}
			findings, err := analyze.Files(context.Background(),
				analyze.Source{Name: path, YAML: out.Bytes()},
				analyze.Source{Name: "cluster supplied for " + path, YAML: goldenCluster(t, c, objects)})
			if err != nil {
				t.Fatal(err)
			}
			analyze.Check(t, path, findings)
		})
	}
}

// goldenObjects returns the Kubernetes objects of a golden file: every
// document but the trailing diagnostics.
func goldenObjects(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc["kind"] != nil {
			out = append(out, doc)
		}
	}
}

// clusterCase is what a golden case's bundle.yaml says of its cluster.
type clusterCase struct {
	Namespaces []string `json:"namespaces"`
	// DestinationRules are the cluster's own, "<ns>/<name>" by host.
	DestinationRules map[string]string `json:"destinationRules"`
}

func readCase(t *testing.T, path string) clusterCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c clusterCase
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

// inClusterHost is a Kubernetes Service's host: <service>.<namespace>.svc.cluster.local.
var inClusterHost = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc\.cluster\.local$`)

// goldenCluster is the cluster a golden output is analyzed in, as YAML. The
// golden cases say only which namespaces exist (and which DestinationRules
// the cluster keeps itself); what the analyzers also need is supplied here,
// and nothing else:
//   - a Namespace for each of the case's namespaces, for istio-system and
//     for each namespace an object is in, labelled for sidecar injection,
//     with a Pod app=workload (a namespace-wide policy applies to the
//     namespace's workloads: the analyzers report one that has none);
//   - for each in-cluster host the objects name (a route destination, a
//     VirtualService, DestinationRule or Sidecar host; a short name is of
//     the object's namespace) or the cluster's own DestinationRules are
//     for, and that no ServiceEntry of the output declares:
//     a Service <svc> in <ns> selecting app=<svc>, with the ports the
//     objects name for the host (port 80 when none), and a Pod app=<svc>;
//   - for each DestinationRule subset of such a host, a Pod app=<svc> plus
//     the subset's labels;
//   - for each Gateway, a Pod in its namespace with its selector's labels,
//     a Service selecting it with the Gateway's server ports, and a valid
//     TLS Secret for each credentialName;
//   - the cluster's own DestinationRules that the case declares, and, for a
//     DIRECT VirtualService (delivered as the user wrote it) routing to
//     subsets of a host the output has no DestinationRule for, the user's
//     own DestinationRule with those subsets (labels version=<subset>).
//
// Every Pod has an istio-proxy container, as injection would give it.
// Nothing supplied carries Flotilla's label: what the analyzers say of it is
// logged, not failed.
func goldenCluster(t *testing.T, c clusterCase, objects []map[string]any) []byte {
	t.Helper()
	nsSet := map[string]bool{"istio-system": true}
	for _, ns := range c.Namespaces {
		nsSet[ns] = true
	}
	declared := map[string]bool{} // hosts of the output's ServiceEntries
	ruled := map[string]bool{}    // hosts of the output's DestinationRules
	ports := map[string]map[int64]bool{}
	subsets := map[string][]map[string]any{}      // host → subset labels
	directSubsets := map[string]map[string]bool{} // host → subsets DIRECT VirtualServices name
	var gateways []map[string]any
	for _, o := range objects {
		meta, _ := o["metadata"].(map[string]any)
		ns := str(meta["namespace"])
		nsSet[ns] = true
		spec, _ := o["spec"].(map[string]any)
		switch o["kind"] {
		case "ServiceEntry":
			for _, h := range list(spec["hosts"]) {
				declared[str(h)] = true
			}
		case "Gateway":
			gateways = append(gateways, o)
		case "DestinationRule":
			host := fqdn(str(spec["host"]), ns)
			ruled[host] = true
			for _, s := range list(spec["subsets"]) {
				l, _ := s.(map[string]any)["labels"].(map[string]any)
				subsets[host] = append(subsets[host], l)
			}
			tp, _ := spec["trafficPolicy"].(map[string]any)
			for _, p := range list(tp["portLevelSettings"]) {
				addHost(ports, host, p.(map[string]any)["port"])
			}
		case "VirtualService":
			annotations, _ := meta["annotations"].(map[string]any)
			if owner := strings.Split(str(annotations["flotilla.io/owner"]), "/"); len(owner) > 2 && owner[len(owner)-2] == "virtualservices" {
				subsetsIn(spec, ns, directSubsets)
			}
		}
		hostsIn(spec, ns, ports)
	}
	for host := range c.DestinationRules {
		addHost(ports, host, nil)
	}
	var docs []map[string]any
	for _, ns := range slices.Sorted(maps.Keys(nsSet)) {
		if ns == "" {
			continue
		}
		docs = append(docs, object("v1", "Namespace", "", ns, map[string]any{"istio-injection": "enabled"}, nil))
		docs = append(docs, pod(ns, "workload", map[string]any{"app": "workload"}))
	}
	for _, host := range slices.Sorted(maps.Keys(ports)) {
		m := inClusterHost.FindStringSubmatch(host)
		if m == nil || declared[host] {
			continue
		}
		svc, ns := m[1], m[3]
		nums := slices.Sorted(maps.Keys(ports[host]))
		if len(nums) == 0 {
			nums = []int64{80}
		}
		docs = append(docs, service(ns, svc, map[string]any{"app": svc}, nums))
		docs = append(docs, pod(ns, svc, map[string]any{"app": svc}))
		for i, l := range subsets[host] {
			labels := map[string]any{"app": svc}
			maps.Copy(labels, l)
			docs = append(docs, pod(ns, svc+"-subset-"+strconv.Itoa(i), labels))
		}
		if names := directSubsets[host]; len(names) > 0 && !ruled[host] && c.DestinationRules[host] == "" {
			var ss []any
			for _, name := range slices.Sorted(maps.Keys(names)) {
				ss = append(ss, map[string]any{"name": name, "labels": map[string]any{"version": name}})
				docs = append(docs, pod(ns, svc+"-"+name, map[string]any{"app": svc, "version": name}))
			}
			docs = append(docs, object("networking.istio.io/v1", "DestinationRule", ns, svc+"-by-hand", nil, map[string]any{"host": host, "subsets": ss}))
		}
	}
	for _, host := range slices.Sorted(maps.Keys(c.DestinationRules)) {
		ns, name, _ := strings.Cut(c.DestinationRules[host], "/")
		docs = append(docs, object("networking.istio.io/v1", "DestinationRule", ns, name, nil, map[string]any{"host": host}))
	}
	for _, g := range gateways {
		meta := g["metadata"].(map[string]any)
		ns, name := str(meta["namespace"]), str(meta["name"])
		spec, _ := g["spec"].(map[string]any)
		selector, _ := spec["selector"].(map[string]any)
		var nums []int64
		for _, s := range list(spec["servers"]) {
			server, _ := s.(map[string]any)
			p, _ := server["port"].(map[string]any)
			if n, ok := number(p["number"]); ok {
				nums = append(nums, n)
			}
			tls, _ := server["tls"].(map[string]any)
			if cn := str(tls["credentialName"]); cn != "" {
				docs = append(docs, tlsSecret(t, ns, cn))
			}
		}
		slices.Sort(nums)
		docs = append(docs, pod(ns, "gateway-"+name, selector), service(ns, "gateway-"+name, selector, slices.Compact(nums)))
	}
	var out bytes.Buffer
	for _, d := range docs {
		writeDoc(t, &out, d)
	}
	return out.Bytes()
}

// fqdn returns host as <svc>.<ns>.svc.cluster.local when it is a short
// name, resolved in namespace ns as Istio does.
func fqdn(host, ns string) string {
	if host != "" && !strings.ContainsAny(host, ".*") {
		return host + "." + ns + ".svc.cluster.local"
	}
	return host
}

// hostsIn records every host named under v, an object's spec in namespace
// ns: a "host" string (with the sibling "port.number" of a destination)
// and each of a "hosts" list (Sidecar egress hosts are
// "<namespace>/<host>").
func hostsIn(v any, ns string, ports map[string]map[int64]bool) {
	switch v := v.(type) {
	case map[string]any:
		if h, ok := v["host"].(string); ok {
			addHost(ports, fqdn(h, ns), v["port"])
		}
		for _, h := range list(v["hosts"]) {
			s := str(h)
			if i := strings.IndexByte(s, '/'); i >= 0 {
				s = s[i+1:]
			}
			addHost(ports, fqdn(s, ns), nil)
		}
		for _, e := range v {
			hostsIn(e, ns, ports)
		}
	case []any:
		for _, e := range v {
			hostsIn(e, ns, ports)
		}
	}
}

// subsetsIn records the subsets that the destinations under v name, by
// host.
func subsetsIn(v any, ns string, subsets map[string]map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if h, ok := v["host"].(string); ok && str(v["subset"]) != "" {
			host := fqdn(h, ns)
			if subsets[host] == nil {
				subsets[host] = map[string]bool{}
			}
			subsets[host][str(v["subset"])] = true
		}
		for _, e := range v {
			subsetsIn(e, ns, subsets)
		}
	case []any:
		for _, e := range v {
			subsetsIn(e, ns, subsets)
		}
	}
}

// tlsSecret is a kubernetes.io/tls Secret with a certificate valid now.
func tlsSecret(t *testing.T, ns, name string) map[string]any {
	t.Helper()
	pair, err := testCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cert, key := pair[0], pair[1]
	s := object("v1", "Secret", ns, name, nil, nil)
	s["type"] = "kubernetes.io/tls"
	s["data"] = map[string]any{"tls.crt": base64.StdEncoding.EncodeToString(cert), "tls.key": base64.StdEncoding.EncodeToString(key)}
	return s
}

// testCertificate is a self-signed certificate and its key, in PEM, made
// once per test binary.
var testCertificate = sync.OnceValues(func() ([2][]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return [2][]byte{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "golden.example.com"},
		DNSNames:     []string{"*.example.com"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return [2][]byte{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return [2][]byte{}, err
	}
	return [2][]byte{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}, nil
})

func addHost(ports map[string]map[int64]bool, host string, port any) {
	if !inClusterHost.MatchString(host) {
		return
	}
	if ports[host] == nil {
		ports[host] = map[int64]bool{}
	}
	if p, ok := port.(map[string]any); ok {
		if n, ok := number(p["number"]); ok {
			ports[host][n] = true
		}
	}
}

func object(apiVersion, kind, ns, name string, labels map[string]any, spec map[string]any) map[string]any {
	meta := map[string]any{"name": name}
	if ns != "" {
		meta["namespace"] = ns
	}
	if labels != nil {
		meta["labels"] = labels
	}
	o := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": meta}
	if spec != nil {
		o["spec"] = spec
	}
	return o
}

func service(ns, name string, selector map[string]any, nums []int64) map[string]any {
	var ps []any
	for _, n := range nums {
		ps = append(ps, map[string]any{"name": fmt.Sprintf("http-%d", n), "port": n, "protocol": "TCP"})
	}
	return object("v1", "Service", ns, name, nil, map[string]any{"selector": selector, "ports": ps})
}

func pod(ns, name string, labels map[string]any) map[string]any {
	return object("v1", "Pod", ns, name, labels, map[string]any{"containers": []any{
		map[string]any{"name": "app", "image": "app"},
		map[string]any{"name": "istio-proxy", "image": "proxyv2"},
	}})
}

func writeDoc(t *testing.T, w *bytes.Buffer, doc map[string]any) {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("---\n")
	w.Write(b)
}

func str(v any) string { s, _ := v.(string); return s }

func list(v any) []any { l, _ := v.([]any); return l }

func number(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case float64:
		return int64(n), true
	}
	return 0, false
}
