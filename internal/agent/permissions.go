package agent

import (
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla.io/flotilla/internal/compile"
)

// Permission is one RBAC rule the agent needs in its cluster, with the
// reason: the code that uses it. Permissions is the one list of them; the
// agent chart's ClusterRole and Roles are checked against it
// (deploy/charts), and docs/install.md tabulates it.
type Permission struct {
	// Namespace is where the rule applies: "" for the whole cluster (a
	// ClusterRole), else the namespace of a Role.
	Namespace string
	Rule      rbacv1.PolicyRule
	Why       string
}

// IstiodNamespace is where the agent looks for istiod to report Istio's
// version (inventory).
const IstiodNamespace = "istio-system"

// Permissions returns every permission the agent uses, and nothing more. A
// new read, watch or write in the agent's code needs a rule here (and
// then in the chart, which a test compares); the chart's end-to-end test
// runs the agent under exactly these rules.
func Permissions() []Permission {
	// The applier writes with server-side apply (patch, and create for an
	// apply that creates: the API server checks both), prunes (delete),
	// lists what it manages and watches it for drift.
	manage := []string{"get", "list", "watch", "create", "patch", "delete"}
	read := []string{"get", "list", "watch"}
	return []Permission{
		{Rule: rule("networking.istio.io", manage, "virtualservices", "destinationrules", "gateways", "serviceentries", "sidecars", "workloadentries"),
			Why: "apply, prune and repair the Istio objects compiled from intent (apply.IstioKinds); destination rules, sidecars and peer authentications of users are read to report conflicts with them"},
		{Rule: rule("security.istio.io", manage, "peerauthentications", "authorizationpolicies", "requestauthentications"),
			Why: "apply, prune and repair the Istio security objects compiled from intent (apply.IstioKinds)"},
		{Rule: rule("", read, "services", "nodes"),
			Why: "discovery: the services and their localities (nodes' region labels) reported to the management plane"},
		{Rule: rule("discovery.k8s.io", read, "endpointslices"),
			Why: "discovery: the ready endpoints of each service, per locality"},
		{Rule: rule("", read, "namespaces"),
			Why: "inventory: the namespaces and their labels, which workspaces select"},
		{Rule: rule("", []string{"list", "watch"}, "pods"),
			Why: "the labels of pods (metadata only), to warn of a route subset that selects no pod"},
		{Rule: named(rule("apiextensions.k8s.io", []string{"get", "patch"}, "customresourcedefinitions"), "bundles.flotilla.io"),
			Why: "keep the schema of the Bundle CRD (which the chart installs) current; no other CRD"},
		{Namespace: Namespace, Rule: rule("flotilla.io", []string{"get", "list", "watch", "create", "update", "patch", "delete"}, "bundles"),
			Why: "the last bundle, kept in the cluster so that the agent works on without the management plane"},
		{Namespace: Namespace, Rule: rule("", []string{"get", "create", "update"}, "secrets"),
			Why: "the agent's own credential (secret " + credentialSecret + "): its private key, made in the cluster"},
		{Namespace: IstiodNamespace, Rule: rule("apps", []string{"get", "list"}, "deployments"),
			Why: "inventory: whether istiod runs, and its version"},
	}
}

// LifecyclePermissions are what an agent that manages Istio's lifecycle
// (Config.IstioLifecycle, the chart's istioLifecycle.enabled) needs besides
// Permissions: to apply, prune and repair what Istio's charts render
// (package istioinstall), and to create the namespaces it goes into.
// Istio's control plane holds broad roles, and Kubernetes lets a subject
// create a role only with every permission in it or with escalate, so this
// is as strong as cluster-admin: it is off unless asked for.
func LifecyclePermissions() []Permission {
	manage := []string{"get", "list", "watch", "create", "patch", "delete"}
	return []Permission{
		{Rule: rule("apiextensions.k8s.io", manage, "customresourcedefinitions"),
			Why: "Istio's CRDs (the base chart)"},
		{Rule: rule("admissionregistration.k8s.io", manage, "mutatingwebhookconfigurations", "validatingwebhookconfigurations", "validatingadmissionpolicies", "validatingadmissionpolicybindings"),
			Why: "each revision's injection webhook, revision tags and validation"},
		{Rule: rule("rbac.authorization.k8s.io", append(slices.Clone(manage), "escalate", "bind"), "clusterroles", "clusterrolebindings", "roles", "rolebindings"),
			Why: "the roles of istiod, the gateways, istio-cni and ztunnel (escalate and bind: they hold permissions the agent does not)"},
		{Rule: rule("", manage, "services", "serviceaccounts", "configmaps", "resourcequotas"),
			Why: "istiod's and the gateways' Services, accounts and mesh configuration"},
		{Rule: rule("", []string{"create"}, "namespaces"),
			Why: "the namespaces Istio and its gateways go into, when missing (never deleted)"},
		{Rule: rule("apps", manage, "deployments", "daemonsets"),
			Why: "istiod, the gateways, istio-cni and ztunnel"},
		{Rule: rule("autoscaling", manage, "horizontalpodautoscalers"),
			Why: "istiod's and the gateways' autoscalers"},
		{Rule: rule("policy", manage, "poddisruptionbudgets"),
			Why: "istiod's and the gateways' disruption budgets"},
		{Rule: rule("networking.k8s.io", manage, "networkpolicies"),
			Why: "the network policies Istio's charts render when asked to"},
	}
}

// LifecycleKinds are the kinds Istio's charts render, for the applier's
// Options.GVKs: the last of a kind is pruned too when an installation goes.
func LifecycleKinds() []schema.GroupVersionKind {
	return []schema.GroupVersionKind{
		{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfiguration"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "ValidatingWebhookConfiguration"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "Role"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"},
		{Version: "v1", Kind: "Service"},
		{Version: "v1", Kind: "ServiceAccount"},
		{Version: "v1", Kind: "ConfigMap"},
		{Group: "apps", Version: "v1", Kind: "Deployment"},
		{Group: "apps", Version: "v1", Kind: "DaemonSet"},
		{Group: "autoscaling", Version: "v2", Kind: "HorizontalPodAutoscaler"},
		{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"},
	}
}

// OwnNamespaces are the namespaces the agent writes in besides the Istio
// objects compiled from intent: its own, and the one that holds the
// ServiceEntries of services that run only in other clusters. The chart
// creates them; the agent creates them only where it may.
func OwnNamespaces() []string { return []string{Namespace, compile.MulticlusterNamespace} }

func rule(group string, verbs []string, resources ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{group}, Resources: resources, Verbs: slices.Clone(verbs)}
}

func named(r rbacv1.PolicyRule, names ...string) rbacv1.PolicyRule {
	r.ResourceNames = names
	return r
}
