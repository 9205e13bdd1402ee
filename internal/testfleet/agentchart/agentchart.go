// Package agentchart installs the flotilla-agent chart into a local-fleet
// cluster with the Helm SDK, and gives what the chart's pod would run with:
// the Deployment's arguments, the join token of the chart's Secret, and a
// TokenRequest token of the chart's ServiceAccount. The local fleet has no
// kubelet, so tests and benchmarks run that agent as a process of their
// own, with exactly that identity.
package agentchart

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.io/flotilla/deploy/charts"
)

// Release is the release name Install uses, as in docs/install.md.
const Release = "flotilla-agent"

// Install installs the embedded agent chart with values into the cluster
// of kubeconfig, as `helm install flotilla-agent
// deploy/charts/flotilla-agent -n flotilla-system --create-namespace
// --take-ownership --force-conflicts -f values.yaml` does, and uninstalls
// it when tb ends. Taking ownership is for clusters where an agent ran from
// outside before: its flotilla-multicluster namespace exists, with the
// agent's managed-by label, which conflicts with Helm's.
func Install(tb testing.TB, kubeconfig string, values map[string]any) {
	tb.Helper()
	chrt, err := charts.Load(charts.Agent)
	if err != nil {
		tb.Fatal(err)
	}
	in := action.NewInstall(helmConfig(tb, kubeconfig))
	in.ReleaseName, in.Namespace, in.CreateNamespace = Release, charts.AgentNamespace, true
	in.ServerSideApply = true
	in.TakeOwnership, in.ForceConflicts = true, true
	in.WaitStrategy = kube.HookOnlyStrategy
	in.Timeout = time.Minute
	if _, err := in.Run(chrt, values); err != nil {
		tb.Fatalf("helm install: %v", err)
	}
	tb.Cleanup(func() {
		un := action.NewUninstall(helmConfig(tb, kubeconfig))
		un.WaitStrategy = kube.HookOnlyStrategy
		if _, err := un.Run(Release); err != nil {
			tb.Errorf("helm uninstall: %v", err)
		}
	})
}

func helmConfig(tb testing.TB, kubeconfig string) *action.Configuration {
	tb.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	ns := charts.AgentNamespace
	flags.KubeConfig, flags.Namespace = &kubeconfig, &ns
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, ns, "secret"); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// Pod is what the installed chart's pod would run with.
type Pod struct {
	// Args are the agent's arguments from the chart's Deployment, with the
	// token file and the health port moved into dir and onto a free
	// loopback port, and --kubeconfig of the ServiceAccount's identity.
	Args []string
	// Health is the address of the agent's /healthz and /readyz.
	Health string
	// Identity reaches the cluster as the chart's ServiceAccount.
	Identity *rest.Config
}

// PodOf reads the installed release from the cluster that admin reaches
// and writes the pod's token file and kubeconfig into dir.
func PodOf(tb testing.TB, admin *rest.Config, dir string) Pod {
	tb.Helper()
	ctx := context.Background()
	kc := kubernetes.NewForConfigOrDie(admin)
	ns := charts.AgentNamespace
	dep, err := kc.AppsV1().Deployments(ns).Get(ctx, Release, metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	secret, err := kc.CoreV1().Secrets(ns).Get(ctx, Release+"-join", metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, secret.Data["token"], 0o600); err != nil {
		tb.Fatal(err)
	}
	// What the kubelet mounts: a token of the pod's ServiceAccount.
	sa := dep.Spec.Template.Spec.ServiceAccountName
	tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("TokenRequest for %s/%s: %v", ns, sa, err)
	}
	identity := &rest.Config{Host: admin.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: admin.CAData, CAFile: admin.CAFile}}
	kubeconfig := writeKubeconfig(tb, filepath.Join(dir, "agent-sa.kubeconfig"), identity)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	health := ln.Addr().String()
	ln.Close()
	var args []string
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		switch {
		case strings.HasPrefix(a, "--token-file="):
			a = "--token-file=" + tokenFile
		case strings.HasPrefix(a, "--health-listen="):
			a = "--health-listen=" + health
		}
		args = append(args, a)
	}
	return Pod{Args: append(args, "--kubeconfig", kubeconfig), Health: health, Identity: identity}
}

func writeKubeconfig(tb testing.TB, path string, cfg *rest.Config) string {
	tb.Helper()
	ca := cfg.CAData
	if len(ca) == 0 {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			tb.Fatal(err)
		}
		ca = b
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: ca}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["sa"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	kc.CurrentContext = "sa"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		tb.Fatal(err)
	}
	return path
}
