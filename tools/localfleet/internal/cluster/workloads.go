package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// kwokNodeAnnotation marks the nodes that kwok simulates.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// podCIDR is the range from which kwok gives pods their IPs.
const podCIDR = "10.244.0.0/16"

// nodeLeaseSeconds is the duration of the node's Lease in kube-node-lease,
// which kwok renews every quarter of it, as the kubelet does (40 s is the
// kubelet's default, and what kwokctl passes). kwok's own default is 0: no
// Lease at all. Then, since the heartbeat stage in kwok-stages.yaml posts the
// node's status only every 10 minutes and leaves the rest to the Lease,
// kube-controller-manager marks the node NotReady and its pods Ready=False
// once its node-monitor grace period (50 s) has passed, and kwok never makes
// them Ready again.
const nodeLeaseSeconds = 40

// startWorkloads starts the components that turn Deployments into Running
// pods: kube-controller-manager (ReplicaSets, EndpointSlices, service
// accounts), kube-scheduler, and kwok, which plays the kubelet of the node.
func (c *Cluster) startWorkloads(ctx context.Context, log *slog.Logger) error {
	components := []struct {
		name string
		args []string
	}{
		{KubeControllerManager, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--secure-port=0",
			"--leader-elect=false",
			"--cluster-name=" + c.Name,
			"--service-account-private-key-file=" + c.creds.saKey,
			"--root-ca-file=" + c.creds.caCert,
			"--cluster-signing-cert-file=" + c.creds.caCert,
			"--cluster-signing-key-file=" + c.creds.caKey,
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
			"--node-lease-duration-seconds=" + strconv.Itoa(nodeLeaseSeconds),
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
	return nil
}

// nodeName is the name of the cluster's one node.
func (c *Cluster) nodeName() string { return c.Name + "-node-1" }

// createNode creates the node that kwok plays, labelled with the cluster's
// topology.
func (c *Cluster) createNode(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.Server, err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        c.nodeName(),
		Annotations: map[string]string{kwokNodeAnnotation: "fake"},
		Labels: map[string]string{
			"kubernetes.io/hostname":        c.nodeName(),
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
	return nil
}

// waitWorkloads waits until the node is Ready, kwok holds its Lease, and
// the default service account exists.
func (c *Cluster) waitWorkloads(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.Server, err)
	}
	name := c.nodeName()
	return poll(ctx, c.procs, "node "+name+" Ready with its Lease, and service account default/default", func(ctx context.Context) error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(n) {
			return fmt.Errorf("node %s is not Ready", n.Name)
		}
		if _, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("lease of node %s: %w", name, err)
		}
		_, err = client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("service account default/default not created yet")
		}
		return err
	})
}

// releaseNodeLease deletes the node's Lease before Restart starts a new kwok.
// The Lease names the killed kwok as its holder, and the new kwok would wait
// for it to expire (up to nodeLeaseSeconds) before playing the node.
func (c *Cluster) releaseNodeLease(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.Server, err)
	}
	err = client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, c.nodeName(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete lease of node %s: %w", c.nodeName(), err)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
