package istio

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/validation"

	"flotilla.io/flotilla/internal/schema"
)

// domainSuffix is the cluster domain Istio's validation assumes.
const domainSuffix = "cluster.local"

// locateBudget bounds the work spent placing Istio's errors on fields (see
// locator), in validations times the spec's size in JSON values: hundreds of
// validations for a spec of ordinary size, a couple of dozen for a huge one.
// Past it an error is reported where the search stands.
const locateBudget = 1 << 16

// istioValidator returns Istio's own validation function for k: the one
// istiod's admission webhook runs for the kind (its schema's ValidateProto).
// The functions are called directly rather than through Istio's schema
// collections, which would link every Kubernetes and Gateway API type into
// the binary (see docs/benchmarks.md, "Istio's validation").
func istioValidator(k Kind) (validation.ValidateFunc, bool) {
	switch k.Kind {
	case "AuthorizationPolicy":
		return validation.ValidateAuthorizationPolicy, true
	case "DestinationRule":
		return validation.ValidateDestinationRule, true
	case "Gateway":
		return validation.ValidateGateway, true
	case "PeerAuthentication":
		return validation.ValidatePeerAuthentication, true
	case "RequestAuthentication":
		return validation.ValidateRequestAuthentication, true
	case "ServiceEntry":
		return validation.ValidateServiceEntry, true
	case "Sidecar":
		return validation.ValidateSidecar, true
	case "VirtualService":
		return validation.ValidateVirtualService, true
	case "WorkloadEntry":
		return validation.ValidateWorkloadEntry, true
	}
	return nil, false
}

// istioErrors runs Istio's validation on spec, a well-typed message of k,
// and returns the messages of its errors, one per problem. Istio's warnings
// are not errors and are dropped.
func istioErrors(v validation.ValidateFunc, k Kind, name, namespace string, spec proto.Message) []string {
	cfg := config.Config{
		Meta: config.Meta{
			GroupVersionKind: config.GroupVersionKind{Group: k.GVR.Group, Version: k.GVR.Version, Kind: k.Kind},
			Name:             name, Namespace: namespace, Domain: domainSuffix,
		},
		Spec: spec,
	}
	_, err := v(cfg)
	return leafMessages(err)
}

// leafMessages flattens an error tree (go-multierror's, or errors.Join's)
// into the messages of its leaves.
func leafMessages(err error) []string {
	if err == nil {
		return nil
	}
	var kids []error
	switch e := err.(type) {
	case interface{ WrappedErrors() []error }:
		kids = e.WrappedErrors()
	case interface{ Unwrap() []error }:
		kids = e.Unwrap()
	}
	if len(kids) == 0 {
		return []string{err.Error()}
	}
	var out []string
	for _, k := range kids {
		out = append(out, leafMessages(k)...)
	}
	return out
}

// locator places Istio's errors, which name no field, on the fields that
// cause them: the smallest part of the spec whose removal makes the message
// go away. Istio's validators are pure functions of the spec, so this is
// exact for errors about one field and falls back to the enclosing object or
// list for errors about a combination (for example, all weights zero).
type locator struct {
	v               validation.ValidateFunc
	k               Kind
	name, namespace string
	checks, max     int
}

// count returns how many of Istio's errors for v (a JSON value of the spec)
// have message msg; -1 when v no longer decodes.
func (l *locator) count(v any, msg string) int {
	l.checks++
	b, err := json.Marshal(v)
	if err != nil {
		return -1
	}
	m := l.k.New()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return -1
	}
	n := 0
	for _, got := range istioErrors(l.v, l.k, l.name, l.namespace, m) {
		if got == msg {
			n++
		}
	}
	return n
}

// step is one key or index in a path below spec.
type step struct {
	key   string
	index int // when key is ""
}

