package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// kwokNodeAnnotation marks the nodes that kwok simulates.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// podCIDR is the range from which kwok gives pods their IPs.
const podCIDR = "10.244.0.0/16"

// startWorkloads starts the components that turn Deployments into Running
// pods: kube-controller-manager (ReplicaSets, EndpointSlices, service
// accounts), kube-scheduler, and kwok, which plays the kubelet of one node.
// It returns once that node is Ready and the default service account exists.
func (c *Cluster) startWorkloads(ctx context.Context, creds credentials, log *slog.Logger) error {
	components := []struct {
		name string
		args []string
	}{
		{KubeControllerManager, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--secure-port=0",
			"--leader-elect=false",
			"--cluster-name=" + c.Name,
			"--service-account-private-key-file=" + creds.saKey,
			"--root-ca-file=" + creds.caCert,
			"--cluster-signing-cert-file=" + creds.caCert,
			"--cluster-signing-key-file=" + creds.caKey,
		}},
		{KubeScheduler, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--secure-port=0",
			"--leader-elect=false",
		}},
		{Kwok, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--config=" + filepath.Join(c.BinDir, "kwok-stages.yaml"),
			"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
			"--cidr=" + podCIDR,
		}},
	}
	var started []string
	for _, comp := range components {
		p, err := c.start(comp.name, comp.args, nil)
		if err != nil {
			return err
		}
		started = append(started, fmt.Sprintf("%s=%d", comp.name, p.PID()))
	}
	log.Debug("started workload components", "cluster", c.Name, "pids", started)

	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.Server, err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        c.Name + "-node-1",
		Annotations: map[string]string{kwokNodeAnnotation: "fake"},
		Labels: map[string]string{
			"kubernetes.io/hostname":        c.Name + "-node-1",
			"kubernetes.io/os":              "linux",
			"kubernetes.io/arch":            "amd64",
			"type":                          "kwok",
			"topology.kubernetes.io/region": c.Region,
			"topology.kubernetes.io/zone":   c.Zone,
		},
	}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", node.Name, err)
	}
	return poll(ctx, c.procs, "node "+node.Name+" Ready and service account default/default", func(ctx context.Context) error {
		n, err := client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(n) {
			return fmt.Errorf("node %s is not Ready", n.Name)
		}
		_, err = client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("service account default/default not created yet")
		}
		return err
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
