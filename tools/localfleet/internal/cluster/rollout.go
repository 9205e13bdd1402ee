package cluster

// The status of istiod Deployments in a cluster without Spec.Workloads.
//
// Without kube-controller-manager and kwok nothing writes a Deployment's
// status, so an istiod Deployment would never become Available although a
// real istiod serves for it, and whatever waits for its rollout (as Istio's
// upgrade order has gateways wait for their revision's istiod) would wait
// forever. So the loop of RunDeployedIstiods plays the Deployment controller
// and the kubelet for them: it writes each one's status as the Deployment
// controller would if the Deployment had one pod per replica, all ready
// while its istiod is ready and none otherwise. With Spec.Workloads it
// writes nothing: kube-controller-manager does, from the pods kwok plays.

import (
	"context"
	"fmt"
	"math"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// StatusManager is the field manager of the status that the cluster writes
// for istiod Deployments without Spec.Workloads: the owner of that status in
// its managedFields, where kube-controller-manager's would be.
const StatusManager = "localfleet"

// The Deployment controller's condition reasons and messages
// (k8s.io/kubernetes/pkg/controller/deployment, v1.36), for a Deployment
// without a ReplicaSet to name.
const (
	reasonAvailable   = "MinimumReplicasAvailable"
	reasonUnavailable = "MinimumReplicasUnavailable"
	reasonComplete    = "NewReplicaSetAvailable"
	reasonProgressing = "ReplicaSetUpdated"

	messageAvailable   = "Deployment has minimum availability."
	messageUnavailable = "Deployment does not have minimum availability."
	messageComplete    = "Deployment %q has successfully progressed."
	messageProgressing = "Deployment %q is progressing."
)

// rolloutStatus returns the status that the Deployment controller would
// write for dep if it had one pod per replica (spec.replicas, 1 when unset)
// of its current pod template, all of them ready and available when ready
// is true and none of them otherwise; now stamps the conditions that change.
// As the controller does, it keeps dep's conditions whose status and reason
// stay the same (so that a status that did not change compares equal to
// dep's), and it judges availability against the rolling update's
// maxUnavailable: 0 of 0 replicas is Available, and so is 0 of 1 with a
// maxUnavailable of 100%. The Progressing condition says
// NewReplicaSetAvailable once every replica is available; while not, it
// stays NewReplicaSetAvailable if dep's rollout had completed at this
// generation (a pod that crashes starts no rollout), and is otherwise
// ReplicaSetUpdated. It never says ProgressDeadlineExceeded.
func rolloutStatus(dep *appsv1.Deployment, ready bool, now metav1.Time) appsv1.DeploymentStatus {
	replicas := int32(1)
	if dep.Spec.Replicas != nil {
		replicas = *dep.Spec.Replicas
	}
	available := int32(0)
	if ready {
		available = replicas
	}
	status := appsv1.DeploymentStatus{
		ObservedGeneration:  dep.Generation,
		Replicas:            replicas,
		UpdatedReplicas:     replicas,
		ReadyReplicas:       available,
		AvailableReplicas:   available,
		UnavailableReplicas: replicas - available,
		TerminatingReplicas: new(int32(0)),
		Conditions:          slices.Clone(dep.Status.Conditions),
		CollisionCount:      dep.Status.CollisionCount,
	}

	if available >= replicas-maxUnavailable(dep, replicas) {
		setCondition(&status, appsv1.DeploymentAvailable, corev1.ConditionTrue, reasonAvailable, messageAvailable, now)
	} else {
		setCondition(&status, appsv1.DeploymentAvailable, corev1.ConditionFalse, reasonUnavailable, messageUnavailable, now)
	}

	progressing := condition(dep.Status, appsv1.DeploymentProgressing)
	switch {
	case dep.Spec.ProgressDeadlineSeconds == nil || *dep.Spec.ProgressDeadlineSeconds == math.MaxInt32:
		// Without a progress deadline the controller reports no progress.
		status.Conditions = slices.DeleteFunc(status.Conditions, func(c appsv1.DeploymentCondition) bool {
			return c.Type == appsv1.DeploymentProgressing
		})
	case available == replicas:
		setCondition(&status, appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonComplete, fmt.Sprintf(messageComplete, dep.Name), now)
	case progressing != nil && progressing.Reason == reasonComplete && dep.Status.ObservedGeneration == dep.Generation:
		// The rollout of this generation completed; its istiod went since.
	default:
		setCondition(&status, appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonProgressing, fmt.Sprintf(messageProgressing, dep.Name), now)
	}
	return status
}

// maxUnavailable is how many of replicas dep's rolling update may leave
// unavailable, as the Deployment controller resolves it (MaxUnavailable and
// ResolveFenceposts in its util package): maxUnavailable rounded down and
// maxSurge rounded up, 1 if both come to 0, at most replicas; 0 for the
// Recreate strategy and for 0 replicas. A rolling update without parameters
// has the API server's defaults, 25% and 25%.
func maxUnavailable(dep *appsv1.Deployment, replicas int32) int32 {
	if dep.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || replicas == 0 {
		return 0
	}
	defaults := intstr.FromString("25%")
	surge, unavailable := &defaults, &defaults
	if ru := dep.Spec.Strategy.RollingUpdate; ru != nil {
		surge, unavailable = ru.MaxSurge, ru.MaxUnavailable
	}
	zero := intstr.FromInt32(0)
	s, err1 := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(surge, zero), int(replicas), true)
	u, err2 := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(unavailable, zero), int(replicas), false)
	if err1 != nil || err2 != nil {
		return 0 // the API server's validation refuses such values
	}
	if s == 0 && u == 0 {
		u = 1
	}
	return min(int32(u), replicas)
}

// condition returns status's condition of type t, or nil.
func condition(status appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range status.Conditions {
		if status.Conditions[i].Type == t {
			return &status.Conditions[i]
		}
	}
	return nil
}

// setCondition sets status's condition of type t as the Deployment
// controller's SetDeploymentCondition does: a condition of the same status
// and reason is kept as it is; one of the same status keeps its
// lastTransitionTime.
func setCondition(status *appsv1.DeploymentStatus, t appsv1.DeploymentConditionType, s corev1.ConditionStatus, reason, message string, now metav1.Time) {
	c := appsv1.DeploymentCondition{Type: t, Status: s, Reason: reason, Message: message, LastUpdateTime: now, LastTransitionTime: now}
	if old := condition(*status, t); old != nil {
		if old.Status == s && old.Reason == reason {
			return
		}
		if old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		}
	}
	status.Conditions = append(slices.DeleteFunc(status.Conditions, func(c appsv1.DeploymentCondition) bool { return c.Type == t }), c)
}

// writeStatus makes dep's status what rolloutStatus says for ready, unless
// it already is. On a conflict it reads the Deployment again and retries, a
// few times (retry.DefaultRetry); a Deployment gone meanwhile is no error.
func writeStatus(ctx context.Context, client kubernetes.Interface, dep *appsv1.Deployment, ready bool) error {
	deployments := client.AppsV1().Deployments(dep.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		status := rolloutStatus(dep, ready, metav1.Now())
		if equality.Semantic.DeepEqual(status, dep.Status) {
			return nil
		}
		next := dep.DeepCopy()
		next.Status = status
		_, err := deployments.UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: StatusManager})
		if apierrors.IsConflict(err) {
			fresh, getErr := deployments.Get(ctx, dep.Name, metav1.GetOptions{})
			if getErr != nil {
				return getErr
			}
			dep = fresh
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write status of deployment %s/%s: %w", dep.Namespace, dep.Name, err)
	}
	return nil
}
