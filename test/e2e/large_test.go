package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// largeIntent is the quickstart's tenancy, a DIRECT group for c1 only, and
// n VirtualServices in it; vs0's host is host0.
func largeIntent(t *testing.T, n int, host0 string) string {
	t.Helper()
	var b strings.Builder
	qs := quickstart(t, "big.example.com", 8080)
	b.WriteString(qs[:strings.Index(qs, "kind: IngressGateway")-len("apiVersion: flotilla.io/v1alpha1\n")])
	b.WriteString("---\n" + strings.Replace(directGroup, `["*/payments"]`, `["c1/payments"]`, 1))
	for i := range n {
		host := fmt.Sprintf("vs%05d.example.com", i)
		if i == 0 {
			host = host0
		}
		fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs%05d, namespace: payments, organization: acme, tenant: fintech, workspace: payments, group: payments-direct}\nspec:\n  hosts: [%s]\n  http:\n    - route:\n        - destination: {host: web.payments.svc.cluster.local}\n", i, host)
	}
	return b.String()
}

func TestAClusterWithTenThousandObjectsConvergesAndAOneObjectChangeRewritesOneObject(t *testing.T) {
	const n = 10000
	c1 := clusters(t)[0]
	c1.reset(t, "payments")
	c1.runWorkloads(t, workload{namespace: "payments", name: "web", ports: []int32{8080}})
	t.Cleanup(func() { c1.reset(t, "payments") }) // leave no 10,000 objects for the next test's agent to prune
	ctx := context.Background()
	dir := t.TempDir()
	s := startServer(t, dir)
	file := filepath.Join(dir, "large.yaml")
	if err := os.WriteFile(file, []byte(largeIntent(t, n, "first.example.com")), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := s.flotilla("", "apply", "-f", file); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	token := strings.TrimSpace(s.must("cluster", "onboard", "c1"))
	os.WriteFile(filepath.Join(dir, "c1.token"), []byte(token), 0o600)
	start := time.Now()
	startProcess(t, dir, nil, "agent", "--server", s.url, "--cluster", "c1", "--token-file", filepath.Join(dir, "c1.token"), "--kubeconfig", c1.kubeconfig, "--kube-qps", "500", "--kube-burst", "1000")
	// The CLI's own wait is bounded by the test's exec limit: poll it.
	eventually(t, 4*time.Minute, "10,000 objects applied", func() error {
		r := s.flotilla("", "status", "group", "payments-direct", "-o", "json")
		if r.code != 0 || !strings.Contains(r.stdout, `"READY"`) {
			failed := s.flotilla("", "status", "virtualservice", "vs09999")
			return fmt.Errorf("not READY yet: %s", failed.stdout)
		}
		return nil
	})
	t.Logf("10,000 objects converged %s after the agent started", time.Since(start).Round(time.Millisecond))

	list := func() map[string]string {
		l, err := c1.dyn.Resource(vsGVR).Namespace("payments").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rvs := map[string]string{}
		for _, o := range l.Items {
			rvs[o.GetName()] = o.GetResourceVersion()
		}
		return rvs
	}
	before := list()
	if len(before) != n {
		t.Fatalf("%d VirtualServices in c1, want %d", len(before), n)
	}
	// The bundle is stored in parts, each well inside etcd's request limit.
	bundles := schema.GroupVersionResource{Group: "flotilla.io", Version: "v1alpha1", Resource: "bundles"}
	parts, err := c1.dyn.Resource(bundles).Namespace("flotilla-system").List(ctx, metav1.ListOptions{LabelSelector: "flotilla.io/bundle-part"})
	if err != nil {
		t.Fatal(err)
	}
	if len(parts.Items) < 2 {
		t.Fatalf("a bundle of %d objects is stored in %d part(s)", n, len(parts.Items))
	}
	for _, p := range parts.Items {
		if b, err := p.MarshalJSON(); err != nil || len(b) > 1<<20 {
			t.Fatalf("part %s is %d bytes", p.GetName(), len(b))
		}
	}

	if err := os.WriteFile(file, []byte(largeIntent(t, n, "second.example.com")), 0o644); err != nil {
		t.Fatal(err)
	}
	r := s.flotilla("", "apply", "-f", file)
	m := revisionLine.FindStringSubmatch(r.stderr)
	if r.code != 0 || m == nil {
		t.Fatalf("apply: %s", r.stderr)
	}
	if strings.Count(r.stdout, " configured") != 1 {
		t.Fatalf("the second apply changed more than one object:\n%s", r.stdout[:min(len(r.stdout), 2000)])
	}
	changed := time.Now()
	s.must("status", "virtualservice", "vs00000", "--wait", "--revision", m[1], "--timeout", "55s")
	t.Logf("the one-object change reached c1 %s after the apply", time.Since(changed).Round(time.Millisecond))
	after := list()
	var rewritten []string
	for name, rv := range after {
		if before[name] != rv {
			rewritten = append(rewritten, name)
		}
	}
	if len(rewritten) != 1 || rewritten[0] != "vs00000" {
		t.Fatalf("a one-object change rewrote %d objects (%v), want only vs00000", len(rewritten), rewritten[:min(5, len(rewritten))])
	}
	analyzeClusters(t, c1)
}
