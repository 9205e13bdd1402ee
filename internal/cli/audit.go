package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// parseSince accepts Go durations plus days ("7d").
func parseSince(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "d") {
		n, err := strconv.Atoi(strings.TrimSuffix(s, "d"))
		if err == nil && n >= 0 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--since %q: use a duration such as 30m, 2h or 7d", s)
	}
	return d, nil
}

func newAuditCmd(e *env) *cobra.Command {
	var (
		since, kind, fqn, output string
		limit                    int32
		refused                  bool
	)
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "List the audit log: who changed what, when, field by field",
		Example: "  flotilla audit --since 1h\n  flotilla audit --kind workspace --fqn organizations/acme",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &pb.ListAuditRequest{Fqn: fqn, Limit: limit, Refused: refused}
			if kind != "" {
				k, err := e.kindArg(kind)
				if err != nil {
					return err
				}
				req.Kind = k.Name
			}
			if since != "" {
				d, err := parseSince(since)
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(time.Now().Add(-d))
			}
			res, err := e.audit().ListAudit(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			switch output {
			case "json":
				return writeJSON(e.out, res.Msg)
			case "yaml":
				b, err := toYAML(res.Msg)
				if err != nil {
					return err
				}
				_, err = e.out.Write(b)
				return err
			case "table":
				if len(res.Msg.GetRecords()) == 0 {
					fmt.Fprintln(e.errOut, "no audit records")
				}
				printAudit(e.out, res.Msg.GetRecords(), "")
				return nil
			}
			return fmt.Errorf("-o %q: use table, yaml or json", output)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only records newer than this, e.g. 30m, 2h, 7d")
	cmd.Flags().StringVar(&kind, "kind", "", "only this kind")
	cmd.Flags().StringVar(&fqn, "fqn", "", "only this resource and its descendants")
	cmd.Flags().Int32Var(&limit, "limit", 0, "at most this many of the newest records (default 1000)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, yaml or json")
	cmd.Flags().BoolVar(&refused, "refused", false, "also list requests the server refused (bad input, no credential, no permission)")
	return cmd
}

// printAudit writes one line per record and one per changed field:
// "+" added, "-" removed, "~" changed.
func printAudit(w io.Writer, recs []*pb.AuditRecord, prefix string) {
	for _, r := range recs {
		who := r.GetActor()
		if r.GetMethod() != "" {
			who += " (" + r.GetMethod() + ")"
		}
		if r.GetRefused() {
			fmt.Fprintf(w, "%s%s  REFUSED  %s  %s %s %s\n%s    reason: %s\n", prefix, r.GetTime().AsTime().Format(time.RFC3339), who, r.GetOperation(), r.GetKind(), r.GetFqn(), prefix, r.GetReason())
			continue
		}
		fmt.Fprintf(w, "%s%s  rev %d  %s  %s %s %s\n", prefix, r.GetTime().AsTime().Format(time.RFC3339), r.GetRevision(), who, r.GetOperation(), r.GetKind(), r.GetFqn())
		for _, c := range r.GetChanges() {
			switch {
			case c.GetOld() == nil:
				fmt.Fprintf(w, "%s    + %s: %s\n", prefix, c.GetPath(), valueString(c.GetNew()))
			case c.GetNew() == nil:
				fmt.Fprintf(w, "%s    - %s: %s\n", prefix, c.GetPath(), valueString(c.GetOld()))
			default:
				fmt.Fprintf(w, "%s    ~ %s: %s -> %s\n", prefix, c.GetPath(), valueString(c.GetOld()), valueString(c.GetNew()))
			}
		}
	}
}

// valueString renders a value as compact JSON. (protojson's output is
// deliberately unstable in its spacing; encoding/json's is not.)
func valueString(v *structpb.Value) string {
	b, err := json.Marshal(v.AsInterface())
	if err != nil {
		return v.String()
	}
	return string(b)
}
