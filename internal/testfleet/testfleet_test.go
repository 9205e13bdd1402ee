package testfleet_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"flotilla.io/flotilla/internal/testfleet"
)

// childEnv, when set, turns the test binary into a child that starts a fleet,
// prints its pids and waits to be killed.
const childEnv = "TESTFLEET_KILLED_CHILD"

// pidsPrefix starts the line on which the child reports its pids.
const pidsPrefix = "testfleet-pids: "

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runKilledChild()
		return
	}
	testfleet.Main(m, testfleet.Options{Clusters: 2})
}

// runKilledChild starts a fleet, reports its pids on stdout and waits for
// the parent test to kill it. It stops the fleet itself only if nobody does.
func runKilledChild() {
	f, err := testfleet.Start(testfleet.Options{Clusters: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pids, _ := json.Marshal(f.PIDs())
	fmt.Printf("%s%s\n", pidsPrefix, pids)
	time.Sleep(2 * time.Minute)
	_ = f.Stop()
	os.Exit(1)
}

var (
	crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	nsResource  = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	cmResource  = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	vsResource  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
)

func dynamicClient(t *testing.T, cluster string) dynamic.Interface {
	t.Helper()
	client, err := dynamic.NewForConfig(testfleet.Get(t).Cluster(t, cluster).RESTConfig(t))
	if err != nil {
		t.Fatalf("dynamic client for %s: %v", cluster, err)
	}
	return client
}

func TestIstioCRDsAreEstablishedInEveryCluster(t *testing.T) {
	want := []string{
		"virtualservices.networking.istio.io",
		"destinationrules.networking.istio.io",
		"gateways.networking.istio.io",
		"serviceentries.networking.istio.io",
		"sidecars.networking.istio.io",
		"authorizationpolicies.security.istio.io",
		"peerauthentications.security.istio.io",
	}
	clusters := testfleet.Get(t).Clusters()
	if len(clusters) != 2 {
		t.Fatalf("fleet has %d clusters, want 2", len(clusters))
	}
	for _, c := range clusters {
		list, err := dynamicClient(t, c.Name).Resource(crdResource).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("%s: list crds: %v", c.Name, err)
		}
		established := map[string]bool{}
		for _, crd := range list.Items {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					established[crd.GetName()] = true
				}
			}
		}
		for _, name := range want {
			if !established[name] {
				t.Errorf("%s: crd %s is not listed as Established (%d crds listed)", c.Name, name, len(list.Items))
			}
		}
	}
}

func TestVirtualServiceWithAStringHTTPIsRejectedByTheAPIServer(t *testing.T) {
	vs := virtualService("string-http", "x")
	_, err := dynamicClient(t, "c1").Resource(vsResource).Namespace("istio-system").Create(context.Background(), vs, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("create VirtualService with spec.http a string: got error %v, want Invalid", err)
	}
	if !strings.Contains(err.Error(), "spec.http") {
		t.Errorf("rejection does not name spec.http: %v", err)
	}
}

func TestValidVirtualServiceIsAccepted(t *testing.T) {
	vs := virtualService("valid", []any{
		map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "reviews"}}}},
	})
	client := dynamicClient(t, "c2").Resource(vsResource).Namespace("istio-system")
	if _, err := client.Create(context.Background(), vs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create valid VirtualService: %v", err)
	}
	got, err := client.Get(context.Background(), "valid", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get VirtualService back: %v", err)
	}
	http, _, _ := unstructured.NestedSlice(got.Object, "spec", "http")
	if len(http) != 1 {
		t.Errorf("stored VirtualService has spec.http %v, want the one route created", http)
	}
}

func virtualService(name string, http any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       "VirtualService",
		"metadata":   map[string]any{"name": name, "namespace": "istio-system"},
		"spec":       map[string]any{"hosts": []any{"reviews"}, "http": http},
	}}
}

