package fleet

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla.io/flotilla/tools/localfleet/internal/istio"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

var (
	crdResource       = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	namespaceResource = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
)

// binDir returns the repository's bin/ (or $FLOTILLA_BIN_DIR), failing tb
// with the make target to run when the binaries are missing.
func binDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("FLOTILLA_BIN_DIR")
	if dir == "" {
		dir = "../../../../bin"
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, name := range []string{"etcd", "kube-apiserver", "istio-crds.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			tb.Fatalf("%v: run `make fleet` at the repository root first", err)
		}
	}
	return dir
}

func testOptions(tb testing.TB, clusters int) Options {
	bin := binDir(tb)
	return Options{
		Clusters:   clusters,
		NamePrefix: "c",
		Dir:        tb.TempDir(),
		BinDir:     bin,
		CRDs:       filepath.Join(bin, "istio-crds.yaml"),
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func TestStartedFleetIsDescribedServedOverVerifiedTLSAndFullyStopped(t *testing.T) {
	opts := testOptions(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			f.Stop()
		}
	}()

	onDisk, err := ReadManifest(opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(onDisk, f.Manifest()) {
		t.Errorf("fleet.json %+v differs from the returned manifest %+v", onDisk, f.Manifest())
	}
	if len(onDisk.Clusters) != 2 || onDisk.Clusters[0].Name != "c1" || onDisk.Clusters[1].Name != "c2" {
		t.Fatalf("manifest clusters %+v, want c1 and c2", onDisk.Clusters)
	}
	if onDisk.Clusters[0].Region == onDisk.Clusters[1].Region || onDisk.Clusters[0].Zone == onDisk.Clusters[1].Zone {
		t.Errorf("clusters share a region or zone: %+v", onDisk.Clusters)
	}

	for _, c := range onDisk.Clusters {
		raw, err := clientcmd.LoadFromFile(c.Kubeconfig)
		if err != nil {
			t.Fatalf("%s: load kubeconfig: %v", c.Name, err)
		}
		for name, cl := range raw.Clusters {
			if cl.InsecureSkipTLSVerify || len(cl.CertificateAuthorityData) == 0 {
				t.Errorf("%s: kubeconfig cluster %s does not verify TLS with a CA", c.Name, name)
			}
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		dc, err := discovery.NewDiscoveryClientForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		v, err := dc.ServerVersion()
		if err != nil {
			t.Fatalf("%s: server version over verified TLS: %v", c.Name, err)
		}
		if !strings.HasPrefix(v.GitVersion, "v1.36.") {
			t.Errorf("%s: server version %s, want v1.36.x", c.Name, v.GitVersion)
		}
	}

	pids := map[int]string{}
	for _, c := range onDisk.Clusters {
		for name, pid := range c.PIDs {
			pids[pid] = name
		}
	}
	f.Stop()
	stopped = true
	if alive := proc.WaitGone(pids, time.Second); len(alive) > 0 {
		t.Errorf("processes %v still alive after Stop", alive)
	}
}

func TestABareClusterHasNoIstioCRDsNorIstioSystemWhileAPreparedOneHas(t *testing.T) {
	opts := testOptions(t, 2)
	opts.Bare = 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()

	m := f.Manifest()
	if m.Clusters[0].Bare || !m.Clusters[1].Bare {
		t.Fatalf("fleet.json marks c1 bare %v and c2 bare %v, want only c2", m.Clusters[0].Bare, m.Clusters[1].Bare)
	}
	for _, c := range m.Clusters {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		client, err := dynamic.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		crds, err := client.Resource(crdResource).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("%s: list crds: %v", c.Name, err)
		}
		networking := 0
		for _, crd := range crds.Items {
			if strings.HasSuffix(crd.GetName(), ".networking.istio.io") {
				networking++
			}
		}
		_, nsErr := client.Resource(namespaceResource).Get(ctx, istio.Namespace, metav1.GetOptions{})
		switch {
		case c.Bare && (networking > 0 || !apierrors.IsNotFound(nsErr)):
			t.Errorf("bare %s has %d networking.istio.io CRDs and namespace %s (get: %v), want none", c.Name, networking, istio.Namespace, nsErr)
		case !c.Bare && (networking == 0 || nsErr != nil):
			t.Errorf("%s has %d networking.istio.io CRDs and namespace %s (get: %v), want them", c.Name, networking, istio.Namespace, nsErr)
		}
	}
}

func TestMoreBareClustersThanClustersIsRefused(t *testing.T) {
	opts := testOptions(t, 1)
	opts.Bare = 2
	if f, err := Start(context.Background(), opts); err == nil {
		f.Stop()
		t.Fatal("Start with Bare 2 of 1 cluster succeeded, want an error")
	}
}
