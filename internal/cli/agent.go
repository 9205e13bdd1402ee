package cli

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla.io/flotilla/internal/agent"
)

func newAgentCmd(e *env) *cobra.Command {
	var (
		cluster, tokenFile, kubeconfig, logLevel, health string
		qps                                              float32
		burst                                            int
		lifecycle                                        bool
	)
	cmd := &cobra.Command{
		Use:   "agent --cluster NAME --token-file FILE [--kubeconfig FILE]",
		Short: "Run the agent of one cluster",
		Long: `Run a cluster's agent: it dials the central control plane (--server), keeps
the latest bundle in its cluster, and applies it as native Istio objects.
The join token is needed only the first time: the agent makes a key pair,
keeps the private key in the cluster (secret
flotilla-system/flotilla-agent-credential) and joins with the public key; it
proves the key on every stream. A token file with a new token (the cluster
was onboarded again) makes it join again with a new key.
Without --kubeconfig it uses the in-cluster configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			log := slog.New(slog.NewTextHandler(e.errOut, &slog.HandlerOptions{Level: level})).With("cluster", cluster)
			var (
				kube *rest.Config
				err  error
			)
			if kubeconfig != "" {
				kube, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
			} else {
				kube, err = rest.InClusterConfig()
			}
			if err != nil {
				return fmt.Errorf("kubernetes configuration: %w (outside a cluster, pass --kubeconfig)", err)
			}
			kube.QPS, kube.Burst = qps, burst
			e.warnClearText() // the agent's token and assertions
			a, err := agent.New(agent.Config{Server: e.server, Cluster: cluster, TokenFile: tokenFile, Kube: kube, Version: Version, Log: log, TLS: e.tlsConfig, HealthListen: health, IstioLifecycle: lifecycle})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "this cluster's name in Flotilla (required)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the join token from `flotilla cluster onboard`")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: in-cluster configuration)")
	cmd.Flags().StringVar(&health, "health-listen", "", "address for /healthz and /readyz (e.g. :8081 in a pod); neither depends on reaching the management plane")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().Float32Var(&qps, "kube-qps", agent.DefaultQPS, "requests per second the agent may send its cluster's API server")
	cmd.Flags().IntVar(&burst, "kube-burst", agent.DefaultBurst, "burst above --kube-qps")
	cmd.Flags().BoolVar(&lifecycle, "istio-lifecycle", false, "install and upgrade Istio from the IstioInstallations that select this cluster (needs the chart's istioLifecycle.enabled permissions)")
	cmd.MarkFlagRequired("cluster")
	return cmd
}
