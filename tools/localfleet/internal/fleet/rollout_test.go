package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	appsclient "k8s.io/client-go/kubernetes/typed/apps/v1"
	"k8s.io/client-go/util/retry"

	"flotilla.io/flotilla/tools/localfleet/internal/cluster"
	"flotilla.io/flotilla/tools/localfleet/internal/istio"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// Without workloads nothing but the supervisor writes an istiod
// Deployment's status. It writes what the Deployment controller would:
// every replica ready and the Deployment Available while its istiod is
// ready, none ready and not Available while its istiod is down (killed, or
// restarting after a change of its arguments). A new generation that
// restarts nothing is observed too. After a stop and a start of the
// cluster the status is written again, and scaled to zero the Deployment has
// no replicas and is Available, as the Deployment controller says.
func TestWithoutWorkloadsAnIstiodDeploymentIsAvailableExactlyWhileItsIstiodIsReady(t *testing.T) {
	opts := testOptions(t, 1)
	if _, err := os.Stat(filepath.Join(opts.BinDir, cluster.Istiod)); err != nil {
		t.Fatalf("%v: run `make fleet-istio` at the repository root first", err)
	}
	opts.RunIstiods = true
	opts.Log = slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, _, client := startFleet(ctx, t, opts)
	c1 := f.Manifest().Clusters[0]
	deployments := client.AppsV1().Deployments(istio.Namespace)

	if _, err := client.CoreV1().ConfigMaps(istio.Namespace).Create(ctx, canaryMesh(), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create mesh configmap: %v", err)
	}
	if _, err := deployments.Create(ctx, canaryIstiod(c1.Name), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	istiod := waitIstiod(ctx, t, opts.Dir, "canary", func(cluster.DeployedIstiod) bool { return true })
	dep := waitDeployment(ctx, t, deployments, rolledOut(1))
	if !writesStatus(dep, cluster.StatusManager) {
		t.Errorf("the status of deployment %s is not written by field manager %s: %s", dep.Name, cluster.StatusManager, managers(dep))
	}

	// A new generation that restarts nothing: two replicas and a label of
	// the pod template.
	dep = updateDeployment(ctx, t, deployments, func(d *appsv1.Deployment) {
		d.Spec.Replicas = new(int32(2))
		d.Spec.Template.Labels["release"] = "canary-2"
	})
	dep = waitDeployment(ctx, t, deployments, rolledOut(2))
	if m, _ := ReadManifest(opts.Dir); m.Clusters[0].Istiods["canary"].PID != istiod.PID {
		t.Errorf("the new generation restarted istiod: pid %d, was %d", m.Clusters[0].Istiods["canary"].PID, istiod.PID)
	}

	// istiod killed: not ready, so neither are the replicas, until the
	// supervisor has started it again after its back-off.
	if err := proc.Signal(istiod.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	down := watchDeployment(ctx, t, deployments, dep.ResourceVersion, serving(2, false))
	up := watchDeployment(ctx, t, deployments, down.ResourceVersion, rolledOut(2))
	again := waitIstiod(ctx, t, opts.Dir, "canary", func(d cluster.DeployedIstiod) bool { return d.PID != istiod.PID })
	if proc.Alive(istiod.PID, cluster.Istiod) {
		t.Errorf("istiod pid %d, killed, is alive", istiod.PID)
	}

	// A change of istiod's arguments restarts it: a rollout of the new
	// generation, not ready until the new istiod is.
	dep = updateDeployment(ctx, t, deployments, func(d *appsv1.Deployment) {
		args := d.Spec.Template.Spec.Containers[0].Args
		d.Spec.Template.Spec.Containers[0].Args = append(slices.Clone(args), "--log_output_level=default:debug")
	})
	down = watchDeployment(ctx, t, deployments, dep.ResourceVersion, func(d *appsv1.Deployment) error {
		if err := serving(2, false)(d); err != nil {
			return err
		}
		if p := deploymentCondition(d.Status, appsv1.DeploymentProgressing); p == nil || p.Reason != "ReplicaSetUpdated" {
			return fmt.Errorf("condition Progressing %+v, want reason ReplicaSetUpdated", p)
		}
		return nil
	})
	if down.Status.ObservedGeneration != dep.Generation {
		t.Errorf("the status of istiod's restart observes generation %d, want %d", down.Status.ObservedGeneration, dep.Generation)
	}
	up = watchDeployment(ctx, t, deployments, down.ResourceVersion, rolledOut(2))
	restarted := waitIstiod(ctx, t, opts.Dir, "canary", func(d cluster.DeployedIstiod) bool { return d.PID != again.PID })

	// A stop and a start of the cluster: the status is written again (only
	// the supervisor writes this Deployment), ready once istiod is back.
	if err := f.StopCluster(c1.Name); err != nil {
		t.Fatal(err)
	}
	if err := f.StartCluster(ctx, c1.Name); err != nil {
		t.Fatal(err)
	}
	back := waitIstiod(ctx, t, opts.Dir, "canary", func(d cluster.DeployedIstiod) bool { return d.PID != restarted.PID })
	waitDeployment(ctx, t, deployments, func(d *appsv1.Deployment) error {
		if d.ResourceVersion == up.ResourceVersion {
			return errors.New("not written since the cluster started again")
		}
		return rolledOut(2)(d)
	})

	// Scaled to zero: istiod stops, and the Deployment has no replicas.
	updateDeployment(ctx, t, deployments, func(d *appsv1.Deployment) { d.Spec.Replicas = new(int32(0)) })
	waitGone(ctx, t, opts.Dir, back)
	waitDeployment(ctx, t, deployments, rolledOut(0))
}

// With workloads kube-controller-manager writes an istiod Deployment's
// status, from the pods that kwok plays; the supervisor, which runs the
// Deployment's istiod, writes none of it.
func TestWithWorkloadsOnlyKubeControllerManagerWritesAnIstiodDeploymentsStatus(t *testing.T) {
	opts := testOptions(t, 1)
	for _, name := range []string{cluster.Istiod, "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, name)); err != nil {
			t.Fatalf("%v: run `make fleet-workloads fleet-istio` at the repository root first", err)
		}
	}
	opts.Workloads, opts.RunIstiods = true, true
	opts.Log = slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, _, client := startFleet(ctx, t, opts)
	deployments := client.AppsV1().Deployments(istio.Namespace)

	// The chart's pods run as their own service account, which admission
	// requires to exist.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "istiod-canary", Namespace: istio.Namespace}}
	if _, err := client.CoreV1().ServiceAccounts(istio.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service account: %v", err)
	}
	created, err := deployments.Create(ctx, canaryIstiod(f.Manifest().Clusters[0].Name), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	// Every write of the Deployment from its creation on, so that one by
	// the supervisor is seen even if a later one by kube-controller-manager
	// took over its fields.
	w, err := deployments.Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", created.Name).String(),
		ResourceVersion: created.ResourceVersion,
	})
	if err != nil {
		t.Fatalf("watch deployment: %v", err)
	}
	defer w.Stop()

	// Once fleet.json lists the istiod, the supervisor has written whatever
	// it writes for it being ready.
	waitIstiod(ctx, t, opts.Dir, "canary", func(cluster.DeployedIstiod) bool { return true })
	waitDeployment(ctx, t, deployments, rolledOut(1))
	// A last write, the test's own: the watch delivers every write before it
	// first.
	marked := updateDeployment(ctx, t, deployments, func(d *appsv1.Deployment) {
		d.Annotations = map[string]string{"localfleet.flotilla.io/test": "last write"}
	})
	byControllerManager, seen := false, false
	for ev := range w.ResultChan() {
		d, ok := ev.Object.(*appsv1.Deployment)
		if !ok {
			t.Fatalf("watch of deployment %s: %+v", created.Name, ev.Object)
		}
		if writesStatus(d, cluster.StatusManager) {
			t.Fatalf("the supervisor wrote the status of deployment %s (resource version %s): %s", d.Name, d.ResourceVersion, managers(d))
		}
		byControllerManager = byControllerManager || writesStatus(d, "kube-controller-manager")
		if seen = d.ResourceVersion == marked.ResourceVersion; seen {
			break
		}
	}
	if !seen {
		t.Fatalf("the watch of deployment %s ended before the test's own write, resource version %s", marked.Name, marked.ResourceVersion)
	}
	if !byControllerManager {
		t.Errorf("kube-controller-manager never wrote the status of deployment %s: %s", marked.Name, managers(marked))
	}
}

