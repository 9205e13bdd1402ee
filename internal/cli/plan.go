package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func newPlanCmd(e *env) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "plan -f FILE|DIR|-",
		Short: "Show what applying would change in every cluster, without writing anything",
		Long: `Validate resources as apply does, then show per cluster which native Istio
objects applying them would create (+), update (~) or delete (-). Nothing is
written. Clusters are compiled against the namespaces their agents last
reported.`,
		Example: "  flotilla plan -f examples/quickstart.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("name what to plan with -f FILE, -f DIR or -f -")
			}
			docs, errs := ReadManifests(files, e.in)
			if len(errs) > 0 {
				return e.reportManifestErrors(errs)
			}
			req := &pb.PlanRequest{}
			for _, d := range docs {
				req.Resources = append(req.Resources, d.Res)
			}
			res, err := e.fleet().Plan(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return e.reportServerError(err, docs)
			}
			for _, r := range res.Msg.GetResults() {
				fmt.Fprintf(e.out, "%s would be %s\n", r.GetResource().GetMetadata().GetFqn(), outcomeWord(r.GetOutcome()))
			}
			marks := map[string]string{"create": "+", "update": "~", "delete": "-"}
			for _, c := range res.Msg.GetClusters() {
				fmt.Fprintf(e.out, "\ncluster %s:\n", c.GetCluster())
				if len(c.GetChanges()) == 0 {
					fmt.Fprintln(e.out, "  no changes")
				}
				for _, line := range c.GetIstio() {
					fmt.Fprintf(e.out, "  istio: %s\n", line)
				}
				for _, ch := range c.GetChanges() {
					fmt.Fprintf(e.out, "  %s %s %s %s/%s  (%s)\n", marks[ch.GetAction()], ch.GetAction(), ch.GetKind(), ch.GetNamespace(), ch.GetName(), ch.GetOwner())
				}
				for _, d := range c.GetDiagnostics() {
					fmt.Fprintf(e.out, "  ! %s\n", d)
				}
			}
			fmt.Fprintln(e.out, "\nnothing was written")
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, directory or - (repeatable)")
	return cmd
}
