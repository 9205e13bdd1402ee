// Package clusterstatus is a Cluster's status document: what its agent
// reported (inventory) and acknowledged, as the central control plane
// stores it in the Cluster's status and as `flotilla get cluster -o yaml`
// shows it. It is plain data, encoded once per write.
package clusterstatus

import (
	"encoding/json"
	"sort"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/compile"
)

// Inventory is a cluster's reported facts. Its services and endpoints are
// runtime state, kept in the registry (package registry), not here: the
// Cluster's status would otherwise churn with every endpoint.
type Inventory struct {
	KubernetesVersion string
	Istio             *Istio
	Namespaces        map[string]map[string]string
	// Policies are the cluster's own objects that Flotilla's output leaves
	// alone, as its agent last reported them (stored in the status, so
	// that every replica knows them).
	Policies *agentv1.ClusterPolicies `json:"-"`
}

// Cluster is what the compiler needs to know of the cluster, as the agent
// reported it.
func (inv *Inventory) Cluster() compile.Cluster {
	return compile.Cluster{Namespaces: inv.NamespaceNames(), DestinationRules: inv.Policies.GetDestinationRules(), NamespaceWide: inv.Policies.GetNamespaceWide()}
}

// Istio is what the agent reports of the cluster's Istio.
type Istio struct {
	Installed bool            `json:"installed"`
	Version   string          `json:"version,omitempty"`
	Revisions []IstioRevision `json:"revisions,omitempty"`
}

// IstioRevision is one istiod revision as the cluster runs it.
type IstioRevision struct {
	Name          string   `json:"name"`
	Version       string   `json:"version,omitempty"`
	Replicas      int32    `json:"replicas"`
	ReadyReplicas int32    `json:"readyReplicas"`
	Tags          []string `json:"tags,omitempty"`
	Webhooks      []string `json:"webhooks,omitempty"`
	// Proxies are the pods it injected: what a restart would move.
	Proxies int32 `json:"proxies"`
}

// IstioOf is the status document's form of an agent's Istio report.
func IstioOf(m *agentv1.Istio) *Istio {
	out := &Istio{Installed: m.GetInstalled(), Version: m.GetVersion()}
	for _, r := range m.GetRevisions() {
		out.Revisions = append(out.Revisions, IstioRevision{Name: r.GetName(), Version: r.GetVersion(), Replicas: r.GetReplicas(),
			ReadyReplicas: r.GetReadyReplicas(), Tags: r.GetTags(), Webhooks: r.GetWebhooks(), Proxies: r.GetProxies()})
	}
	return out
}

// Merge applies a full or delta inventory report.
func (inv *Inventory) Merge(m *agentv1.Inventory) {
	if m.GetFull() || inv.Namespaces == nil {
		inv.Namespaces = map[string]map[string]string{}
	}
	if v := m.GetKubernetesVersion(); v != "" {
		inv.KubernetesVersion = v
	}
	if m.GetIstio() != nil {
		inv.Istio = IstioOf(m.GetIstio())
	}
	for _, ns := range m.GetNamespaces() {
		inv.Namespaces[ns.GetName()] = ns.GetLabels()
	}
	for _, ns := range m.GetRemovedNamespaces() {
		delete(inv.Namespaces, ns)
	}
	if p := m.GetClusterPolicies(); p != nil {
		inv.Policies = p
	}
}

// NamespaceNames lists the reported namespaces, sorted.
func (inv *Inventory) NamespaceNames() []string {
	out := make([]string, 0, len(inv.Namespaces))
	for ns := range inv.Namespaces {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// Status is the Cluster resource's status as stored and shown by
// `flotilla get cluster -o yaml`.
type Status struct {
	Connected            bool   `json:"connected"`
	LastSeen             string `json:"lastSeen,omitempty"`
	AgentVersion         string `json:"agentVersion,omitempty"`
	BundleVersion        string `json:"bundleVersion,omitempty"`
	DesiredBundleVersion string `json:"desiredBundleVersion,omitempty"`
	// BundleRevision is the store revision of the bundle the agent
	// acknowledged; AppliedRevision is the newest store revision the
	// cluster is known to have applied (at least BundleRevision).
	BundleRevision    int64    `json:"bundleRevision,omitempty"`
	AppliedRevision   int64    `json:"appliedRevision,omitempty"`
	KubernetesVersion string   `json:"kubernetesVersion,omitempty"`
	Istio             *Istio   `json:"istio,omitempty"`
	Namespaces        []string `json:"namespaces,omitempty"`
	// Resources is the JSON of a []Resource: the cluster keeps it
	// encoded (package statusstore keeps it so), as it changes far less often than
	// the rest of the status (a partial acknowledgement rarely changes a
	// resource's state), and it is most of the status's size.
	Resources json.RawMessage `json:"resources,omitempty"`
	Drift     []Drift         `json:"drift,omitempty"`
	// ClusterPolicies are the cluster's own objects that Flotilla's output
	// leaves alone, so that every replica compiles, plans and shows the
	// cluster as the one its agent talks to does.
	ClusterPolicies *Policies `json:"clusterPolicies,omitempty"`
}

// AppliedRevision is the store revision a cluster has applied, given its
// agent's last acknowledgement and its desired bundle version, computed at
// store revision rev: every intent change up to it is in the bundle the
// agent acknowledged. Equal versions mean equal content, so an agent that
// acknowledged the desired version has applied rev; otherwise it has
// applied the revision its acknowledged bundle carried.
func AppliedRevision(acked *agentv1.Ack, desired string, rev int64) int64 {
	switch {
	case acked == nil:
		return 0
	case acked.GetBundleVersion() == desired:
		return rev
	}
	return acked.GetRevision()
}

// Policies is agentv1.ClusterPolicies as stored.
type Policies struct {
	// DestinationRules maps a host to its DestinationRule ("<ns>/<name>").
	DestinationRules map[string]string `json:"destinationRules,omitempty"`
	// NamespaceWide maps "<Kind>/<namespace>" to a namespace-wide
	// PeerAuthentication or Sidecar ("<ns>/<name>").
	NamespaceWide map[string]string `json:"namespaceWide,omitempty"`
}

// Resource is one resource's status in the cluster, as its agent acknowledged it.
type Resource struct {
	FQN     string   `json:"fqn"`
	State   string   `json:"state"`
	Message string   `json:"message,omitempty"`
	Objects []string `json:"objects,omitempty"`
}

// Drift is one change to the cluster's objects that the agent saw (and restored).
type Drift struct {
	FQN      string `json:"fqn,omitempty"`
	Object   string `json:"object"`
	Change   string `json:"change"`
	Restored bool   `json:"restored"`
	Message  string `json:"message,omitempty"`
}

// Encode is the status as stored. The resources' JSON is spliced in as
// kept: encoding/json would re-validate and compact it, which costs more
// than encoding the rest.
func (s Status) Encode() ([]byte, error) {
	res := s.Resources
	s.Resources = nil
	b, err := json.Marshal(s)
	if err != nil || len(res) == 0 {
		return b, err
	}
	out := make([]byte, 0, len(b)+len(res)+13)
	out = append(out, b[:len(b)-1]...) // without the closing brace
	if len(b) > 2 {
		out = append(out, ',')
	}
	out = append(out, `"resources":`...)
	out = append(out, res...)
	return append(out, '}'), nil
}
