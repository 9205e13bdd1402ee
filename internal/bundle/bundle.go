// Package bundle defines what the central control plane sends an agent: the
// slice of intent that applies to one cluster, versioned by a hash of its
// content. The agent stores it in its cluster and compiles it (package
// compile) into native Istio objects; the central control plane compiles the
// same bundle to validate and to preview.
//
//	store ──central selects by cluster──▶ Bundle{Groups, Objects} ──Version()──▶ agent
//
// A bundle is plain data: canonical JSON specs, everything sorted, so equal
// intent gives an equal version and a recompute that changes nothing sends
// nothing. The version is a hash tree (bundle → groups → objects), so the
// central control plane keeps per-object and per-group digests and rehashes
// only what a change touched.
package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"sort"
)

// Group is a group whose selector reaches the bundle's cluster.
type Group struct {
	FQN string `json:"fqn"`
	// Type is traffic, security or gateway; or organization, tenant or
	// workspace for the scope groups the central control plane adds, which
	// hold a scope's settings (a workspace's with its namespace patterns).
	Type       string   `json:"type"`
	ConfigMode string   `json:"configMode"` // BRIDGED or DIRECT
	Namespaces []string `json:"namespaces"` // the group's "<cluster>/<namespace>" patterns
	// TrustDomains are, in an organization's scope group, the trust domains
	// of its clusters, sorted: authorization policies name principals in
	// each of them.
	TrustDomains []string `json:"trustDomains,omitempty"`
	// Cluster is, in the cluster group (Type "cluster", the cluster's own
	// FQN, in every bundle), what the cluster's spec says of it: what
	// IstioInstallations select by and render with.
	Cluster *ClusterFacts `json:"cluster,omitempty"`
}

// ClusterFacts are the parts of a Cluster's spec its own bundle carries.
type ClusterFacts struct {
	Network string            `json:"network,omitempty"`
	Region  string            `json:"region,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Equal reports whether f and o say the same (both may be nil).
func (f *ClusterFacts) Equal(o *ClusterFacts) bool {
	if f == nil || o == nil {
		return f == o
	}
	return f.Network == o.Network && f.Region == o.Region && maps.Equal(f.Labels, o.Labels)
}

// Object is one intent resource inside a group.
type Object struct {
	// APIVersion and Kind are Flotilla's (flotilla.io/v1alpha1 IngressGateway)
	// or, in a DIRECT group, Istio's (networking.istio.io/v1 VirtualService).
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	FQN        string `json:"fqn"`
	Name       string `json:"name"`
	// Group is the FQN of the owning group; it is in Bundle.Groups.
	Group string `json:"group"`
	// Namespace is where a DIRECT object goes; empty for Flotilla kinds,
	// whose spec says where their output goes.
	Namespace string `json:"namespace,omitempty"`
	// Spec is canonical JSON.
	Spec json.RawMessage `json:"spec"`
}

// Bundle is the intent for one cluster.
type Bundle struct {
	Cluster string   `json:"cluster"`
	Groups  []Group  `json:"groups"`
	Objects []Object `json:"objects"`
	// Multicluster is what the cluster needs for traffic across clusters;
	// nil when no workspace setting exposes anything to it.
	Multicluster *Multicluster `json:"multicluster,omitempty"`
}

// Multicluster is the remote slice of the fleet service registry that one
// cluster needs, joined with the workspace settings that expose it: the
// east-west gateways to open here, and the instances elsewhere of the
// services exposed to it. It travels in the bundle, so a cluster cut off
// from the central control plane keeps its remote endpoints.
type Multicluster struct {
	EastWest []EastWest      `json:"eastWest,omitempty"`
	Services []RemoteService `json:"services,omitempty"`
	// Edges are the targets of the servers of the edge gateways that this
	// cluster runs.
	Edges []EdgeServer `json:"edges,omitempty"`
}

// EdgeServer is where one server of an EdgeGateway sends its hostname:
// the ingress gateways of the clusters that publish it.
type EdgeServer struct {
	// Owner is the FQN of the EdgeGateway; Server names its server.
	Owner  string `json:"owner"`
	Server string `json:"server"`
	// Weighted is set for an explicit cluster list: traffic is split by
	// the targets' weights, without failover.
	Weighted bool `json:"weighted,omitempty"`
	// Targets are the live targets, by cluster name. Drained clusters are
	// left out.
	Targets []EdgeTarget `json:"targets,omitempty"`
	// Problems say why a cluster the server should reach is not a target
	// (no ingress gateway address, the hostname not published there…).
	Problems []string `json:"problems,omitempty"`
}

// EdgeTarget is one cluster's ingress gateway serving the hostname.
type EdgeTarget struct {
	Cluster string `json:"cluster"`
	// Address and Port are where the edge reaches the ingress gateway.
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	// TLS is set when the ingress gateway terminates TLS for the hostname:
	// the edge originates TLS with the hostname as SNI.
	TLS    bool   `json:"tls,omitempty"`
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
	// Weight is the target's share in a weighted list.
	Weight uint32 `json:"weight,omitempty"`
	// Local marks the edge's next local hop: the ingress gateway in the
	// edge's own cluster, else those in its region. Health checks go only
	// there.
	Local bool `json:"local,omitempty"`
}

// EastWest is an east-west gateway to open in this cluster.
type EastWest struct {
	// Owner is the FQN of the WorkspaceSetting that asks for it.
	Owner     string            `json:"owner"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
	// Service is the east-west gateway Service this cluster reported
	// ("<ns>/<name>", labelled istio=eastwestgateway), empty when it has
	// none: other clusters then cannot reach this one's services.
	Service string `json:"service,omitempty"`
	// Address is where other clusters reach it; empty when unknown.
	Address string `json:"address,omitempty"`
	// Port is the Service's tls port, which the Gateway listens on; 0
	// when the cluster reported no Service (Istio's 15443 then).
	Port uint32 `json:"port,omitempty"`
	// Refused is the address the cluster reported outside its declared
	// ranges (spec.addressRanges), which is not used; Address is then empty.
	Refused string `json:"refused,omitempty"`
}

