package cluster

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// istiodDeployment is an istiod Deployment in istio-system with one
// container, discovery, for revision rev ("" for no label).
func istiodDeployment(name, rev string, args []string, env ...corev1.EnvVar) *appsv1.Deployment {
	labels := map[string]string{"app": "istiod"}
	if rev != "" {
		labels[revisionLabel] = rev
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", Labels: labels},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "discovery", Image: "docker.io/istio/pilot:1.31.1", Args: args, Env: env}},
		}}},
	}
}

func value(name, v string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: v} }

func field(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// defaults are the environment that every istiod of Deployment name and
// revision rev starts from.
func defaults(name, rev string) []string {
	return []string{"POD_NAME=" + name + "-localfleet", "POD_NAMESPACE=istio-system", "REVISION=" + rev, "GOGC=50"}
}

func TestAnIstiodDeploymentRunsItsContainersArgumentsAndTheEnvironmentKubernetesWouldGiveIt(t *testing.T) {
	chartArgs := []string{"discovery", "--monitoringAddr=:15014", "--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m"}
	sidecarFirst := istiodDeployment("istiod", "", []string{"discovery"})
	sidecarFirst.Spec.Template.Spec.Containers = append([]corev1.Container{{Name: "sidecar", Args: []string{"sleep"}}},
		sidecarFirst.Spec.Template.Spec.Containers...)
	withCommand := istiodDeployment("istiod-a", "a", []string{"--domain", "example.local"})
	withCommand.Spec.Template.Spec.Containers[0].Command = []string{"/usr/local/bin/pilot-discovery", "discovery"}
	withAccount := istiodDeployment("istiod-b", "b", nil, field("SERVICE_ACCOUNT", "spec.serviceAccountName"))
	withAccount.Spec.Template.Spec.ServiceAccountName = "istiod-b"

	tests := []struct {
		name     string
		dep      *appsv1.Deployment
		wantRev  string
		wantArgs []string
		wantEnv  []string
	}{
		{
			name: "the chart's container: its arguments, its values and the pod's fields, without KUBECONFIG and resource limits",
			dep: istiodDeployment("istiod-canary", "canary", chartArgs,
				value("REVISION", "canary"), value("PILOT_CERT_PROVIDER", "istiod"),
				field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
				field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
				value("KUBECONFIG", "/var/run/secrets/remote/config"), value("CLUSTER_ID", "c3"),
				corev1.EnvVar{Name: "GOMAXPROCS", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
				value("PLATFORM", "")),
			wantRev:  "canary",
			wantArgs: chartArgs,
			wantEnv: append(defaults("istiod-canary", "canary"), "REVISION=canary", "PILOT_CERT_PROVIDER=istiod",
				"POD_NAME=istiod-canary-localfleet", "POD_NAMESPACE=istio-system", "SERVICE_ACCOUNT=default",
				"CLUSTER_ID=c3", "PLATFORM="),
		},
		{
			name:     "without a revision label, the revision is default",
			dep:      istiodDeployment("istiod", "", []string{"discovery"}),
			wantRev:  "default",
			wantArgs: []string{"discovery"},
			wantEnv:  defaults("istiod", "default"),
		},
		{
			name:     "a command names pilot-discovery; its other words come before the arguments",
			dep:      withCommand,
			wantRev:  "a",
			wantArgs: []string{"discovery", "--domain", "example.local"},
			wantEnv:  defaults("istiod-a", "a"),
		},
		{
			name:     "arguments without the discovery command get it, and the pod's service account is the template's",
			dep:      withAccount,
			wantRev:  "b",
			wantArgs: []string{"discovery"},
			wantEnv:  append(defaults("istiod-b", "b"), "SERVICE_ACCOUNT=istiod-b"),
		},
		{
			name:     "the container named discovery runs, not the first",
			dep:      sidecarFirst,
			wantRev:  "default",
			wantArgs: []string{"discovery"},
			wantEnv:  defaults("istiod", "default"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev, cmd, err := istiodCommandOf(tt.dep)
			if err != nil {
				t.Fatal(err)
			}
			if rev != tt.wantRev || cmd.deployment != tt.dep.Name {
				t.Errorf("revision %q of deployment %q, want %q of %q", rev, cmd.deployment, tt.wantRev, tt.dep.Name)
			}
			if !slices.Equal(cmd.args, tt.wantArgs) {
				t.Errorf("args\n %q\nwant\n %q", cmd.args, tt.wantArgs)
			}
			if !slices.Equal(cmd.env, tt.wantEnv) {
				t.Errorf("env\n %q\nwant\n %q", cmd.env, tt.wantEnv)
			}
		})
	}
}

func TestOnlyAChangeOfArgumentsOrEnvironmentRestartsADeploymentsIstiod(t *testing.T) {
	base := func() *appsv1.Deployment {
		return istiodDeployment("istiod-canary", "canary", []string{"discovery", "--domain", "cluster.local"}, value("PILOT_CERT_PROVIDER", "istiod"))
	}
	tests := []struct {
		name    string
		change  func(*appsv1.Deployment)
		restart bool
	}{
		{"replicas", func(d *appsv1.Deployment) { d.Spec.Replicas = new(int32(3)) }, false},
		{"image", func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "docker.io/istio/pilot:1.31.2" }, false},
		{"resources", func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}
		}, false},
		{"labels and annotations", func(d *appsv1.Deployment) {
			d.Labels["release"] = "istiod-canary"
			d.Spec.Template.Annotations = map[string]string{"prometheus.io/scrape": "true"}
		}, false},
		{"an argument", func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Args = append(d.Spec.Template.Spec.Containers[0].Args, "--log_output_level=default:debug")
		}, true},
		{"an environment variable", func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Env = append(d.Spec.Template.Spec.Containers[0].Env, value("PILOT_PUSH_THROTTLE", "50"))
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, before, err := istiodCommandOf(base())
			if err != nil {
				t.Fatal(err)
			}
			changed := base()
			tt.change(changed)
			_, after, err := istiodCommandOf(changed)
			if err != nil {
				t.Fatal(err)
			}
			if restart := !before.equal(after); restart != tt.restart {
				t.Errorf("a change of %s restarts istiod: %v, want %v", tt.name, restart, tt.restart)
			}
		})
	}
}

