// Package selector parses and compares namespace selector patterns of the
// form "<cluster>/<namespace>", where either side is a name, "*", or a
// prefix ending in "*" ("prod-*/pay-*"). Workspaces own namespaces through
// these patterns; groups narrow them; the central control plane matches them
// against each cluster's namespaces.
package selector

import (
	"fmt"
	"strings"
)

// Term is one side of a pattern: an exact name, or a prefix when Wildcard is
// set ("*" is the empty prefix).
type Term struct {
	Prefix   string
	Wildcard bool
}

// Pattern selects namespaces across the fleet.
type Pattern struct {
	Cluster   Term
	Namespace Term
}

// String renders the pattern in its source form.
func (p Pattern) String() string { return p.Cluster.String() + "/" + p.Namespace.String() }

// String renders the term in its source form.
func (t Term) String() string {
	if t.Wildcard {
		return t.Prefix + "*"
	}
	return t.Prefix
}

// Parse parses "<cluster>/<namespace>". The error says what to write instead.
func Parse(s string) (Pattern, error) {
	cluster, ns, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(ns, "/") {
		return Pattern{}, fmt.Errorf("%q is not of the form <cluster>/<namespace>, e.g. \"c1/payments\" or \"*/payments\"", s)
	}
	c, err := parseTerm(cluster)
	if err != nil {
		return Pattern{}, fmt.Errorf("cluster side of %q: %w", s, err)
	}
	n, err := parseTerm(ns)
	if err != nil {
		return Pattern{}, fmt.Errorf("namespace side of %q: %w", s, err)
	}
	return Pattern{Cluster: c, Namespace: n}, nil
}

func parseTerm(s string) (Term, error) {
	if s == "" {
		return Term{}, fmt.Errorf("empty: use a name, \"*\" or a prefix ending in \"*\"")
	}
	t := Term{Prefix: s}
	if strings.HasSuffix(s, "*") {
		t = Term{Prefix: strings.TrimSuffix(s, "*"), Wildcard: true}
	}
	for _, r := range t.Prefix {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return Term{}, fmt.Errorf("%q: only lowercase letters, digits and '-' are allowed, with an optional trailing '*'", s)
		}
	}
	if len(t.Prefix) > 63 {
		return Term{}, fmt.Errorf("%q is longer than 63 characters", s)
	}
	if !t.Wildcard && (strings.HasPrefix(s, "-") || strings.HasSuffix(s, "-")) {
		return Term{}, fmt.Errorf("%q must start and end with a letter or digit", s)
	}
	return t, nil
}

// Match reports whether the term selects name.
func (t Term) Match(name string) bool {
	if t.Wildcard {
		return strings.HasPrefix(name, t.Prefix)
	}
	return name == t.Prefix
}

// Match reports whether the pattern selects namespace ns of cluster. No
// pattern selects a system namespace.
func (p Pattern) Match(cluster, ns string) bool {
	return p.Cluster.Match(cluster) && p.Namespace.Match(ns) && !System(ns)
}

// system are the namespaces that belong to no workspace: the mesh's root
// namespace, where a policy holds for every namespace of the cluster;
// Flotilla's own (the agent's, and the one holding other clusters'
// services); and Kubernetes' own.
var system = []Term{
	{Prefix: "istio-system"},
	{Prefix: "flotilla-system"},
	{Prefix: "flotilla-multicluster"},
	{Prefix: "kube-", Wildcard: true},
}

// SystemNamespaces describes the system namespaces, for messages and docs.
const SystemNamespaces = "istio-system (the mesh's root namespace), flotilla-system, flotilla-multicluster and kube-*"

// System reports whether ns is a system namespace, which no workspace owns
// and no tenant's intent reaches.
func System(ns string) bool {
	for _, t := range system {
		if t.Match(ns) {
			return true
		}
	}
	return false
}

// OnlySystem reports whether the pattern's namespace side can select
// nothing but system namespaces ("*/istio-system", "*/kube-*"): such a
// pattern is refused rather than left selecting nothing.
func (p Pattern) OnlySystem() bool {
	for _, t := range system {
		if t.covers(p.Namespace) {
			return true
		}
	}
	return false
}

// overlaps reports whether some name matches both terms.
func (t Term) overlaps(o Term) bool {
	switch {
	case t.Wildcard && o.Wildcard:
		return strings.HasPrefix(t.Prefix, o.Prefix) || strings.HasPrefix(o.Prefix, t.Prefix)
	case t.Wildcard:
		return t.Match(o.Prefix)
	case o.Wildcard:
		return o.Match(t.Prefix)
	default:
		return t.Prefix == o.Prefix
	}
}

// covers reports whether every name that o matches, t matches too.
func (t Term) covers(o Term) bool {
	if t.Wildcard {
		return strings.HasPrefix(o.Prefix, t.Prefix)
	}
	return !o.Wildcard && o.Prefix == t.Prefix
}

// Overlaps reports whether some cluster/namespace matches both patterns.
func (p Pattern) Overlaps(o Pattern) bool {
	return p.Cluster.overlaps(o.Cluster) && p.Namespace.overlaps(o.Namespace)
}

// Covers reports whether every cluster/namespace that o matches, p matches too.
func (p Pattern) Covers(o Pattern) bool {
	return p.Cluster.covers(o.Cluster) && p.Namespace.covers(o.Namespace)
}

// Set is a union of patterns.
type Set []Pattern

// ParseSet parses every pattern; the error names the first bad one by index.
func ParseSet(names []string) (Set, error) {
	out := make(Set, 0, len(names))
	for i, s := range names {
		p, err := Parse(s)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Match reports whether any pattern selects cluster/ns.
func (s Set) Match(cluster, ns string) bool {
	for _, p := range s {
		if p.Match(cluster, ns) {
			return true
		}
	}
	return false
}

// MatchCluster reports whether any pattern could select a namespace of cluster.
func (s Set) MatchCluster(cluster string) bool {
	for _, p := range s {
		if p.Cluster.Match(cluster) {
			return true
		}
	}
	return false
}

// Covers reports whether one pattern of s covers p. (A pattern covered only
// by the union of several is reported as not covered: narrow it, or widen
// one pattern of the set.)
func (s Set) Covers(p Pattern) bool {
	for _, q := range s {
		if q.Covers(p) {
			return true
		}
	}
	return false
}