// RemoteService is an exposed service with instances in other clusters.
type RemoteService struct {
	// Owner is the FQN of the WorkspaceSetting that exposes it.
	Owner     string        `json:"owner"`
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	Ports     []ServicePort `json:"ports"`
	// Local is set when the service also runs in this cluster; Selector is
	// then its Service's selector here, which the WorkloadEntries for the
	// remote instances must carry.
	Local    bool              `json:"local,omitempty"`
	Selector map[string]string `json:"selector,omitempty"`
	// FailoverPriority is the setting's, for the DestinationRule.
	FailoverPriority []string `json:"failoverPriority,omitempty"`
	// Remotes are the instances in other clusters, by cluster.
	Remotes []RemoteInstance `json:"remotes"`
	// Conflicts say where the clusters disagree on the service's ports
	// (the registry's words); Ports are as the first cluster has them.
	Conflicts []string `json:"conflicts,omitempty"`
}

// ServicePort is a port of a service.
type ServicePort struct {
	Name     string `json:"name"`
	Number   uint32 `json:"number"`
	Protocol string `json:"protocol"`
}

// RemoteInstance is a service's presence in another cluster, reached
// through that cluster's east-west gateway.
type RemoteInstance struct {
	Cluster string `json:"cluster"`
	// Address and Port are the remote east-west gateway's.
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	// Refused is the address that cluster reported outside its declared
	// ranges (spec.addressRanges), which is not used; Address is then empty.
	Refused string `json:"refused,omitempty"`
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	// Ready counts the ready endpoints there; zero means none (scaled to
	// zero), and the instance gets no traffic.
	Ready uint32 `json:"ready"`
	// Stale is set while that cluster's agent is disconnected: its last
	// report stands.
	Stale bool `json:"stale,omitempty"`
}

