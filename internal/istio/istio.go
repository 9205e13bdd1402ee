// Package istio is the catalogue of the Istio kinds Flotilla writes and
// accepts in DIRECT groups, and the validation of their objects.
//
//	apiVersion + kind ──Lookup──▶ Kind{APIVersion, GVR, New}
//	                                   │
//	name, namespace, spec ──Validate───┴─▶ []FieldError
//	     = schema check against istio.io/api (types, unknown fields: what the CRD schema checks)
//	     + Istio's own validation (istio.io/istio/pkg/config/validation, as istiod's webhook runs it),
//	       each error placed on the field that causes it
//
// Every kind is served by Istio at v1; the older apiVersions (v1beta1,
// v1alpha3) name the same kind and Lookup maps them to it.
//
// Flotilla keeps no semantic rules of its own for Istio objects: what Istio
// accepts, Flotilla accepts. The package is pure: no I/O, no goroutines, no
// mutable globals.
package istio

import (
	"cmp"
	"encoding/json"
	"errors"
	"slices"

	"google.golang.org/protobuf/proto"
	networkingv1 "istio.io/api/networking/v1"
	securityv1 "istio.io/api/security/v1"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla.io/flotilla/internal/schema"
)

// Kind is one Istio kind in the catalogue.
type Kind struct {
	// Kind is the Kubernetes kind, e.g. "VirtualService".
	Kind string
	// APIVersion is the version Flotilla writes, e.g. "networking.istio.io/v1".
	APIVersion string
	// GVR is the resource the kind is served as.
	GVR k8sschema.GroupVersionResource
	// New returns an empty spec message from istio.io/api.
	New func() proto.Message
	// older are the other versions of the API group that serve the same kind.
	older []string
}

// FieldError is one problem in a spec; its Path starts with "spec".
type FieldError = schema.FieldError

const (
	networkingGroup = "networking.istio.io"
	securityGroup   = "security.istio.io"
)

var networkingOlder = []string{networkingGroup + "/v1beta1", networkingGroup + "/v1alpha3"}
var securityOlder = []string{securityGroup + "/v1beta1"}

func networking(kind, resource string, newSpec func() proto.Message) Kind {
	return Kind{
		Kind:       kind,
		APIVersion: networkingGroup + "/v1",
		GVR:        k8sschema.GroupVersionResource{Group: networkingGroup, Version: "v1", Resource: resource},
		New:        newSpec,
		older:      networkingOlder,
	}
}

func security(kind, resource string, newSpec func() proto.Message) Kind {
	return Kind{
		Kind:       kind,
		APIVersion: securityGroup + "/v1",
		GVR:        k8sschema.GroupVersionResource{Group: securityGroup, Version: "v1", Resource: resource},
		New:        newSpec,
		older:      securityOlder,
	}
}

// catalogue returns a fresh copy of every kind, sorted by (APIVersion, Kind).
func catalogue() []Kind {
	return []Kind{
		networking("DestinationRule", "destinationrules", func() proto.Message { return &networkingv1.DestinationRule{} }),
		networking("Gateway", "gateways", func() proto.Message { return &networkingv1.Gateway{} }),
		networking("ServiceEntry", "serviceentries", func() proto.Message { return &networkingv1.ServiceEntry{} }),
		networking("Sidecar", "sidecars", func() proto.Message { return &networkingv1.Sidecar{} }),
		networking("VirtualService", "virtualservices", func() proto.Message { return &networkingv1.VirtualService{} }),
		networking("WorkloadEntry", "workloadentries", func() proto.Message { return &networkingv1.WorkloadEntry{} }),
		security("AuthorizationPolicy", "authorizationpolicies", func() proto.Message { return &securityv1.AuthorizationPolicy{} }),
		security("PeerAuthentication", "peerauthentications", func() proto.Message { return &securityv1.PeerAuthentication{} }),
		security("RequestAuthentication", "requestauthentications", func() proto.Message { return &securityv1.RequestAuthentication{} }),
	}
}

// All returns every kind in the catalogue, sorted by (APIVersion, Kind). The
// slice is the caller's.
func All() []Kind {
	kinds := catalogue()
	slices.SortFunc(kinds, func(a, b Kind) int {
		return cmp.Or(cmp.Compare(a.APIVersion, b.APIVersion), cmp.Compare(a.Kind, b.Kind))
	})
	return kinds
}

// Lookup returns the kind served as apiVersion and kind. Older versions of the
// API group (networking.istio.io/v1beta1 and v1alpha3, security.istio.io/v1beta1)
// map to the same Kind, whose APIVersion is the one Flotilla writes.
func Lookup(apiVersion, kind string) (Kind, bool) {
	for _, k := range catalogue() {
		if k.Kind == kind && (k.APIVersion == apiVersion || slices.Contains(k.older, apiVersion)) {
			return k, true
		}
	}
	return Kind{}, false
}

// ValidateBuilt is Validate for a spec a program built (the compiler's
// output: maps, slices, strings, bools and numbers): it sets Istio's message
// from it directly, with no schema walk (which exists to place a user's
// mistakes on their fields) and no JSON round trip, then runs Istio's own
// validation. Only when something is wrong or unexpected does it run
// Validate, for the same errors in the same words.
func ValidateBuilt(k Kind, name, namespace string, spec any) []FieldError {
	if k.New == nil {
		return []FieldError{{Path: "spec", Message: "no Istio kind to validate against"}}
	}
	msg := k.New()
	if !schema.Build(msg.ProtoReflect(), spec) {
		return Validate(k, name, namespace, spec)
	}
	if v, ok := istioValidator(k); ok && len(istioErrors(v, k, name, namespace, msg)) == 0 {
		return nil
	}
	return Validate(k, name, namespace, spec)
}

// Validate checks the object of kind k named name in namespace, whose spec
// is a value decoded from JSON or YAML into any (map[string]any and friends,
// or a json.RawMessage), as the cluster would: first against k's istio.io/api
// message (the CRD schema's job: types and unknown fields), then with Istio's
// own validation, the code istiod's admission webhook runs.
//
// It returns nil when the object is valid. Otherwise it returns the schema
// errors, sorted by path and using the keys as written; or, when the spec is
// well-typed, Istio's errors in Istio's words, each at the field whose removal
// clears it (see locator), sorted by path.
func Validate(k Kind, name, namespace string, spec any) []FieldError {
	const prefix = "spec"
	if k.New == nil {
		return []FieldError{{Path: prefix, Message: "no Istio kind to validate against"}}
	}
	if raw, ok := spec.(json.RawMessage); ok {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return []FieldError{{Path: prefix, Message: "not valid JSON: " + err.Error()}}
		}
		spec = v
	}
	msg := k.New()
	if err := schema.Decode(prefix, spec, msg); err != nil {
		var errs schema.Errors
		if errors.As(err, &errs) {
			return errs
		}
		return []FieldError{{Path: prefix, Message: err.Error()}}
	}
	return validateWithIstio(k, name, namespace, msg, spec)
}
