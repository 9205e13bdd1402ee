package cluster

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var (
	before = metav1.NewTime(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	now    = metav1.NewTime(time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC))
)

// chartIstiod is an istiod Deployment of generation 3 as the API server
// keeps it: Istio chart's rolling update (maxSurge 100%, maxUnavailable
// 25%), the default progress deadline, no status yet.
func chartIstiod(replicas *int32) *appsv1.Deployment {
	surge, unavailable := intstr.FromString("100%"), intstr.FromString("25%")
	dep := istiodDeployment("istiod-canary", "canary", nil)
	dep.Generation = 3
	dep.Spec.Replicas = replicas
	dep.Spec.ProgressDeadlineSeconds = new(int32(600))
	dep.Spec.Strategy = appsv1.DeploymentStrategy{
		Type:          appsv1.RollingUpdateDeploymentStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &surge, MaxUnavailable: &unavailable},
	}
	return dep
}

// cond is a Deployment condition.
func cond(t appsv1.DeploymentConditionType, s corev1.ConditionStatus, reason, message string, updated, transition metav1.Time) appsv1.DeploymentCondition {
	return appsv1.DeploymentCondition{Type: t, Status: s, Reason: reason, Message: message, LastUpdateTime: updated, LastTransitionTime: transition}
}

func available(at metav1.Time) appsv1.DeploymentCondition {
	return cond(appsv1.DeploymentAvailable, corev1.ConditionTrue, "MinimumReplicasAvailable", "Deployment has minimum availability.", at, at)
}

func unavailable(at metav1.Time) appsv1.DeploymentCondition {
	return cond(appsv1.DeploymentAvailable, corev1.ConditionFalse, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", at, at)
}

func complete(at metav1.Time) appsv1.DeploymentCondition {
	return cond(appsv1.DeploymentProgressing, corev1.ConditionTrue, "NewReplicaSetAvailable", `Deployment "istiod-canary" has successfully progressed.`, at, at)
}

func progressing(updated, transition metav1.Time) appsv1.DeploymentCondition {
	return cond(appsv1.DeploymentProgressing, corev1.ConditionTrue, "ReplicaSetUpdated", `Deployment "istiod-canary" is progressing.`, updated, transition)
}

// counts is a status of generation gen with replicas replicas, of which
// ready are ready and available, and conditions.
func counts(gen int64, replicas, ready int32, conditions ...appsv1.DeploymentCondition) appsv1.DeploymentStatus {
	return appsv1.DeploymentStatus{
		ObservedGeneration: gen, Replicas: replicas, UpdatedReplicas: replicas, ReadyReplicas: ready, AvailableReplicas: ready,
		UnavailableReplicas: replicas - ready, TerminatingReplicas: new(int32(0)), Conditions: conditions,
	}
}

func TestAnIstiodDeploymentsStatusIsTheDeploymentControllersForReplicasReadyExactlyWhileItsIstiodIs(t *testing.T) {
	withStatus := func(dep *appsv1.Deployment, s appsv1.DeploymentStatus) *appsv1.Deployment {
		dep.Status = s
		return dep
	}
	fullyUnavailable := chartIstiod(new(int32(2)))
	all := intstr.FromString("100%")
	fullyUnavailable.Spec.Strategy.RollingUpdate.MaxUnavailable = &all
	noDeadline := withStatus(chartIstiod(nil), counts(3, 1, 1, available(before), complete(before)))
	noDeadline.Spec.ProgressDeadlineSeconds = new(int32(math.MaxInt32))
	collided := chartIstiod(nil)
	collided.Status.CollisionCount = new(int32(2))
	wantCollided := counts(3, 1, 1, available(now), complete(now))
	wantCollided.CollisionCount = new(int32(2))

	tests := []struct {
		name  string
		dep   *appsv1.Deployment
		ready bool
		want  appsv1.DeploymentStatus
	}{
		{
			name:  "a new Deployment whose istiod is ready: one replica, rolled out and available since now",
			dep:   chartIstiod(nil),
			ready: true,
			want:  counts(3, 1, 1, available(now), complete(now)),
		},
		{
			name: "a new Deployment whose istiod is starting: its replica is there but neither ready nor available, the rollout progressing",
			dep:  chartIstiod(nil),
			want: counts(3, 1, 0, unavailable(now), progressing(now, now)),
		},
		{
			name:  "two replicas, one istiod: both ready while it is",
			dep:   chartIstiod(new(int32(2))),
			ready: true,
			want:  counts(3, 2, 2, available(now), complete(now)),
		},
		{
			// A changed condition goes last, as the controller puts it.
			name: "an istiod gone after its rollout completed: unavailable since now, and no new rollout",
			dep:  withStatus(chartIstiod(nil), counts(3, 1, 1, available(before), complete(before))),
			want: counts(3, 1, 0, complete(before), unavailable(now)),
		},
		{
			name: "a new generation whose istiod restarts: a rollout in progress, Progressing since before",
			dep:  withStatus(chartIstiod(nil), counts(2, 1, 1, available(before), complete(before))),
			want: counts(3, 1, 0, unavailable(now), progressing(now, before)),
		},
		{
			name:  "a new generation that restarts nothing (two replicas now): counted, the conditions left as they were",
			dep:   withStatus(chartIstiod(new(int32(2))), counts(2, 1, 1, available(before), complete(before))),
			ready: true,
			want:  counts(3, 2, 2, available(before), complete(before)),
		},
		{
			name:  "the istiod ready again after a restart: available and rolled out since now",
			dep:   withStatus(chartIstiod(nil), counts(3, 1, 0, unavailable(before), progressing(before, before))),
			ready: true,
			want:  counts(3, 1, 1, available(now), cond(appsv1.DeploymentProgressing, corev1.ConditionTrue, "NewReplicaSetAvailable", `Deployment "istiod-canary" has successfully progressed.`, now, before)),
		},
		{
			name: "scaled to zero (no istiod runs): no replicas, and Available, as the Deployment controller says of 0 of 0",
			dep:  withStatus(chartIstiod(new(int32(0))), counts(2, 1, 1, available(before), complete(before))),
			want: counts(3, 0, 0, available(before), complete(before)),
		},
		{
			name: "a maxUnavailable of 100% leaves no ready replica Available, as the Deployment controller judges it",
			dep:  fullyUnavailable,
			want: counts(3, 2, 0, available(now), progressing(now, now)),
		},
		{
			name:  "without a progress deadline there is no Progressing condition",
			dep:   noDeadline,
			ready: true,
			want:  counts(3, 1, 1, available(before)),
		},
		{
			name:  "the collision count is kept",
			dep:   collided,
			ready: true,
			want:  wantCollided,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.dep.DeepCopy()
			got := rolloutStatus(tt.dep, tt.ready, now)
			if !equality.Semantic.DeepEqual(got, tt.want) {
				t.Errorf("status\n %s\nwant\n %s", asJSON(got), asJSON(tt.want))
			}
			if !equality.Semantic.DeepEqual(tt.dep, in) {
				t.Errorf("rolloutStatus changed its input:\n %s\nwas\n %s", asJSON(tt.dep.Status), asJSON(in.Status))
			}
			// Once written, the status is what a later look finds right:
			// nothing is written again until something changes.
			tt.dep.Status = got
			later := metav1.NewTime(now.Add(time.Hour))
			if again := rolloutStatus(tt.dep, tt.ready, later); !equality.Semantic.DeepEqual(again, got) {
				t.Errorf("an hour later, with nothing changed, the status\n %s\nwould be written as\n %s", asJSON(got), asJSON(again))
			}
		})
	}
}

