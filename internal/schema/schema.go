package schema

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FieldError is one problem at one path.
//
// Path uses the keys as the user wrote them (a field's JSON name or its proto
// name), joined with dots, with [i] for list indexes and ["key"] for map keys
// that are not identifier-safe, e.g. `spec.http[0].match[1].uri.prefix` or
// `spec.selector.matchLabels["app.kubernetes.io/name"]`.
type FieldError struct {
	Path    string
	Message string
}

// Error returns "path: message", or just the message when the path is empty.
func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// Errors is every problem found in one value, sorted by path.
type Errors []FieldError

var _ error = Errors(nil)

// Error joins the errors with "; ".
func (e Errors) Error() string {
	parts := make([]string, len(e))
	for i, fe := range e {
		parts[i] = fe.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap exposes each FieldError to errors.Is and errors.As.
func (e Errors) Unwrap() []error {
	errs := make([]error, len(e))
	for i, fe := range e {
		errs[i] = fe
	}
	return errs
}

// Check validates v against md and returns every problem found, sorted by
// path, or nil when v is valid.
//
// v is a value as produced by encoding/json decoding into any:
// map[string]any, []any, string, float64, bool and nil. json.Number and Go
// integer types (as produced by YAML decoders) are accepted as numbers. prefix
// is the path of v itself, e.g. "spec"; it may be empty.
//
// A value that passes Check is accepted by protojson.Unmarshal after
// json.Marshal, which is what Decode does.
func Check(prefix string, v any, md protoreflect.MessageDescriptor) Errors {
	if md == nil {
		return Errors{{Path: prefix, Message: "no message type to check against"}}
	}
	var c checker
	c.message(prefix, v, md, 1)
	if len(c.errs) == 0 {
		return nil
	}
	slices.SortFunc(c.errs, func(a, b FieldError) int {
		if n := ComparePaths(a.Path, b.Path); n != 0 {
			return n
		}
		return cmp.Or(strings.Compare(a.Path, b.Path), strings.Compare(a.Message, b.Message))
	})
	return c.errs
}

// Decode checks v against the type of into and, when it is valid, replaces the
// contents of into with it. On failure it returns Errors; when v is invalid,
// into is left unchanged. To decode without a generated Go type, pass
// dynamicpb.NewMessage(descriptor).
func Decode(prefix string, v any, into proto.Message) error {
	if into == nil {
		return Errors{{Path: prefix, Message: "no message to decode into"}}
	}
	m := into.ProtoReflect()
	if !m.IsValid() {
		return Errors{{Path: prefix, Message: fmt.Sprintf("cannot decode into a nil %s", m.Descriptor().FullName())}}
	}
	if errs := Check(prefix, v, m.Descriptor()); len(errs) > 0 {
		return errs
	}
	if Build(m, v) {
		return nil
	}
	proto.Reset(into) // Build may have set part of it
	// Check accepts only what json.Marshal encodes faithfully and protojson
	// accepts, so these two failures are bugs in Check.
	b, err := json.Marshal(v)
	if err != nil {
		return Errors{{Path: prefix, Message: fmt.Sprintf("internal error: cannot encode a value that passed validation: %v", err)}}
	}
	if err := protojson.Unmarshal(b, into); err != nil {
		return Errors{{Path: prefix, Message: fmt.Sprintf("internal error: protojson rejected a value that passed validation: %v", err)}}
	}
	return nil
}