func TestDeploymentsAskForOneIstiodPerRevisionUnlessScaledToZeroOrBeingDeleted(t *testing.T) {
	scaledToZero := istiodDeployment("istiod-zero", "zero", nil)
	scaledToZero.Spec.Replicas = new(int32(0))
	deleting := istiodDeployment("istiod-old", "old", nil)
	deleting.DeletionTimestamp = &metav1.Time{}
	empty := istiodDeployment("istiod-empty", "empty", nil)
	empty.Spec.Template.Spec.Containers = nil
	deps := []*appsv1.Deployment{
		istiodDeployment("istiod-canary-copy", "canary", nil), // sorts after istiod-canary
		istiodDeployment("istiod-canary", "canary", nil),
		istiodDeployment("istiod", "default", nil),
		scaledToZero, deleting, empty,
	}
	want, problems := desiredIstiods(deps)
	got := map[string]string{}
	for rev, cmd := range want {
		got[rev] = cmd.deployment
	}
	if w := map[string]string{"default": "istiod", "canary": "istiod-canary"}; !reflect.DeepEqual(got, w) {
		t.Errorf("deployments run, by revision: %v, want %v", got, w)
	}
	reported := errors.Join(problems...)
	for _, name := range []string{"istiod-canary-copy", "istiod-empty"} {
		if reported == nil || !strings.Contains(reported.Error(), name) {
			t.Errorf("problems %v do not name deployment %s", reported, name)
		}
	}
	if len(problems) != 2 {
		t.Errorf("%d problems reported, want 2: %v", len(problems), reported)
	}
	if deps[0].Name != "istiod-canary-copy" {
		t.Errorf("desiredIstiods reordered its input: first is now %s", deps[0].Name)
	}
}

func TestTheFleetsFlagsReplaceADeploymentsInEveryForm(t *testing.T) {
	own := []string{"--kubeconfig=/fleet/c1.kubeconfig", "--httpAddr=127.0.0.1:1", "--monitoringAddr=127.0.0.1:3"}
	args := []string{"discovery", "--monitoringAddr=:15014", "--kubeconfig", "/var/run/secrets/remote/config",
		"-httpAddr", ":8080", "--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m", "--log_as_json"}
	want := append([]string{"discovery", "--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m", "--log_as_json"}, own...)
	if got := overriding(args, own); !slices.Equal(got, want) {
		t.Errorf("overriding\n %q\nwant\n %q", got, want)
	}
	if args[1] != "--monitoringAddr=:15014" {
		t.Errorf("overriding changed its input: %q", args)
	}
}