func TestClustersAreSeparateAndCarryDistinctTopology(t *testing.T) {
	ctx := context.Background()
	seen := map[string]string{}
	for _, c := range testfleet.Get(t).Clusters() {
		ns, err := dynamicClient(t, c.Name).Resource(nsResource).Get(ctx, "istio-system", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: get namespace istio-system: %v", c.Name, err)
		}
		labels := ns.GetLabels()
		if labels["topology.kubernetes.io/region"] != c.Region || labels["topology.kubernetes.io/zone"] != c.Zone {
			t.Errorf("%s: istio-system labels %v, want region %q and zone %q from fleet.json", c.Name, labels, c.Region, c.Zone)
		}
		key := c.Region + "/" + c.Zone
		if other, dup := seen[key]; dup {
			t.Errorf("clusters %s and %s share topology %s", other, c.Name, key)
		}
		seen[key] = c.Name
	}

	cm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "only-in-c1", "namespace": "istio-system"},
	}}
	if _, err := dynamicClient(t, "c1").Resource(cmResource).Namespace("istio-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("c1: create ConfigMap: %v", err)
	}
	_, err := dynamicClient(t, "c2").Resource(cmResource).Namespace("istio-system").Get(ctx, "only-in-c1", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("c2: get ConfigMap created in c1: got error %v, want NotFound", err)
	}
}

func TestMissingBinariesNameTheMakeTarget(t *testing.T) {
	t.Setenv(testfleet.BinDirEnv, t.TempDir())
	_, err := testfleet.Start(testfleet.Options{})
	if err == nil || !strings.Contains(err.Error(), "make fleet") {
		t.Fatalf("Start with an empty bin dir: got error %v, want one naming `make fleet`", err)
	}
}

func TestAFleetThatCannotStartReportsLocalfleetsError(t *testing.T) {
	built, err := testfleet.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, name := range []string{"localfleet", "etcd", "kube-apiserver"} {
		if err := os.Symlink(filepath.Join(built, name), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	notCRDs := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: oops\n"
	if err := os.WriteFile(filepath.Join(bin, "istio-crds.yaml"), []byte(notCRDs), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(testfleet.BinDirEnv, bin)

	_, err = testfleet.Start(testfleet.Options{})
	if err == nil || !strings.Contains(err.Error(), `kind "ConfigMap", want CustomResourceDefinition`) {
		t.Fatalf("Start with a ConfigMap as CRD file: got error %v, want localfleet's complaint about the kind", err)
	}
}

func TestNoFleetProcessOutlivesAKilledTestProcess(t *testing.T) {
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=1")
	var stderr bytes.Buffer
	child.Stderr = &stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatalf("start child test process: %v", err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })

	var pids map[int]string
	scanner := bufio.NewScanner(out)
	for scanner.Scan() {
		if rest, ok := strings.CutPrefix(scanner.Text(), pidsPrefix); ok {
			if err := json.Unmarshal([]byte(rest), &pids); err != nil {
				t.Fatalf("decode child's pids %q: %v", rest, err)
			}
			break
		}
	}
	if pids == nil {
		_ = child.Wait()
		t.Fatalf("child reported no pids; its stderr:\n%s", stderr.String())
	}
	for _, want := range []string{"localfleet", "etcd", "kube-apiserver"} {
		if !containsValue(pids, want) {
			t.Fatalf("child reported pids %v, missing %s", pids, want)
		}
	}
	for pid, name := range pids {
		if !alive(pid, name) {
			t.Fatalf("%s (pid %d) is not running before the kill", name, pid)
		}
	}

	if err := child.Process.Kill(); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	_ = child.Wait()

	deadline := time.Now().Add(30 * time.Second)
	for {
		var survivors []string
		for pid, name := range pids {
			if alive(pid, name) {
				survivors = append(survivors, fmt.Sprintf("%s (pid %d)", name, pid))
			}
		}
		if len(survivors) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after SIGKILL of the test process these are still running: %s", strings.Join(survivors, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containsValue(m map[int]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}

// alive reports whether pid is a running, non-zombie process whose command
// line mentions name, so that a reused pid does not count.
func alive(pid int, name string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	return err == nil && bytes.Contains(cmdline, []byte(name))
}