// rolledOut checks that a Deployment's status observes its generation and
// has every one of replicas updated, ready and available, with the
// conditions that the Deployment controller gives a completed rollout.
func rolledOut(replicas int32) func(*appsv1.Deployment) error {
	return func(d *appsv1.Deployment) error {
		if err := serving(replicas, true)(d); err != nil {
			return err
		}
		if p := deploymentCondition(d.Status, appsv1.DeploymentProgressing); p == nil || p.Status != corev1.ConditionTrue || p.Reason != "NewReplicaSetAvailable" {
			return fmt.Errorf("condition Progressing %+v, want True, NewReplicaSetAvailable", p)
		}
		return nil
	}
}

// serving checks that a Deployment's status observes its generation and
// says that all of its replicas are updated and, if ready, all are ready and
// available and the Deployment is Available; if not, none is ready or
// available, and the Deployment is not Available.
func serving(replicas int32, ready bool) func(*appsv1.Deployment) error {
	return func(d *appsv1.Deployment) error {
		s := d.Status
		if s.ObservedGeneration < d.Generation {
			return fmt.Errorf("status of generation %d, the deployment's is %d", s.ObservedGeneration, d.Generation)
		}
		want := int32(0)
		availableWant := corev1.ConditionFalse
		if ready {
			want, availableWant = replicas, corev1.ConditionTrue
		}
		if s.Replicas != replicas || s.UpdatedReplicas != replicas || s.ReadyReplicas != want || s.AvailableReplicas != want || s.UnavailableReplicas != replicas-want {
			return fmt.Errorf("replicas %d, updated %d, ready %d, available %d, unavailable %d; want %d, %d, %d, %d, %d",
				s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas, s.UnavailableReplicas,
				replicas, replicas, want, want, replicas-want)
		}
		if a := deploymentCondition(s, appsv1.DeploymentAvailable); a == nil || a.Status != availableWant {
			return fmt.Errorf("condition Available %+v, want %s", a, availableWant)
		}
		return nil
	}
}

