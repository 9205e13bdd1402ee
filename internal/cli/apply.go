package cli

import (
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func newApplyCmd(e *env) *cobra.Command {
	var (
		files  []string
		dryRun bool
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update resources from YAML",
		Long: `Apply every document of the given files in one transaction. Every document is
validated before any is written; parents are applied before children whatever
the order in the files. On any error nothing is written and the exit code is 1.`,
		Example: "  flotilla apply -f examples/tenancy.yaml\n  cat app.yaml | flotilla apply -f -",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("name what to apply with -f FILE, -f DIR or -f - (standard input)")
			}
			docs, errs := ReadManifests(files, e.in)
			if len(errs) > 0 {
				return e.reportManifestErrors(errs)
			}
			req := &pb.ApplyRequest{DryRun: dryRun, Force: force}
			for _, d := range docs {
				req.Resources = append(req.Resources, d.Res)
			}
			res, err := e.resources().Apply(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return e.reportServerError(err, docs)
			}
			suffix := ""
			if dryRun {
				suffix = " (dry run)"
			}
			for _, r := range res.Msg.GetResults() {
				fmt.Fprintf(e.out, "%s %s%s\n", r.GetResource().GetMetadata().GetFqn(), outcomeWord(r.GetOutcome()), suffix)
			}
			if !dryRun {
				fmt.Fprintf(e.errOut, "store revision %d (wait for it: flotilla status KIND NAME --wait --revision %d)\n", res.Msg.GetRevision(), res.Msg.GetRevision())
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, directory or - (repeatable)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate and report what would change, without writing")
	cmd.Flags().BoolVar(&force, "force", false, "allow a change that deletes live objects in clusters (a group whose selector narrows, an Istio revision taken from clusters whose pods still use it); see `flotilla plan` first")
	return cmd
}

func outcomeWord(o pb.Outcome) string {
	switch o {
	case pb.Outcome_OUTCOME_CREATED:
		return "created"
	case pb.Outcome_OUTCOME_CONFIGURED:
		return "configured"
	case pb.Outcome_OUTCOME_UNCHANGED:
		return "unchanged"
	case pb.Outcome_OUTCOME_DELETED:
		return "deleted"
	}
	return strings.ToLower(o.String())
}

func (e *env) reportManifestErrors(errs []error) error {
	for _, err := range errs {
		fmt.Fprintln(e.errOut, "error:", err)
	}
	fmt.Fprintf(e.errOut, "nothing was applied: %d error(s)\n", len(errs))
	return &ExitError{Code: 1}
}

// reportServerError maps the server's per-resource violations back to the
// files and lines they came from.
func (e *env) reportServerError(err error, docs []*Document) error {
	vs := violations(err)
	if len(vs) == 0 {
		return err
	}
	errs := make([]error, 0, len(vs))
	for _, v := range vs {
		i := int(v.GetIndex())
		if i < 0 || i >= len(docs) {
			errs = append(errs, fmt.Errorf("%s %q: %s: %s", v.GetKind(), v.GetName(), v.GetField(), v.GetMessage()))
			continue
		}
		errs = append(errs, &ManifestError{Doc: docs[i], Field: v.GetField(), Msg: v.GetMessage()})
	}
	if connect.CodeOf(err) == connect.CodeAborted {
		for _, err := range errs {
			fmt.Fprintln(e.errOut, "error:", err)
		}
		fmt.Fprintf(e.errOut, "nothing was applied: conflict\n")
		return &ExitError{Code: 1}
	}
	return e.reportManifestErrors(errs)
}