func TestMaxUnavailableIsResolvedAsTheDeploymentControllerResolvesIt(t *testing.T) {
	rolling := func(surge, unavailable *intstr.IntOrString) appsv1.DeploymentStrategy {
		return appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
			RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: surge, MaxUnavailable: unavailable}}
	}
	pct := func(s string) *intstr.IntOrString { v := intstr.FromString(s); return &v }
	num := func(n int32) *intstr.IntOrString { v := intstr.FromInt32(n); return &v }
	tests := []struct {
		name     string
		strategy appsv1.DeploymentStrategy
		replicas int32
		want     int32
	}{
		{"Istio's chart, 1 replica: 25% rounds down to 0", rolling(pct("100%"), pct("25%")), 1, 0},
		{"Istio's chart, 4 replicas", rolling(pct("100%"), pct("25%")), 4, 1},
		{"the API server's defaults, without parameters", appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType}, 4, 1},
		{"no surge and 0 unavailable after rounding: 1", rolling(num(0), pct("25%")), 1, 1},
		{"more than there are replicas: all of them", rolling(pct("25%"), num(5)), 3, 3},
		{"0 replicas", rolling(pct("100%"), pct("100%")), 0, 0},
		{"Recreate", appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dep := chartIstiod(&tt.replicas)
			dep.Spec.Strategy = tt.strategy
			if got := maxUnavailable(dep, tt.replicas); got != tt.want {
				t.Errorf("maxUnavailable of %d replicas = %d, want %d", tt.replicas, got, tt.want)
			}
		})
	}
}

func asJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
