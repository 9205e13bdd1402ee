package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// newRevokeCmd is `cluster revoke`: it deletes a cluster's agent
// credentials and join tokens, and ends its agent's stream.
func newRevokeCmd(e *env) *cobra.Command {
	var org string
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a cluster's agent credential and join tokens, and end its agent's stream",
		Long: `Revoke a cluster's agent credential and unused join tokens: its agent's stream
ends at once on the server that answers, and within 30 seconds on other
replicas. The cluster and its intent stay; its Istio keeps serving what it
has. To let an agent back in, run ` + "`flotilla cluster onboard NAME`" + ` and start
the agent with the new token.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			md, err := e.clusterMetadata(cmd, args[0], org)
			if err != nil {
				return err
			}
			res, err := e.fleet().RevokeCluster(cmd.Context(), connect.NewRequest(&pb.RevokeClusterRequest{Metadata: md}))
			if err != nil {
				return err
			}
			m := res.Msg
			ended := "no agent stream was open to this server"
			if m.GetStreamEnded() {
				ended = "its agent's stream ended"
			}
			fmt.Fprintf(e.out, "cluster %s revoked: %d credential(s) deleted, %s (other replicas end theirs within 30s)\n", m.GetCluster(), m.GetCredentials(), ended)
			return nil
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "organization of the cluster (needed only when the name is ambiguous)")
	return cmd
}

// clusterMetadata names cluster name: in organization org, or, without
// one, wherever the caller's view finds it (an ambiguous name is refused).
func (e *env) clusterMetadata(cmd *cobra.Command, name, org string) (*pb.Metadata, error) {
	if org != "" {
		return &pb.Metadata{Name: name, Organization: org}, nil
	}
	k, _ := e.reg.Kind("Cluster")
	r, err := e.find(cmd, k, name, &parentFlags{})
	if err != nil {
		return nil, err
	}
	return r.GetMetadata(), nil
}
