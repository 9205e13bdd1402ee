package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
)

// fleetClient calls the server's FleetService as the bootstrap administrator.
func (s *server) fleetClient() flotillav1alpha1connect.FleetServiceClient {
	return flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, s.url, connect.WithInterceptors(connect.UnaryInterceptorFunc(
		func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+s.token)
				return next(ctx, req)
			}
		})))
}

// registryView lists namespace's services as the registry has them in
// cluster: "name ports" lines, sorted.
func registryView(ctx context.Context, fc flotillav1alpha1connect.FleetServiceClient, cluster, namespace string) ([]string, error) {
	res, err := fc.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{Namespace: namespace}))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range res.Msg.GetServices() {
		for _, in := range s.GetInstances() {
			if strings.HasSuffix(in.GetCluster(), "/"+cluster) {
				var ports []string
				for _, p := range s.GetPorts() {
					ports = append(ports, fmt.Sprintf("%s:%d", p.GetName(), p.GetNumber()))
				}
				out = append(out, s.GetName()+" "+strings.Join(ports, ","))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// The agent's runtime reports lose nothing: in the middle of a burst of
// 1,000 Service changes its stream is cut (and reconnects are refused for a
// while); once the link is back, the registry equals the cluster's real
// services.
func TestTheRegistryEqualsTheClusterAfterItsStreamIsCutInABurst(t *testing.T) {
	c1 := clusters(t)[0]
	const ns = "burst"
	c1.reset(t, ns)
	c1.runWorkloads(t, quickstartWorkloads(8080)...)
	ctx := context.Background()
	t.Cleanup(func() { _ = c1.kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}) })

	dir := t.TempDir()
	s := startServer(t, dir)
	s.must("apply", "-f", "examples/quickstart.yaml")
	token := strings.TrimSpace(s.must("cluster", "onboard", c1.name))
	if err := os.WriteFile(filepath.Join(dir, "c1.token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	link := newPartition(t, s.addr)
	startProcess(t, dir, nil, "agent", "--server", link.url(), "--cluster", c1.name, "--token-file", filepath.Join(dir, "c1.token"), "--kubeconfig", c1.kubeconfig)
	fc := s.fleetClient()
	eventually(t, 60*time.Second, "the agent's first runtime report", func() error {
		res, err := fc.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{Namespace: "default", Name: "kubernetes"}))
		if err != nil || len(res.Msg.GetServices()) != 1 {
			return fmt.Errorf("default/kubernetes not listed: %v %v", res, err)
		}
		return nil
	})

	// The burst: 1,000 changes from 8 writers (700 creates, then updates of
	// every fifth service's port, then 160 deletes); the link is cut after
	// the first 300 and restored after 600.
	svc := func(i, port int) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%04d", i), Namespace: ns},
			Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: int32(port)}}}}
	}
	var ops []func() error
	for i := range 700 {
		ops = append(ops, func() error {
			_, err := c1.kube.CoreV1().Services(ns).Create(ctx, svc(i, 8080), metav1.CreateOptions{})
			return err
		})
	}
	for i := 0; i < 700 && len(ops) < 1000; i += 5 {
		ops = append(ops, func() error {
			cur, err := c1.kube.CoreV1().Services(ns).Get(ctx, fmt.Sprintf("s%04d", i), metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Spec.Ports[0].Port = 9090
			_, err = c1.kube.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
	}
	for i := 3; len(ops) < 1000; i += 4 {
		ops = append(ops, func() error {
			return c1.kube.CoreV1().Services(ns).Delete(ctx, fmt.Sprintf("s%04d", i), metav1.DeleteOptions{})
		})
	}
	// The phases run one after another, each by 8 writers.
	run := func(phase []func() error) {
		var wg sync.WaitGroup
		next := make(chan func() error)
		for range 8 {
			wg.Go(func() {
				for op := range next {
					if err := op(); err != nil {
						t.Errorf("burst: %v", err)
					}
				}
			})
		}
		for _, op := range phase {
			next <- op
		}
		close(next)
		wg.Wait()
	}
	run(ops[:300])
	link.setCut(true)
	run(ops[300:600])
	link.setCut(false)
	run(ops[600:700])
	run(ops[700:840])
	run(ops[840:])

	list, err := c1.kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, s := range list.Items {
		want = append(want, fmt.Sprintf("%s http:%d", s.Name, s.Spec.Ports[0].Port))
	}
	slices.Sort(want)
	if len(want) < 500 {
		t.Fatalf("the burst left only %d services", len(want))
	}
	var got []string
	eventually(t, 60*time.Second, "the registry to equal the cluster's services", func() error {
		got, err = registryView(ctx, fc, c1.name, ns)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("registry has %d services, the cluster %d", len(got), len(want))
		}
		return nil
	})
	analyzeClusters(t, c1)
}
