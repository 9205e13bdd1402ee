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
// nothing.
package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
)

// Group is a group whose selector reaches the bundle's cluster.
type Group struct {
	FQN        string   `json:"fqn"`
	Type       string   `json:"type"`       // traffic, security or gateway
	ConfigMode string   `json:"configMode"` // BRIDGED or DIRECT
	Namespaces []string `json:"namespaces"` // the group's "<cluster>/<namespace>" patterns
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

// Version is the hex SHA-256 of the normalized bundle's JSON.
func (b *Bundle) Version() string {
	c := *b
	c.Groups = append([]Group(nil), b.Groups...)
	c.Objects = append([]Object(nil), b.Objects...)
	c.Normalize()
	data, err := json.Marshal(&c)
	if err != nil {
		panic("bundle: marshal: " + err.Error()) // plain data always marshals
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
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
