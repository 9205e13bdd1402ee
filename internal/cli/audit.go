package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/apiserver"
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

// defaultAuditLimit is how many records `flotilla audit` shows unless told.
const defaultAuditLimit = 1000

func newAuditCmd(e *env) *cobra.Command {
	var (
		since, kind, fqn, output string
		limit                    int
		refused, export          bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List the audit log: who changed what, when, field by field",
		Long: `List the audit log, oldest first: the newest records (--limit, 1000 by
default, 0 for all, read page by page), or with --export every record you may
read, streamed as JSON lines for an archive.

Records are shown to whoever may read what they are about; an access
binding's, to whoever may read bindings on its target.`,
		Example: "  flotilla audit --since 1h\n  flotilla audit --kind workspace --fqn organizations/acme\n  flotilla audit --limit 0 -o jsonl\n  flotilla audit --export --refused > audit.jsonl",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: give a number of records, or 0 for all", limit)
			}
			var sinceTS *timestamppb.Timestamp
			if since != "" {
				d, err := parseSince(since)
				if err != nil {
					return err
				}
				sinceTS = timestamppb.New(time.Now().Add(-d))
			}
			if kind != "" && apiserver.ServerWideAuditKind(kind) == "" {
				k, err := e.kindArg(kind)
				if err != nil {
					return err
				}
				kind = k.Name
			}
			if export {
				if cmd.Flags().Changed("limit") {
					return errors.New("--export writes every record: drop --limit")
				}
				if cmd.Flags().Changed("output") && output != "jsonl" {
					return fmt.Errorf("--export writes JSON lines: drop -o %s", output)
				}
				return exportAudit(cmd, e, &pb.ExportAuditRequest{Since: sinceTS, Kind: kind, Fqn: fqn, Refused: refused})
			}
			switch output {
			case "table", "json", "yaml", "jsonl":
			default:
				return fmt.Errorf("-o %q: use table, yaml, json or jsonl", output)
			}
			recs, more, err := listAudit(cmd, e, &pb.ListAuditRequest{Since: sinceTS, Kind: kind, Fqn: fqn, Refused: refused}, limit)
			if err != nil {
				return err
			}
			slices.Reverse(recs) // oldest first, as a log reads
			if more {
				defer fmt.Fprintf(e.errOut, "older records exist beyond these %d: raise --limit (0 for all), or use --export\n", len(recs))
			}
			switch output {
			case "json":
				return writeJSON(e.out, &pb.ListAuditResponse{Records: recs})
			case "yaml":
				b, err := toYAML(&pb.ListAuditResponse{Records: recs})
				if err != nil {
					return err
				}
				_, err = e.out.Write(b)
				return err
			case "jsonl":
				return writeJSONLines(e.out, recs)
			}
			if len(recs) == 0 {
				fmt.Fprintln(e.errOut, "no audit records")
			}
			printAudit(e.out, recs, "")
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only records newer than this, e.g. 30m, 2h, 7d")
	cmd.Flags().StringVar(&kind, "kind", "", "only this kind (also SigningKey or BootstrapCredential: the operations on them)")
	cmd.Flags().StringVar(&fqn, "fqn", "", "only this resource and its descendants")
	cmd.Flags().IntVar(&limit, "limit", defaultAuditLimit, "at most this many of the newest records; 0 for all")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, yaml, json or jsonl (one JSON record a line)")
	cmd.Flags().BoolVar(&refused, "refused", false, "also list requests the server refused (bad input, no credential, no permission)")
	cmd.Flags().BoolVar(&export, "export", false, "stream every record you may read, oldest first, as JSON lines (for archiving)")
	return cmd
}

// listAudit follows ListAudit's pages, newest first, until limit records
// (0: no limit) or the last page; more says whether older records remain.
// Each page asks for no more than is still wanted.
func listAudit(cmd *cobra.Command, e *env, req *pb.ListAuditRequest, limit int) (recs []*pb.AuditRecord, more bool, err error) {
	for {
		req.Limit = 0
		if limit > 0 {
			req.Limit = int32(min(limit-len(recs), maxAuditPage))
		}
		res, err := e.audit().ListAudit(cmd.Context(), connect.NewRequest(req))
		if err != nil {
			return nil, false, err
		}
		recs = append(recs, res.Msg.GetRecords()...)
		req.PageToken = res.Msg.GetNextPageToken()
		if req.PageToken == "" {
			return recs, false, nil
		}
		if limit > 0 && len(recs) >= limit {
			// A token says where to go on, not that anything is there.
			req.Limit = 1
			res, err := e.audit().ListAudit(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return nil, false, err
			}
			return recs, len(res.Msg.GetRecords()) > 0, nil
		}
	}
}

// maxAuditPage is the server's largest page.
const maxAuditPage = 1000

// exportAudit writes an ExportAudit stream as JSON lines, oldest first.
func exportAudit(cmd *cobra.Command, e *env, req *pb.ExportAuditRequest) error {
	stream, err := e.audit().ExportAudit(cmd.Context(), connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer stream.Close()
	w := bufio.NewWriter(e.out)
	for stream.Receive() {
		if err := writeJSONLines(w, stream.Msg().GetRecords()); err != nil {
			return err
		}
	}
	if err := stream.Err(); err != nil {
		w.Flush()
		return fmt.Errorf("the export broke off (what was written is whole, one record a line): %w", err)
	}
	return w.Flush()
}

// writeJSONLines writes each record as one line of JSON.
func writeJSONLines(w io.Writer, recs []*pb.AuditRecord) error {
	for _, r := range recs {
		b, err := protojson.Marshal(r)
		if err != nil {
			return err
		}
		// protojson may space its output at random; a line is a line all
		// the same, and compacting it makes it stable.
		var buf bytes.Buffer
		if err := json.Compact(&buf, b); err != nil {
			return err
		}
		buf.WriteByte('\n')
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
	}
	return nil
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
