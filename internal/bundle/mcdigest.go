package bundle

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// The multicluster slice's digest is built so that a central control plane
// can keep it current in constant time per changed remote instance, for
// every cluster that imports the service, without encoding the slice again:
//
//	digest = sha256("mc2", sha256(eastWest), sha256(edges), Σ services)
//	service = sha256(key, header) + Σ sha256(key, remote)   (sums mod 2^256)
//
// where a service's key is its owner, namespace and name, and its header is
// the service without its remotes. Sums do not depend on order, and a
// changed remote instance moves its service's sum by the difference of its
// two hashes alone.

// Sum is a sum of hashes modulo 2^256: a set's digest that changes by
// adding and subtracting its elements' hashes.
type Sum [4]uint64

// Add returns s + h.
func (s Sum) Add(h Hash) Sum {
	var carry uint64
	for i := 3; i >= 0; i-- {
		v := binary.BigEndian.Uint64(h[i*8:])
		a := s[i] + v
		c1 := boolBit(a < s[i])
		b := a + carry
		c2 := boolBit(b < a)
		s[i], carry = b, c1|c2
	}
	return s
}

// Sub returns s - h.
func (s Sum) Sub(h Hash) Sum { return s.Plus(negate(h)) }

// Plus returns s + t.
func (s Sum) Plus(t Sum) Sum { return s.Add(t.hash()) }

// Minus returns s - t.
func (s Sum) Minus(t Sum) Sum { return s.Sub(t.hash()) }

func (s Sum) hash() Hash {
	var h Hash
	for i, v := range s {
		binary.BigEndian.PutUint64(h[i*8:], v)
	}
	return h
}

