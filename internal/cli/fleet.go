package cli

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"flotilla.io/flotilla/deploy/charts"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/central/fleetapi"
)

func (e *env) fleet() flotillav1alpha1connect.FleetServiceClient {
	return flotillav1alpha1connect.NewFleetServiceClient(e.httpClient(), strings.TrimSuffix(e.server, "/"), e.clientOptions()...)
}

func newClusterCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Onboard clusters"}
	var (
		org   string
		ttl   time.Duration
		force bool
	)
	var output, agentServer string
	onboard := &cobra.Command{
		Use:   "onboard NAME",
		Short: "Print a one-time join token for a cluster (to stdout only), or the agent chart's values, or its manifests",
		Long: `Issue a one-time join token for a cluster's agent (valid for --ttl, one hour by
default, and usable once) and print it to stdout, with how to start the agent
on stderr. With -o helm-values it prints the values of the flotilla-agent chart
instead, for

  flotilla cluster onboard NAME -o helm-values |
    helm install flotilla-agent deploy/charts/flotilla-agent -n flotilla-system --create-namespace -f -

and with -o manifests the chart rendered as plain YAML, for kubectl apply -f -.
The agent dials --agent-server (default: the server this CLI talks to) and
trusts the CA of --ca-file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "token", "helm-values", "manifests":
			default:
				return fmt.Errorf("-o %q: use token, helm-values or manifests", output)
			}
			url := cmp.Or(agentServer, e.server)
			var ca string
			if e.caFile != "" && output != "token" {
				b, err := os.ReadFile(e.caFile)
				if err != nil {
					return fmt.Errorf("--ca-file: %w", err)
				}
				ca = string(b)
			}
			md, err := e.clusterMetadata(cmd, args[0], org)
			if err != nil {
				return err
			}
			res, err := e.fleet().Onboard(cmd.Context(), connect.NewRequest(&pb.OnboardRequest{Metadata: md, Ttl: durationpb.New(ttl), Force: force}))
			if err != nil {
				return err
			}
			m := res.Msg
			expires := m.GetExpireTime().AsTime().Format(time.RFC3339)
			// The cluster as the agent names it: its name, or its FQN when
			// --org had to say which.
			cluster := args[0]
			if org != "" {
				cluster = m.GetCluster()
			}
			switch output {
			case "helm-values":
				b, err := yaml.Marshal(charts.AgentValues(cluster, url, ca, m.GetToken()))
				if err != nil {
					return err
				}
				fmt.Fprintf(e.out, "# flotilla-agent values for %s; the join token is valid until %s and usable once.\n%s", m.GetCluster(), expires, b)
				return nil
			case "manifests":
				c, err := charts.Load(charts.Agent)
				if err != nil {
					return err
				}
				out, err := charts.Render(c, "flotilla-agent", charts.AgentNamespace, charts.AgentValues(cluster, url, ca, m.GetToken()))
				if err != nil {
					return err
				}
				fmt.Fprintf(e.out, "# The agent of %s (chart flotilla-agent, rendered); its join token is valid until %s and usable once.\n# Apply with: kubectl apply --server-side -f -\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n---\n%s", m.GetCluster(), expires, charts.AgentNamespace, out)
				return nil
			}
			fmt.Fprintf(e.errOut, "Join token for %s (valid until %s, usable once):\n", m.GetCluster(), expires)
			fmt.Fprintln(e.out, m.GetToken())
			// The token goes to stdout only, never into a hint on stderr that
			// ends up in scrollback and CI logs.
			fmt.Fprintf(e.errOut, "\nSave it with `flotilla cluster onboard %s > %s.token` and start the cluster's agent with:\n\n  flotilla agent --server %s --cluster %s --token-file %s.token --kubeconfig <%s's kubeconfig>\n\nor install it into the cluster with `flotilla cluster onboard %s -o helm-values | helm install flotilla-agent deploy/charts/flotilla-agent -n flotilla-system --create-namespace -f -`\n",
				args[0], args[0], url, cluster, args[0], args[0], args[0])
			return nil
		},
	}
	onboard.Flags().StringVarP(&output, "output", "o", "token", "token, helm-values (for the flotilla-agent chart) or manifests (the chart rendered, for kubectl)")
	onboard.Flags().StringVar(&agentServer, "agent-server", "", "the management plane's URL as the agent dials it (default: --server)")
	onboard.Flags().StringVar(&org, "org", "", "organization of the cluster (needed only when the name is ambiguous)")
	onboard.Flags().DurationVar(&ttl, "ttl", fleetapi.DefaultTokenTTL, "how long the token stays valid")
	onboard.Flags().BoolVar(&force, "force", false, "issue a token even though the cluster's agent is connected: joining with it replaces that agent's credential")
	cmd.AddCommand(onboard, newRevokeCmd(e), newDrainCmd(e, true), newDrainCmd(e, false))
	return cmd
}

// newDrainCmd is `cluster drain` (drain) or `cluster undrain`: it sets the
// Cluster's spec.drained through the resource API (so it is audited and
// kept like any write) and, with --wait, waits until no DNS record set
// answers with the cluster's entry points and every edge cluster has
// applied the drain, showing what still sends traffic there.
func newDrainCmd(e *env, drain bool) *cobra.Command {
	var (
		org     string
		wait    bool
		timeout time.Duration
	)
	verb := map[bool]string{true: "drain", false: "undrain"}[drain]
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: map[bool]string{true: "Take a cluster's entry points out of DNS answers and edge gateways (e.g. before an upgrade)", false: "Bring a drained cluster's entry points back into DNS answers and edge gateways"}[drain],
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, _ := e.reg.Kind("Cluster")
			r, err := e.find(cmd, k, args[0], &parentFlags{org: org})
			if err != nil {
				return err
			}
			fields := map[string]any{}
			if r.GetSpec() != nil {
				fields = r.GetSpec().AsMap()
			}
			if drain {
				fields["drained"] = true
			} else {
				delete(fields, "drained")
			}
			spec, err := structpb.NewStruct(fields)
			if err != nil {
				return err
			}
			r.Spec = spec
			res, err := e.resources().Apply(cmd.Context(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}}))
			if err != nil {
				return err
			}
			fmt.Fprintf(e.out, "cluster %s %sed (store revision %d)\n", args[0], verb, res.Msg.GetRevision())
			if !wait || !drain {
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			orgFQN := strings.Join(strings.SplitN(r.GetMetadata().GetFqn(), "/", 3)[:2], "/")
			for attempt := 0; ; attempt++ {
				still, err := e.stillServing(ctx, orgFQN, args[0])
				if err != nil {
					return err
				}
				edges, err := e.edgesPending(ctx, orgFQN, res.Msg.GetRevision())
				if err != nil {
					return err
				}
				still = append(still, edges...)
				if len(still) == 0 {
					fmt.Fprintf(e.out, "no DNS answer points at %s\n", args[0])
					fmt.Fprintf(e.out, "no edge gateway sends traffic to %s\n", args[0])
					return nil
				}
				if attempt == 0 {
					for _, s := range still {
						fmt.Fprintf(e.errOut, "still sending traffic to %s: %s\n", args[0], s)
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("%s still receives traffic after %s: %s", args[0], timeout, strings.Join(still, "; "))
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "organization of the cluster (needed only when the name is ambiguous)")
	if drain {
		cmd.Flags().BoolVar(&wait, "wait", false, "wait until no DNS record set answers with the cluster's entry points and every edge gateway has dropped it")
		cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long --wait waits")
	}
	return cmd
}

// stillServing lists the DNS record sets of the organization whose status
// shows an entry point of cluster that is not drained yet.
func (e *env) stillServing(ctx context.Context, org, cluster string) ([]string, error) {
	sets, err := e.listAll(ctx, &pb.ListRequest{Kind: "DNSRecordSet", Parent: org})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range sets {
		res, err := e.fleet().GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "DNSRecordSet", Fqn: s.GetMetadata().GetFqn()}))
		if err != nil {
			return nil, err
		}
		for _, row := range res.Msg.GetClusters() {
			if row.GetCluster() == cluster && !strings.Contains(row.GetMessage(), "drained") {
				out = append(out, fmt.Sprintf("%s (%s)", s.GetMetadata().GetFqn(), row.GetMessage()))
			}
		}
	}
	return out, nil
}

// edgesPending lists the edge gateways of the organization that some edge
// cluster has not applied as of revision (the drain's): until it has, that
// edge may still send traffic to the drained cluster.
func (e *env) edgesPending(ctx context.Context, org string, revision int64) ([]string, error) {
	gws, err := e.listAll(ctx, &pb.ListRequest{Kind: "EdgeGateway", Parent: org})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range gws {
		res, err := e.fleet().GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: "EdgeGateway", Fqn: g.GetMetadata().GetFqn(), MinRevision: revision}))
		if err != nil {
			return nil, err
		}
		for _, row := range res.Msg.GetClusters() {
			if row.GetState() == "Pending" {
				out = append(out, fmt.Sprintf("edge gateway %s in cluster %s (has not applied the drain yet)", g.GetMetadata().GetFqn(), row.GetCluster()))
			}
		}
	}
	return out, nil
}

func newStatusCmd(e *env) *cobra.Command {
	var (
		parents  parentFlags
		wait     bool
		timeout  time.Duration
		output   string
		revision int64
	)
	cmd := &cobra.Command{
		Use:   "status KIND NAME",
		Short: "Show where a resource stands in every cluster it targets",
		Long: `Show a resource's state in every target cluster: Pending, Applied (with the
store revision the cluster has applied) or Failed (with the cluster's
message). A cluster counts as Applied only once it has applied the
resource's last write (and its group's), or --revision when that is newer:
pass the revision that apply printed to wait for that apply. Workspaces and
groups aggregate their resources as ACCEPTED, READY, PARTIAL or FAILED.
With --wait, exit 0 once every target cluster has applied it, 1 on a
failure or timeout.`,
		Example: "  flotilla status ingressgateway shop --wait --timeout 30s\n  flotilla status group payments-gateway --wait --revision 42",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if wait { // the whole wait, finding the resource included, is bounded
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
				cmd.SetContext(ctx)
			}
			k, r, err := e.findArg(cmd, args[0], args[1], &parents)
			if err != nil {
				if wait && ctx.Err() != nil {
					return fmt.Errorf("no answer from the server within %s (%v)", timeout, connect.CodeOf(err))
				}
				return err
			}
			req := &pb.GetStatusRequest{Kind: k.Name, Fqn: r.GetMetadata().GetFqn(), MinRevision: revision}
			var last *pb.GetStatusResponse
			for {
				res, err := e.fleet().GetStatus(ctx, connect.NewRequest(req))
				switch {
				case err == nil:
					last = res.Msg
				case !wait || ctx.Err() == nil && !retryable(err):
					return err
				}
				if wait && ctx.Err() == nil && (last == nil || !settled(last)) {
					select {
					case <-time.After(250 * time.Millisecond):
					case <-ctx.Done():
					}
					continue
				}
				if last == nil { // timed out without one answer
					return fmt.Errorf("no status for %s within %s (%v)", req.GetFqn(), timeout, connect.CodeOf(err))
				}
				if output == "json" {
					if err := writeJSON(e.out, last); err != nil {
						return err
					}
				} else {
					printStatus(e, last)
				}
				switch {
				case !wait:
					return nil
				case last.GetAggregate() == fleetapi.Failed:
					fmt.Fprintf(e.errOut, "error: %s failed in at least one cluster\n", last.GetFqn())
				case settled(last):
					return nil
				default:
					fmt.Fprintf(e.errOut, "error: %s is %s after %s (clusters must reach revision %d)\n", last.GetFqn(), last.GetAggregate(), timeout, last.GetRevision())
				}
				return &ExitError{Code: 1}
			}
		},
	}
	parents.add(cmd)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every target cluster has applied it (READY)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long --wait waits")
	cmd.Flags().Int64Var(&revision, "revision", 0, "count a cluster as Applied only once it has applied this store revision (printed by apply)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// settled reports whether waiting can stop: the resource is READY or
// FAILED, or it targets no cluster and the central control plane has
// computed bundles up to the revision asked for (nothing to wait for).
func settled(st *pb.GetStatusResponse) bool {
	switch st.GetAggregate() {
	case fleetapi.Ready, fleetapi.Failed:
		return true
	case fleetapi.Accepted:
		return st.GetCentralRevision() >= st.GetRevision() && len(st.GetChildren()) == 0 && len(st.GetClusters()) == 0
	}
	return false
}

// retryable reports whether a failed status read is worth retrying while
// waiting: the server is starting, unreachable or slow.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeUnknown:
		return true
	}
	return false
}

func printStatus(e *env, st *pb.GetStatusResponse) {
	fmt.Fprintf(e.out, "%s %s: %s (revision %d; central at %d)\n", st.GetKind(), st.GetFqn(), st.GetAggregate(), st.GetRevision(), st.GetCentralRevision())
	if st.GetError() != "" {
		fmt.Fprintf(e.out, "error: %s\n", st.GetError())
	}
	rows := []*pb.GetStatusResponse{st}
	if len(st.GetChildren()) > 0 {
		rows = st.GetChildren()
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tCLUSTER\tSTATE\tREVISION\tCONNECTED\tMESSAGE")
	for _, r := range rows {
		if len(r.GetClusters()) == 0 {
			fmt.Fprintf(tw, "%s\t-\t%s\t\t\tno cluster selected yet\n", r.GetFqn(), r.GetAggregate())
		}
		for _, c := range r.GetClusters() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%v\t%s\n", r.GetFqn(), c.GetCluster(), c.GetState(), c.GetRevision(), c.GetConnected(), c.GetMessage())
		}
	}
	tw.Flush()
}
