package statusstore

import (
	"encoding/json"
	"fmt"
	"time"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/store"
)

// status renders what is known of the cluster. Callers hold s.mu.
func (s *Store) status(cl *cluster) clusterstatus.Status {
	out := clusterstatus.Status{
		AppliedRevision:      clusterstatus.AppliedRevision(cl.ack, cl.version, s.rev),
		Connected:            cl.connected(),
		AgentVersion:         cl.agentVersion,
		DesiredBundleVersion: cl.version,
		KubernetesVersion:    cl.inv.KubernetesVersion,
		Istio:                cl.inv.Istio,
		Namespaces:           cl.inv.NamespaceNames(),
	}
	if !cl.lastSeen.IsZero() {
		out.LastSeen = cl.lastSeen.UTC().Format(time.RFC3339)
	}
	if p := cl.inv.Policies; len(p.GetDestinationRules())+len(p.GetNamespaceWide()) > 0 {
		out.ClusterPolicies = &clusterstatus.Policies{DestinationRules: p.GetDestinationRules(), NamespaceWide: p.GetNamespaceWide()}
	}
	if cl.ack != nil {
		out.BundleVersion = cl.ack.GetBundleVersion()
		out.BundleRevision = cl.ack.GetRevision()
		if cl.resourcesJSON == nil && len(cl.ack.GetResources()) > 0 {
			list := make([]clusterstatus.Resource, 0, len(cl.ack.GetResources()))
			for _, r := range cl.ack.GetResources() {
				list = append(list, clusterstatus.Resource{FQN: r.GetFqn(), State: r.GetState(), Message: r.GetMessage(), Objects: r.GetObjects()})
			}
			cl.resourcesJSON, _ = json.Marshal(list) // plain strings
		}
		out.Resources = cl.resourcesJSON
	}
	for _, d := range cl.drifts {
		out.Drift = append(out.Drift, clusterstatus.Drift{FQN: d.GetFqn(), Object: fmt.Sprintf("%s %s/%s", d.GetKind(), d.GetNamespace(), d.GetName()), Change: d.GetChange(), Restored: d.GetRestored(), Message: d.GetMessage()})
	}
	return out
}

// leaseInterval is how often a served cluster's status is rewritten even
// unchanged, so readers can tell a live writer from a dead one; staleAfter
// is how old a stored "connected" status may be before its writer counts
// as gone.
const (
	leaseInterval = 10 * time.Second
	staleAfter    = 3 * leaseInterval
)

// restore mirrors the cluster's stored status: what a previous run of this
// server, or another replica, wrote. Status thus survives a restart of the
// central control plane before the agent reconnects, and a replica answers
// for clusters it does not serve. Callers hold s.mu.
func (s *Store) restore(cl *cluster, rec store.Record) {
	var st clusterstatus.Status
	if len(rec.Status) == 0 || json.Unmarshal(rec.Status, &st) != nil {
		return
	}
	cl.mirror, cl.epoch, cl.statusTime, cl.mirrorSays = true, rec.StatusEpoch, rec.StatusTime, st.Connected
	cl.mirrorConnected = st.Connected && s.now().Sub(rec.StatusTime) < staleAfter
	cl.agentVersion = st.AgentVersion
	if t, err := time.Parse(time.RFC3339, st.LastSeen); err == nil {
		cl.lastSeen = t
	}
	cl.setAck(nil)
	if st.BundleVersion != "" {
		var resources []clusterstatus.Resource
		_ = json.Unmarshal(st.Resources, &resources) // a stored status this server wrote
		a := &agentv1.Ack{BundleVersion: st.BundleVersion, Revision: st.BundleRevision}
		for _, r := range resources {
			a.Resources = append(a.Resources, &agentv1.ResourceStatus{Fqn: r.FQN, State: r.State, Message: r.Message, Objects: r.Objects})
		}
		cl.setAck(a)
	}
	cl.inv.KubernetesVersion, cl.inv.Istio, cl.inv.Policies = st.KubernetesVersion, st.Istio, nil
	if p := st.ClusterPolicies; p != nil {
		cl.inv.Policies = &agentv1.ClusterPolicies{DestinationRules: p.DestinationRules, NamespaceWide: p.NamespaceWide}
	}
	cl.inv.Namespaces = map[string]map[string]string{}
	for _, ns := range st.Namespaces {
		cl.inv.Namespaces[ns] = nil
	}
	// A status that says connected but that no writer renews any more is
	// marked disconnected, with the stored epoch: if another replica
	// claims the cluster meanwhile, the write is fenced.
	cl.dirty = st.Connected && !cl.mirrorConnected
	s.services.SetLive(cl.fqn, cl.connected(), cl.lastSeen)
}