// find returns the paths, below root, of the n occurrences of msg inside the
// value at at; all is the number of occurrences in the whole of root.
func (l *locator) find(root any, at []step, msg string, n, all int) [][]step {
	var children []step
	switch v := valueAt(root, at).(type) {
	case map[string]any:
		for k := range v {
			children = append(children, step{key: k})
		}
		slices.SortFunc(children, func(a, b step) int { return strings.Compare(a.key, b.key) })
	case []any:
		for i := range v {
			children = append(children, step{index: i})
		}
	}
	type cause struct {
		at []step
		n  int
	}
	var causes []cause
	for _, c := range children {
		if l.checks >= l.max {
			return [][]step{at}
		}
		p := append(slices.Clone(at), c)
		left := l.count(without(root, p), msg)
		if left >= 0 && left < all {
			causes = append(causes, cause{p, all - left})
		}
	}
	total := 0
	for _, c := range causes {
		total += c.n
	}
	if len(causes) == 0 || total > n {
		// Nothing below explains it, or several parts do only together.
		return [][]step{at}
	}
	var out [][]step
	for _, c := range causes {
		out = append(out, l.find(root, c.at, msg, c.n, all)...)
	}
	return out
}

// size counts the JSON values in v.
func size(v any) int {
	n := 1
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			n += size(e)
		}
	case []any:
		for _, e := range x {
			n += size(e)
		}
	}
	return n
}

func valueAt(v any, at []step) any {
	for _, s := range at {
		switch x := v.(type) {
		case map[string]any:
			v = x[s.key]
		case []any:
			v = x[s.index]
		default:
			return nil
		}
	}
	return v
}

// without returns a copy of v with the value at at removed; the copy shares
// what it does not change.
func without(v any, at []step) any {
	if len(at) == 0 {
		return nil
	}
	s := at[0]
	switch x := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(x))
		for k, e := range x {
			c[k] = e
		}
		if len(at) == 1 {
			delete(c, s.key)
		} else {
			c[s.key] = without(x[s.key], at[1:])
		}
		return c
	case []any:
		if len(at) == 1 {
			return slices.Delete(slices.Clone(x), s.index, s.index+1)
		}
		c := slices.Clone(x)
		c[s.index] = without(x[s.index], at[1:])
		return c
	}
	return v
}

// pathString writes at in package schema's notation, starting at spec.
func pathString(at []step) string {
	path := "spec"
	for _, s := range at {
		if s.key == "" {
			path = schema.JoinIndex(path, s.index)
		} else {
			path = schema.JoinKey(path, s.key)
		}
	}
	return path
}

// validateWithIstio returns Istio's errors for spec, each at its field.
// specJSON is the spec as a JSON value, used to place the errors.
func validateWithIstio(k Kind, name, namespace string, msg proto.Message, specJSON any) []FieldError {
	v, ok := istioValidator(k)
	if !ok {
		return []FieldError{{Path: "spec", Message: "Istio has no validation for " + k.APIVersion + " " + k.Kind}}
	}
	msgs := istioErrors(v, k, name, namespace, msg)
	if len(msgs) == 0 {
		return nil
	}
	counts := map[string]int{}
	var order []string
	for _, m := range msgs {
		if counts[m] == 0 {
			order = append(order, m)
		}
		counts[m]++
	}
	if raw, err := normalJSON(specJSON); err == nil {
		specJSON = raw
	}
	l := &locator{v: v, k: k, name: name, namespace: namespace, max: max(20, locateBudget/size(specJSON))}
	var out []FieldError
	for _, m := range order {
		for _, at := range l.find(specJSON, nil, m, counts[m], counts[m]) {
			out = append(out, FieldError{Path: pathString(at), Message: m})
		}
	}
	slices.SortStableFunc(out, func(a, b FieldError) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// normalJSON round-trips v through encoding/json, so that its maps and lists
// are map[string]any and []any whatever decoder produced it.
func normalJSON(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, errors.New("spec does not round-trip through JSON")
	}
	return out, nil
}
