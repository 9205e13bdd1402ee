// Package compile is Flotilla's compiler: a pure function from the intent
// for one cluster (a bundle.Bundle) and the namespaces that exist there to
// the native Istio objects to apply, plus diagnostics for intent that cannot
// be compiled.
//
//	Bundle{Cluster, Groups, Objects}   namespaces of the cluster
//	        │                                   │
//	        ▼                                   │
//	  one pass per intent kind                  │
//	    IngressGateway ─▶ Gateway + VirtualService per server
//	    DIRECT object  ─▶ the Istio object as written
//	    settings       ─▶ merged per namespace (Merge) ─▶ PeerAuthentication,
//	                      AuthorizationPolicy, RequestAuthentication, Sidecar,
//	                      DestinationRule per namespace
//	    ServiceRoute   ─▶ DestinationRule + VirtualService
//	        │                                   │
//	        ▼                                   ▼
//	  targeting: emit into namespace N only if the group's selector matches
//	  (cluster, N) and N exists
//	        │
//	        ▼
//	Result{Objects sorted by (apiVersion, kind, namespace, name),
//	       Diagnostics sorted by (FQN, field, message)}
//
// Intent is validated whether or not it lands in this cluster, so every
// cluster's compilation reports the same problems for the same object.
// Invalid intent becomes per-object diagnostics with a field path; what is
// valid is still emitted. Every emitted object is labelled LabelManagedBy=
// ManagedBy and annotated with AnnotationOwner=<the intent's FQN>, which is
// how the applier prunes only what Flotilla owns.
//
// The agent runs the compiler so that a disconnected cluster still configures
// a new namespace; the central control plane runs the same code to validate
// and to preview. It therefore does no I/O and reads no clock, no randomness,
// no goroutines and no logger; equal input gives byte-for-byte equal output,
// whatever the order of the bundle's groups and objects; and it never panics.
//
// Files: compile.go (driver, targeting, output), one file per intent pass
// (ingressgateway.go, direct.go, effective.go for settings with security.go
// and traffic.go, serviceroute.go, multicluster.go), one per emitted Istio
// kind of the gateway pass (gateway.go, virtualservice.go), the settings
// model (settings.go: levels and the merge) and the checks shared with
// apply time (validate.go), and cache.go.
package compile
