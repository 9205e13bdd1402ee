// Package apierror turns invalid input into the errors every API handler
// returns, so that the resource API and the central control plane's plan
// report violations the same way, and a store's failure into an answer
// that does not show it. It sits below both.
package apierror

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
)

// Violations is the client-facing error for violations, each also sent as
// a Violation detail: Aborted when one is a stale etag (re-read and retry),
// InvalidArgument otherwise.
func Violations(vs []resource.Violation, conflict bool) error {
	code := connect.CodeInvalidArgument
	if conflict {
		code = connect.CodeAborted
	}
	return withCode(code, vs)
}

// Denied is the error for writes the caller has no permission for:
// PermissionDenied, with each refusal as a Violation detail.
func Denied(vs []resource.Violation) error { return withCode(connect.CodePermissionDenied, vs) }

func withCode(code connect.Code, vs []resource.Violation) error {
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].Index < vs[j].Index })
	msgs := make([]string, 0, len(vs))
	detail := &pb.Violations{}
	for _, v := range vs {
		msgs = append(msgs, v.Error())
		detail.Violations = append(detail.Violations, &pb.Violation{Index: int32(v.Index), Kind: v.Kind, Name: v.Name, Field: v.Field, Message: v.Message})
	}
	err := connect.NewError(code, errors.New(strings.Join(msgs, "; ")))
	if d, derr := connect.NewErrorDetail(detail); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// Unavailable logs a store failure of op and answers without its text:
// callers learn only that the store did not answer (Unavailable: retry), or
// that their request ended first.
func Unavailable(log *slog.Logger, op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New(op+": the request ended first"))
	}
	log.Warn(op+" failed", "err", err)
	return connect.NewError(connect.CodeUnavailable, errors.New(op+": the store did not answer; retry"))
}
