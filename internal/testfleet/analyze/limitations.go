package analyze

import (
	"strings"

	"istio.io/api/networking/v1alpha3"

	"flotilla.io/flotilla/internal/compile"
)

// istioSource is where the analyzers' code is read, at the commit of the
// istio.io/istio module in go.mod (v0.0.0-20260827124520-eed52ebb66ad).
const istioSource = "https://github.com/istio/istio/blob/eed52ebb66ad/"

// Limitation is a message the analyzers give on an object Flotilla
// generates correctly: the analyzer is wrong there, and the finding is
// logged, not failed.
type Limitation struct {
	// Code is the analyzer message's code.
	Code string
	// Applies says whether a finding of Code is this limitation; it names
	// one exact object shape, never every message of the code.
	Applies func(Finding) bool
	// Reason says why the analyzer is wrong about that object.
	Reason string
	// Source links to the analyzer's line that gives the message.
	Source string
}

// limitations are every known analyzer limitation: the one place to add one.
var limitations = []Limitation{
	{
		Code:    "IST0174", // UnknownDestinationRuleHost
		Applies: isWorkspaceDefaultDestinationRule,
		Reason: "the workspace's default DestinationRule has the wildcard host *.<namespace>.svc.cluster.local; " +
			"the analyzer looks a DestinationRule's host up as a literal service name and matches wildcards only " +
			"on ServiceEntry hosts (util.GetDestinationHost), so a wildcard DestinationRule host matches no service",
		Source: istioSource + "pkg/config/analysis/analyzers/destinationrule/subset.go#L91",
	},
	{
		Code:    "IST0128", // NoServerCertificateVerificationDestinationLevel
		Applies: isEdgeTLSOrigination,
		Reason: "an edge gateway's DestinationRule originates TLS to the clusters' ingress gateways with the public " +
			"hostname as SNI and no caCertificates; istiod then validates the server certificate against the proxy's " +
			"system roots (CaCertificatePath defaults to \"system\", pilot/pkg/networking/core/cluster_tls.go#L214), " +
			"which the analyzer does not take into account",
		Source: istioSource + "pkg/config/analysis/analyzers/destinationrule/ca-certificates.go#L58",
	},
	{
		Code:    "IST0002", // Deprecated
		Applies: isEgressProxySidecar,
		Reason: "the analyzer calls a Sidecar's outboundTrafficPolicy.egressProxy ignored, but istiod at this commit " +
			"sends ALLOW_ANY traffic to unknown destinations to it (pilot/pkg/networking/core/httproute.go#L820, " +
			"listener_builder.go#L252); the traffic setting's egress writes it",
		Source: istioSource + "pkg/config/analysis/analyzers/deprecation/deprecation.go#L110",
	},
}

// limitationFor returns the limitation that covers f, or nil.
func limitationFor(f Finding) *Limitation {
	for i := range limitations {
		if l := &limitations[i]; l.Code == f.Code && l.Applies(f) {
			return l
		}
	}
	return nil
}

// isWorkspaceDefaultDestinationRule reports whether f is on the
// DestinationRule the settings pass writes per namespace
// (internal/compile/traffic.go): Flotilla's, named flotilla-default, whose
// host is the wildcard of its own namespace's services.
func isWorkspaceDefaultDestinationRule(f Finding) bool {
	if !f.Managed || f.Kind != "DestinationRule" || f.Name != compile.SettingsObjectName {
		return false
	}
	dr, ok := f.resource().Message.(*v1alpha3.DestinationRule)
	return ok && dr.GetHost() == "*."+f.Namespace+".svc.cluster.local"
}

// edgeHostSuffix ends the internal host of an edge gateway's targets
// (internal/compile/edge.go): <name>-<server>.<namespace>.edge.flotilla.internal.
const edgeHostSuffix = ".edge.flotilla.internal"

// isEdgeTLSOrigination reports whether f is on a DestinationRule an
// EdgeGateway writes for an internal edge host of its own namespace, whose
// only TLS is SIMPLE origination with an SNI and no CA of its own.
func isEdgeTLSOrigination(f Finding) bool {
	if !f.Managed || f.Kind != "DestinationRule" {
		return false
	}
	dr, ok := f.resource().Message.(*v1alpha3.DestinationRule)
	if !ok || !strings.HasSuffix(dr.GetHost(), "."+f.Namespace+edgeHostSuffix) || len(dr.GetTrafficPolicy().GetPortLevelSettings()) > 0 {
		return false
	}
	tls := dr.GetTrafficPolicy().GetTls()
	return tls.GetMode() == v1alpha3.ClientTLSSettings_SIMPLE && tls.GetSni() != "" &&
		tls.GetCaCertificates() == "" && !tls.GetInsecureSkipVerify().GetValue()
}

// isEgressProxySidecar reports whether f is the message on the egress proxy
// of the namespace-wide Sidecar the settings pass writes
// (internal/compile/traffic.go): Flotilla's, named flotilla-default, in
// ALLOW_ANY mode with an egress proxy.
func isEgressProxySidecar(f Finding) bool {
	if !f.Managed || f.Kind != "Sidecar" || f.Name != compile.SettingsObjectName ||
		f.Text != "Deprecated: OutboundTrafficPolicy.EgressProxy ignored" {
		return false
	}
	sc, ok := f.resource().Message.(*v1alpha3.Sidecar)
	return ok && sc.GetOutboundTrafficPolicy().GetMode() == v1alpha3.OutboundTrafficPolicy_ALLOW_ANY &&
		sc.GetOutboundTrafficPolicy().GetEgressProxy() != nil
}