func deploymentCondition(s appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range s.Conditions {
		if s.Conditions[i].Type == t {
			return &s.Conditions[i]
		}
	}
	return nil
}

// writesStatus reports whether field manager manager owns fields of d's
// status.
func writesStatus(d *appsv1.Deployment, manager string) bool {
	return slices.ContainsFunc(d.ManagedFields, func(e metav1.ManagedFieldsEntry) bool {
		return e.Manager == manager && e.Subresource == "status"
	})
}

// managers lists d's field managers, with the subresource of each.
func managers(d *appsv1.Deployment) string {
	var s []string
	for _, e := range d.ManagedFields {
		s = append(s, e.Manager+" "+string(e.Operation)+" "+e.Subresource)
	}
	return fmt.Sprintf("%q", s)
}

// updateDeployment applies change to the canary's Deployment, reading it
// again on a conflict (the supervisor writes its status meanwhile), and
// returns it as updated.
func updateDeployment(ctx context.Context, t *testing.T, deployments appsclient.DeploymentInterface, change func(*appsv1.Deployment)) *appsv1.Deployment {
	t.Helper()
	var updated *appsv1.Deployment
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := deployments.Get(ctx, "istiod-canary", metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(d)
		updated, err = deployments.Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("update deployment istiod-canary: %v", err)
	}
	return updated
}

// waitDeployment waits until the canary's Deployment satisfies ok, and
// returns it.
func waitDeployment(ctx context.Context, t *testing.T, deployments appsclient.DeploymentInterface, ok func(*appsv1.Deployment) error) *appsv1.Deployment {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last, readErr error = errors.New("not read"), nil
	for ctx.Err() == nil {
		d, err := deployments.Get(ctx, "istiod-canary", metav1.GetOptions{})
		if err == nil {
			if last = ok(d); last == nil {
				return d
			}
		} else if ctx.Err() == nil {
			readErr = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("deployment istiod-canary never was as wanted: %v (last error reading it: %v)", last, readErr)
	return nil
}

// watchDeployment returns the canary's Deployment as the first of its
// writes after resource version rv left it that satisfies ok: every write is
// seen, however short-lived the state it wrote.
func watchDeployment(ctx context.Context, t *testing.T, deployments appsclient.DeploymentInterface, rv string, ok func(*appsv1.Deployment) error) *appsv1.Deployment {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w, err := deployments.Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", "istiod-canary").String(),
		ResourceVersion: rv,
	})
	if err != nil {
		t.Fatalf("watch deployment istiod-canary: %v", err)
	}
	defer w.Stop()
	last := errors.New("no write")
	for ev := range w.ResultChan() {
		d, isDeployment := ev.Object.(*appsv1.Deployment)
		if !isDeployment {
			t.Fatalf("watch of deployment istiod-canary from resource version %s: %+v", rv, ev.Object)
		}
		if last = ok(d); last == nil {
			return d
		}
	}
	t.Fatalf("no write of deployment istiod-canary after resource version %s was as wanted; the last: %v", rv, last)
	return nil
}