// Normalize sorts groups and objects by FQN, so equal content is equal bytes.
func (b *Bundle) Normalize() {
	sort.Slice(b.Groups, func(i, j int) bool { return b.Groups[i].FQN < b.Groups[j].FQN })
	sort.Slice(b.Objects, func(i, j int) bool { return b.Objects[i].FQN < b.Objects[j].FQN })
	for i := range b.Groups {
		if b.Groups[i].Namespaces == nil {
			b.Groups[i].Namespaces = []string{}
		}
	}
	if b.Groups == nil {
		b.Groups = []Group{}
	}
	if b.Objects == nil {
		b.Objects = []Object{}
	}
}

// Hash is a SHA-256 digest.
type Hash [sha256.Size]byte

// ObjectHash is the digest of one object's canonical JSON.
func ObjectHash(o Object) Hash {
	data, err := json.Marshal(&o)
	if err != nil {
		panic("bundle: marshal: " + err.Error()) // plain data always marshals
	}
	return sha256.Sum256(data)
}

// GroupHash is the digest of a group and of its objects' digests, which
// must be in FQN order.
func GroupHash(g Group, objects []Hash) Hash {
	if g.Namespaces == nil {
		g.Namespaces = []string{}
	}
	meta, err := json.Marshal(&g)
	if err != nil {
		panic("bundle: marshal: " + err.Error())
	}
	h := sha256.New()
	h.Write(meta)
	for _, o := range objects {
		h.Write(o[:])
	}
	var out Hash
	h.Sum(out[:0])
	return out
}

// VersionOf is the version of a bundle for cluster whose groups, in FQN
// order, have these digests. Versions form a two-level hash tree (bundle →
// groups → objects), so a server holding many clusters' bundles recomputes a
// version from cached digests: the cost grows with the change, not with the
// bundle.
func VersionOf(cluster string, groups []Hash) string {
	h := sha256.New()
	h.Write([]byte(cluster))
	h.Write([]byte{0})
	for _, g := range groups {
		h.Write(g[:])
	}
	sum := h.Sum(nil)
	return hex.EncodeToString(sum[:16])
}

// Version is the bundle's version: VersionOf its groups, each hashed with
// the objects that belong to it. Objects naming a group the bundle lacks
// (which the central control plane never sends) are hashed last, under an
// empty group, so that they still count.
func (b *Bundle) Version() string {
	groups := append([]Group(nil), b.Groups...)
	sort.Slice(groups, func(i, j int) bool { return groups[i].FQN < groups[j].FQN })
	objects := append([]Object(nil), b.Objects...)
	sort.Slice(objects, func(i, j int) bool { return objects[i].FQN < objects[j].FQN })
	byGroup := map[string][]Hash{}
	for _, o := range objects {
		byGroup[o.Group] = append(byGroup[o.Group], ObjectHash(o))
	}
	hashes := make([]Hash, 0, len(groups)+1)
	for _, g := range groups {
		hashes = append(hashes, GroupHash(g, byGroup[g.FQN]))
		delete(byGroup, g.FQN)
	}
	var orphans []Hash
	for _, o := range objects {
		if _, ok := byGroup[o.Group]; ok {
			orphans = append(orphans, ObjectHash(o))
		}
	}
	if len(orphans) > 0 {
		hashes = append(hashes, GroupHash(Group{}, orphans))
	}
	return WithMulticluster(VersionOf(b.Cluster, hashes), b.Multicluster)
}

// WithMulticluster is the version of a bundle whose intent has version
// intent and whose multicluster slice is mc: intent alone when mc is nil,
// so bundles without one keep their versions.
func WithMulticluster(intent string, mc *Multicluster) string {
	if mc == nil {
		return intent
	}
	return WithMulticlusterDigest(intent, mc.Digest())
}

// Group returns the group with the given FQN.
func (b *Bundle) Group(fqn string) (Group, bool) {
	i := sort.Search(len(b.Groups), func(i int) bool { return b.Groups[i].FQN >= fqn })
	if i < len(b.Groups) && b.Groups[i].FQN == fqn {
		return b.Groups[i], true
	}
	for _, g := range b.Groups { // not normalized
		if g.FQN == fqn {
			return g, true
		}
	}
	return Group{}, false
}
