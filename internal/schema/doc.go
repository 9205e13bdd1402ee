// Package schema validates decoded JSON or YAML against a protobuf message
// descriptor and converts it into that message, reporting every problem with
// the path of the field it concerns.
//
//	user document (JSON/YAML)
//	        │ encoding/json, sigs.k8s.io/yaml
//	        ▼
//	any: map[string]any, []any, string, float64, bool, nil, ...
//	        │
//	        ├── Check(prefix, v, descriptor) ──► Errors, sorted by path
//	        │     "spec.http[0].route[0].destination.hostt: unknown field ..."
//	        │
//	        └── Decode(prefix, v, msg) = Check, then protojson ──► msg
//
// The rules are those of protojson, the canonical proto3 JSON mapping:
// fields are named by their JSON (lowerCamel) or original proto name, 64-bit
// and 32-bit integers may be written as decimal strings, enums as names or
// numbers, null leaves a field unset, and the well-known types (Duration,
// Timestamp, Struct, Value, ListValue, wrappers, FieldMask, Empty) take their
// special JSON forms. Check is never more lenient than protojson, so a value
// that passes Check always decodes. It is stricter in a few places, each
// reported with a clear message: google.protobuf.Any and extension fields are
// not supported, strings must be valid UTF-8, and messages may nest at most 64
// levels deep.
//
// Who calls it:
//   - the management plane, to validate the spec of Flotilla's own resource
//     kinds, which are defined as proto messages;
//   - the applier, to validate raw Istio objects (istio.io/api messages such as
//     networking/v1alpha3 VirtualService or security/v1beta1
//     AuthorizationPolicy) before they are sent to a cluster.
//
// The package is pure: no I/O, no goroutines, no logging and no mutable
// globals. The same input always yields the same errors in the same order.
package schema