// negate returns -h modulo 2^256, as a Sum.
func negate(h Hash) Sum {
	var s Sum
	for i := range s {
		s[i] = ^binary.BigEndian.Uint64(h[i*8:])
	}
	return s.Add(Hash{31: 1})
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// ServiceKey identifies a remote service in a slice.
type ServiceKey struct{ Owner, Namespace, Name string }

// Key is the service's key.
func (s *RemoteService) Key() ServiceKey {
	return ServiceKey{Owner: s.Owner, Namespace: s.Namespace, Name: s.Name}
}

func (k ServiceKey) compare(o ServiceKey) int {
	return cmp.Or(cmp.Compare(k.Owner, o.Owner), cmp.Compare(k.Namespace, o.Namespace), cmp.Compare(k.Name, o.Name))
}

// keyed hashes a value of the service with key.
func (k ServiceKey) keyed(tag string, v any) Hash {
	data, err := json.Marshal(v)
	if err != nil {
		panic("bundle: marshal: " + err.Error())
	}
	h := sha256.New()
	for _, s := range []string{tag, k.Owner, k.Namespace, k.Name} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(data)
	var out Hash
	h.Sum(out[:0])
	return out
}

// HeaderHash is the hash of the service without its remotes.
func (s *RemoteService) HeaderHash() Hash {
	head := *s
	head.Remotes = nil
	return s.Key().keyed("header", head)
}

// RemoteHash is the hash of one remote instance of the service with key.
func RemoteHash(key ServiceKey, r RemoteInstance) Hash { return key.keyed("remote", r) }

// ServiceSum is the service's part of a slice's sum.
func (s *RemoteService) ServiceSum() Sum {
	var sum Sum
	sum = sum.Add(s.HeaderHash())
	for _, r := range s.Remotes {
		sum = sum.Add(RemoteHash(s.Key(), r))
	}
	return sum
}

// EastWestHash and EdgesHash hash a slice's lists; an empty list hashes
// as none, as it travels (the fields are omitted when empty).
func EastWestHash(l []EastWest) Hash {
	if len(l) == 0 {
		l = nil
	}
	return plainHash(l)
}

// EdgesHash: see EastWestHash.
func EdgesHash(l []EdgeServer) Hash {
	if len(l) == 0 {
		l = nil
	}
	return plainHash(l)
}

func plainHash(v any) Hash {
	data, err := json.Marshal(v)
	if err != nil {
		panic("bundle: marshal: " + err.Error())
	}
	return sha256.Sum256(data)
}

// MulticlusterDigest is the digest of a slice from its parts.
func MulticlusterDigest(eastWest, edges Hash, services Sum) Hash {
	h := sha256.New()
	h.Write([]byte("mc2\x00"))
	h.Write(eastWest[:])
	h.Write(edges[:])
	sh := services.hash()
	h.Write(sh[:])
	var out Hash
	h.Sum(out[:0])
	return out
}

// Digest is the slice's digest (see MulticlusterDigest).
func (m *Multicluster) Digest() Hash {
	var sum Sum
	for i := range m.Services {
		sum = sum.Plus(m.Services[i].ServiceSum())
	}
	return MulticlusterDigest(EastWestHash(m.EastWest), EdgesHash(m.Edges), sum)
}

// WithMulticlusterDigest is the version of a bundle whose intent has
// version intent and whose multicluster slice has digest d.
func WithMulticlusterDigest(intent string, d Hash) string {
	h := sha256.New()
	h.Write([]byte(intent))
	h.Write([]byte{0})
	h.Write(d[:])
	sum := h.Sum(nil)
	return hex.EncodeToString(sum[:16])
}

// MulticlusterPatch changes a slice part by part: what a central control
// plane sends an agent when the slice it holds moved, so that a changed
// remote instance costs that instance on the wire, not the slice.
type MulticlusterPatch struct {
	// SetEastWest and SetEdges say that EastWest and Edges replace the
	// slice's lists.
	SetEastWest bool         `json:"setEastWest,omitempty"`
	EastWest    []EastWest   `json:"eastWest,omitempty"`
	SetEdges    bool         `json:"setEdges,omitempty"`
	Edges       []EdgeServer `json:"edges,omitempty"`
	// Services change the slice's services one by one.
	Services []ServicePatch `json:"services,omitempty"`
}

// ServicePatch changes one remote service: Removed drops it; otherwise
// Header (its fields without remotes) replaces the service's own, Remotes
// are set by cluster and RemovedRemotes (cluster names) dropped. A service
// left with no remote is dropped.
type ServicePatch struct {
	Key            ServiceKey       `json:"key"`
	Removed        bool             `json:"removed,omitempty"`
	Header         *RemoteService   `json:"header,omitempty"`
	Remotes        []RemoteInstance `json:"remotes,omitempty"`
	RemovedRemotes []string         `json:"removedRemotes,omitempty"`
}

// Empty reports whether p changes nothing.
func (p *MulticlusterPatch) Empty() bool {
	return p == nil || !p.SetEastWest && !p.SetEdges && len(p.Services) == 0
}

// Patch returns the slice that p makes of m (nil m: an empty one). m is
// left as it is; unchanged services are shared.
func (m *Multicluster) Patch(p *MulticlusterPatch) *Multicluster {
	out := &Multicluster{}
	if m != nil {
		*out = *m
		out.Services = slices.Clone(m.Services)
	}
	if p.SetEastWest {
		out.EastWest = p.EastWest
	}
	if p.SetEdges {
		out.Edges = p.Edges
	}
	for _, sp := range p.Services {
		i, found := slices.BinarySearchFunc(out.Services, sp.Key, func(s RemoteService, k ServiceKey) int { return s.Key().compare(k) })
		if sp.Removed {
			if found {
				out.Services = slices.Delete(out.Services, i, i+1)
			}
			continue
		}
		var s RemoteService
		if found {
			s = out.Services[i]
		}
		if sp.Header != nil {
			s = *sp.Header
			if found {
				s.Remotes = out.Services[i].Remotes
			}
		}
		s.Owner, s.Namespace, s.Name = sp.Key.Owner, sp.Key.Namespace, sp.Key.Name
		s.Remotes = patchRemotes(s.Remotes, sp.Remotes, sp.RemovedRemotes)
		switch {
		case len(s.Remotes) == 0 && found:
			out.Services = slices.Delete(out.Services, i, i+1)
		case len(s.Remotes) == 0:
		case found:
			out.Services[i] = s
		default:
			out.Services = slices.Insert(out.Services, i, s)
		}
	}
	return out
}

func patchRemotes(have, set []RemoteInstance, removed []string) []RemoteInstance {
	out := slices.Clone(have)
	byCluster := func(r RemoteInstance, name string) int { return cmp.Compare(r.Cluster, name) }
	for _, name := range removed {
		if i, ok := slices.BinarySearchFunc(out, name, byCluster); ok {
			out = slices.Delete(out, i, i+1)
		}
	}
	for _, r := range set {
		if i, ok := slices.BinarySearchFunc(out, r.Cluster, byCluster); ok {
			out[i] = r
		} else {
			out = slices.Insert(out, i, r)
		}
	}
	return out
}

// SortServices puts the slice's services in key order and their remotes in
// cluster order, the order Patch keeps.
func (m *Multicluster) SortServices() {
	slices.SortFunc(m.Services, func(a, b RemoteService) int { return a.Key().compare(b.Key()) })
	for i := range m.Services {
		slices.SortFunc(m.Services[i].Remotes, func(a, b RemoteInstance) int { return cmp.Compare(a.Cluster, b.Cluster) })
	}
}
