package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
)

func newDeleteCmd(e *env) *cobra.Command {
	var (
		parents parentFlags
		files   []string
		cascade bool
		force   bool
	)
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME | -f FILE)",
		Short: "Delete a resource, or every resource of a file",
		Long: `Delete a resource. One that has children is refused unless --cascade is given,
which deletes its whole subtree. With -f, the file's resources are deleted
children first.`,
		Example: "  flotilla delete workspace payments --org acme --tenant fintech\n  flotilla delete org acme --cascade\n  flotilla delete -f examples/tenancy.yaml",
		Args:    cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			type target struct {
				kind *resource.Kind
				md   *pb.Metadata
			}
			var targets []target
			switch {
			case len(files) > 0 && len(args) > 0:
				return fmt.Errorf("give either KIND NAME or -f FILE, not both")
			case len(files) > 0:
				docs, errs := ReadManifests(files, e.in)
				if len(errs) > 0 {
					return e.reportManifestErrors(errs)
				}
				kinds := make([]*resource.Kind, len(docs))
				for i, d := range docs {
					k, ok := e.reg.Kind(d.Res.GetKind())
					if !ok {
						return &ManifestError{Doc: d, Field: "kind", Msg: fmt.Sprintf("unknown kind %q: known kinds are %s", d.Res.GetKind(), e.reg.Names())}
					}
					kinds[i] = k
				}
				order := e.reg.SortByDepth(kinds)
				for j := len(order) - 1; j >= 0; j-- { // children first
					i := order[j]
					targets = append(targets, target{kinds[i], docs[i].Res.GetMetadata()})
				}
			case len(args) == 2:
				k, r, err := e.findArg(cmd, args[0], args[1], &parents)
				if err != nil {
					return err
				}
				targets = append(targets, target{k, r.GetMetadata()})
			default:
				return fmt.Errorf("name what to delete: KIND NAME, or -f FILE")
			}
			for _, t := range targets {
				res, err := e.resources().Delete(cmd.Context(), connect.NewRequest(&pb.DeleteRequest{Kind: t.kind.Name, Metadata: t.md, Cascade: cascade, Force: force}))
				if err != nil {
					return err
				}
				for _, f := range res.Msg.GetDeleted() {
					fmt.Fprintf(e.out, "%s deleted\n", f)
				}
			}
			return nil
		},
	}
	parents.add(cmd)
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, directory or - (repeatable)")
	cmd.Flags().BoolVar(&cascade, "cascade", false, "also delete every descendant")
	cmd.Flags().BoolVar(&force, "force", false, "delete even what workloads in clusters still use (an IstioInstallation whose revision injected running pods)")
	return cmd
}
