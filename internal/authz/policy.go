package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/store"
)

// Kind names of the identity kinds.
const (
	KindTeam           = "Team"
	KindRole           = "Role"
	KindAccessBinding  = "AccessBinding"
	KindServiceAccount = "ServiceAccount"
)

// CreatorAnnotation records who created an object. The server sets it on
// create and keeps it on update; what a client sends is ignored. It grants
// nothing: a node's creator is its admin through an AccessBinding the server
// writes with the node (see CreatorBinding), which can be revoked like any
// other.
const CreatorAnnotation = "flotilla.io/created-by"

// Subject prefixes inside bindings.
const (
	teamPrefix = "team:"
)

// Specs as stored (protojson field names).
type (
	teamSpec struct {
		Members    []string `json:"members"`
		OIDCGroups []string `json:"oidcGroups"`
	}
	roleSpec struct {
		Rules []struct {
			Permissions []string `json:"permissions"`
			Kinds       []string `json:"kinds"`
		} `json:"rules"`
	}
	bindingSpec struct {
		Target string `json:"target"`
		Allow  []struct {
			Role     string   `json:"role"`
			Subjects []string `json:"subjects"`
		} `json:"allow"`
	}
)

type boundRule struct {
	role     string // as written
	resolved Role
	known    bool
	subjects map[string]bool // normalized: user:x, team:<fqn>, serviceaccount:<fqn>
}

type binding struct {
	fqn, target string
	rules       []boundRule
}

type team struct {
	fqn     string
	members map[string]bool // user:<name>
	groups  map[string]bool
}

// Policy is a snapshot of the access bindings, roles and teams. It is
// immutable.
type Policy struct {
	bindings map[string][]binding // by target FQN
	roles    map[string]Role      // custom roles by FQN
	teams    map[string][]team    // by organization FQN
}

// NewPolicy builds a policy from the records of the identity kinds.
// Records of other kinds are ignored.
func NewPolicy(recs []store.Record) (*Policy, error) {
	p := &Policy{bindings: map[string][]binding{}, roles: map[string]Role{}, teams: map[string][]team{}}
	var bindings []store.Record
	for _, rec := range recs {
		switch rec.Kind {
		case KindRole:
			r, err := decodeRole(rec.Name, rec.Spec)
			if err != nil {
				return nil, fmt.Errorf("role %s: %w", rec.FQN, err)
			}
			p.roles[rec.FQN] = r
		case KindTeam:
			var s teamSpec
			if err := json.Unmarshal(rec.Spec, &s); err != nil {
				return nil, fmt.Errorf("team %s: %w", rec.FQN, err)
			}
			t := team{fqn: rec.FQN, members: map[string]bool{}, groups: map[string]bool{}}
			for _, m := range s.Members {
				t.members[UserSubject(m)] = true
			}
			for _, g := range s.OIDCGroups {
				t.groups[g] = true
			}
			org := OrgOf(rec.FQN)
			p.teams[org] = append(p.teams[org], t)
		case KindAccessBinding:
			bindings = append(bindings, rec)
		}
	}
	for _, rec := range bindings { // after the roles they name
		var s bindingSpec
		if err := json.Unmarshal(rec.Spec, &s); err != nil {
			return nil, fmt.Errorf("access binding %s: %w", rec.FQN, err)
		}
		org := OrgOf(rec.FQN)
		b := binding{fqn: rec.FQN, target: s.Target}
		for _, a := range s.Allow {
			br := boundRule{role: a.Role, subjects: map[string]bool{}}
			br.resolved, br.known = p.role(org, a.Role)
			for _, sub := range a.Subjects {
				br.subjects[NormalizeSubject(org, sub)] = true
			}
			b.rules = append(b.rules, br)
		}
		p.bindings[s.Target] = append(p.bindings[s.Target], b)
	}
	return p, nil
}

// TeamSubject is how bindings name the team fqn.
func TeamSubject(fqn string) string { return teamPrefix + fqn }

// TeamAdds describes who a write of the team rec (over old, nil for a
// create) adds: members and OIDC groups not in it before; "" for nobody.
func TeamAdds(rec store.Record, old *store.Record) (string, error) {
	var now, was teamSpec
	if err := json.Unmarshal(rec.Spec, &now); err != nil {
		return "", fmt.Errorf("team %s: %w", rec.FQN, err)
	}
	if old != nil {
		if err := json.Unmarshal(old.Spec, &was); err != nil {
			return "", fmt.Errorf("team %s: %w", old.FQN, err)
		}
	}
	var added []string
	for _, m := range now.Members {
		if !slices.ContainsFunc(was.Members, func(w string) bool { return UserSubject(w) == UserSubject(m) }) {
			added = append(added, UserSubject(m))
		}
	}
	for _, g := range now.OIDCGroups {
		if !slices.Contains(was.OIDCGroups, g) {
			added = append(added, "OIDC group "+g)
		}
	}
	return strings.Join(added, ", "), nil
}

// ServiceAccountAddsKeys describes the keys a write of the service account
// rec (over old, nil for a create) adds; "" for none.
func ServiceAccountAddsKeys(rec store.Record, old *store.Record) (string, error) {
	type key struct {
		ID        string `json:"id"`
		PublicKey string `json:"publicKey"`
	}
	var now, was struct {
		Keys []key `json:"keys"`
	}
	if err := json.Unmarshal(rec.Spec, &now); err != nil {
		return "", fmt.Errorf("service account %s: %w", rec.FQN, err)
	}
	if old != nil {
		if err := json.Unmarshal(old.Spec, &was); err != nil {
			return "", fmt.Errorf("service account %s: %w", old.FQN, err)
		}
	}
	var added []string
	for _, k := range now.Keys {
		if !slices.Contains(was.Keys, k) {
			added = append(added, fmt.Sprintf("key %q", k.ID))
		}
	}
	return strings.Join(added, ", "), nil
}

// RoleFromRecord decodes a stored Role.
func RoleFromRecord(rec store.Record) (Role, error) { return decodeRole(rec.Name, rec.Spec) }

// BindingTarget reads the target of a stored AccessBinding.
func BindingTarget(rec store.Record) string {
	var s bindingSpec
	_ = json.Unmarshal(rec.Spec, &s) // a stored binding was valid when written
	return s.Target
}

func decodeRole(name string, spec json.RawMessage) (Role, error) {
	var s roleSpec
	if err := json.Unmarshal(spec, &s); err != nil {
		return Role{}, err
	}
	r := Role{Name: name}
	for _, rule := range s.Rules {
		var out Rule
		for _, perm := range rule.Permissions {
			pm, err := ParsePermission(perm)
			if err != nil {
				return Role{}, err
			}
			out.Permissions = append(out.Permissions, pm)
		}
		out.Kinds = rule.Kinds
		r.Rules = append(r.Rules, out)
	}
	return r, nil
}

// role resolves a role name as a binding in org writes it.
func (p *Policy) role(org, name string) (Role, bool) {
	if r, ok := builtin[name]; ok {
		return r, true
	}
	r, ok := p.roles[org+"/roles/"+name]
	return r, ok
}

// Role resolves a role name as written in a binding of org.
func (p *Policy) Role(org, name string) (Role, bool) { return p.role(org, name) }

// UserSubject turns a member entry ("alice@example.com" or
// "user:alice@example.com") into a subject.
func UserSubject(m string) string {
	if strings.HasPrefix(m, authn.UserPrefix) {
		return m
	}
	return authn.UserPrefix + m
}

// NormalizeSubject turns a binding's subject into the form principals are
// matched with: teams and service accounts by FQN.
func NormalizeSubject(org, s string) string {
	switch {
	case strings.HasPrefix(s, teamPrefix) && !strings.Contains(s, "/"):
		return teamPrefix + org + "/teams/" + strings.TrimPrefix(s, teamPrefix)
	case strings.HasPrefix(s, authn.ServiceAccountPrefix) && !strings.Contains(s, "/"):
		return authn.ServiceAccountPrefix + org + "/serviceaccounts/" + strings.TrimPrefix(s, authn.ServiceAccountPrefix)
	}
	return s
}

// Checker answers for one principal against one policy.
type Checker struct {
	pol  *Policy
	who  authn.Principal
	keys map[string]bool // the principal's subject and its teams
	made map[string]bool // nodes the principal created in this request (the policy snapshot predates them)
}

// Created notes that the principal just created the node fqn, so it is its
// admin for the rest of the request: the creator's binding (see
// CreatorBinding) is written in the same transaction, after the policy
// snapshot was taken.
func (c *Checker) Created(fqn string) {
	if c.made == nil {
		c.made = map[string]bool{}
	}
	c.made[fqn] = true
}

// For returns a checker for p.
func (pol *Policy) For(p authn.Principal) *Checker {
	c := &Checker{pol: pol, who: p, keys: map[string]bool{p.Subject: true}}
	for _, ts := range pol.teams {
		for _, t := range ts {
			in := t.members[p.Subject]
			for _, g := range p.Groups {
				in = in || t.groups[g]
			}
			if in {
				c.keys[teamPrefix+t.fqn] = true
			}
		}
	}
	return c
}

// Teams lists the FQNs of the principal's teams.
func (c *Checker) Teams() []string {
	var out []string
	for _, k := range sortedKeys(c.keys) {
		if strings.HasPrefix(k, teamPrefix) {
			out = append(out, strings.TrimPrefix(k, teamPrefix))
		}
	}
	return out
}

// Principal is whom the checker answers for.
func (c *Checker) Principal() authn.Principal { return c.who }

// Policy is the policy the checker answers from.
func (c *Checker) Policy() *Policy { return c.pol }

// Can reports whether the principal holds perm on the object fqn of kind,
// and why: a binding on fqn or on a node above it grants it. It reads
// nothing but the policy snapshot.
func (c *Checker) Can(perm Permission, kind, fqn string) (bool, string) {
	if c.who.Bootstrap() {
		return true, "the bootstrap administrator holds every permission"
	}
	for _, node := range Ancestry(fqn) {
		if c.made[node] {
			return true, fmt.Sprintf("%s created %s in this request and so is its admin", c.who.Subject, node)
		}
		for _, b := range c.pol.bindings[node] {
			for _, r := range b.rules {
				if !r.known || !r.resolved.Grants(perm, kind) {
					continue
				}
				for k := range c.keys {
					if r.subjects[k] {
						return true, fmt.Sprintf("role %s on %s (binding %s, as %s)", r.role, node, b.fqn, k)
					}
				}
			}
		}
	}
	return false, fmt.Sprintf("%s has no %s permission on %s %s: no access binding on it or above it grants one", c.who.Subject, perm, kind, fqn)
}

// Holds reports whether the principal holds everything role grants, on
// target: nobody can grant more than they hold.
func (c *Checker) Holds(role Role, target string) (bool, string) {
	for _, rule := range role.Rules {
		for _, perm := range rule.Permissions {
			for _, kind := range rule.Kinds {
				if ok, _ := c.Can(perm, kind, target); !ok {
					what := kind
					if kind == AnyKind {
						what = "every kind"
					}
					return false, fmt.Sprintf("role %s grants %s on %s, which %s does not hold on %s: nobody can grant more than they hold", role.Name, perm, what, c.who.Subject, target)
				}
			}
		}
	}
	return true, ""
}

// HoldsGrants reports whether the principal holds every grant of gs on its
// target: whoever hands a subject's grants to someone else (a team member
// added, a service-account key) must hold them all.
func (c *Checker) HoldsGrants(gs []Grant) (bool, string) {
	for _, g := range gs {
		if !g.Known {
			continue // grants nothing
		}
		if ok, reason := c.Holds(g.Role, g.Target); !ok {
			return false, reason + " (binding " + g.Binding + ")"
		}
	}
	return true, ""
}

// Grant is one role given on one target by one rule of a binding.
type Grant struct {
	Binding string // FQN of the AccessBinding
	Target  string
	RoleRef string // the role as the binding names it
	Role    Role
	Known   bool // the role exists
}

// GrantsTo lists every grant that names subject (normalized: "team:<fqn>",
// "serviceaccount:<fqn>", "user:<name>"), sorted by binding.
func (p *Policy) GrantsTo(subject string) []Grant {
	var out []Grant
	for _, bs := range p.bindings {
		for _, b := range bs {
			for _, r := range b.rules {
				if r.subjects[subject] {
					out = append(out, Grant{Binding: b.fqn, Target: b.target, RoleRef: r.role, Role: r.resolved, Known: r.known})
				}
			}
		}
	}
	sortGrants(out)
	return out
}

// People lists the people and service accounts the policy names: the
// subjects of bindings ("user:<name>", "serviceaccount:<fqn>") and the
// members of teams, sorted. People who are in a team only through an OIDC
// group are not known until they log in, so they are not listed.
func (p *Policy) People() []string {
	set := map[string]bool{}
	for _, bs := range p.bindings {
		for _, b := range bs {
			for _, r := range b.rules {
				for s := range r.subjects {
					if !strings.HasPrefix(s, teamPrefix) {
						set[s] = true
					}
				}
			}
		}
	}
	for _, ts := range p.teams {
		for _, t := range ts {
			for m := range t.members {
				set[m] = true
			}
		}
	}
	return sortedKeys(set)
}

// GrantsOfRole lists every grant of the custom role roleFQN
// ("organizations/<org>/roles/<name>"), sorted by binding.
func (p *Policy) GrantsOfRole(roleFQN string) []Grant {
	org, name, ok := strings.Cut(roleFQN, "/roles/")
	if !ok {
		return nil
	}
	var out []Grant
	for _, bs := range p.bindings {
		for _, b := range bs {
			if OrgOf(b.fqn) != org {
				continue
			}
			for _, r := range b.rules {
				if r.role == name {
					out = append(out, Grant{Binding: b.fqn, Target: b.target, RoleRef: r.role, Role: r.resolved, Known: r.known})
				}
			}
		}
	}
	sortGrants(out)
	return out
}

// BindingsOnOrBelow lists the FQNs of the bindings whose target is node or
// lies below it, sorted.
func (p *Policy) BindingsOnOrBelow(node string) []string {
	var out []string
	for target, bs := range p.bindings {
		if target != node && !strings.HasPrefix(target, node+"/") {
			continue
		}
		for _, b := range bs {
			out = append(out, b.fqn)
		}
	}
	sort.Strings(out)
	return out
}

func sortGrants(gs []Grant) {
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].Binding != gs[j].Binding {
			return gs[i].Binding < gs[j].Binding
		}
		return gs[i].RoleRef < gs[j].RoleRef
	})
}

// Source is what a Cache reads policy from: the store, or a transaction.
type Source interface {
	store.Reader
	KindsChanged(ctx context.Context, after int64) ([]string, error)
}

// Cache keeps the newest policy it has built, and rebuilds it only when a
// record of a kind it reads changed.
type Cache struct {
	kinds map[string]bool

	mu  sync.Mutex
	pol *Policy
	rev int64
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{kinds: map[string]bool{KindTeam: true, KindRole: true, KindAccessBinding: true}}
}

// Policy returns the policy as src sees it at revision rev. src must not
// have written anything yet (a transaction is asked before its writes).
func (c *Cache) Policy(ctx context.Context, src Source, rev int64) (*Policy, error) {
	c.mu.Lock()
	pol, at := c.pol, c.rev
	c.mu.Unlock()
	if pol != nil && at == rev {
		return pol, nil
	}
	if pol != nil && at < rev {
		changed, err := src.KindsChanged(ctx, at)
		if err == nil && !c.touches(changed) {
			c.keep(pol, rev)
			return pol, nil
		}
	}
	var recs []store.Record
	for k := range c.kinds {
		rs, err := src.List(ctx, store.Query{Kind: k})
		if err != nil {
			return nil, err
		}
		recs = append(recs, rs...)
	}
	pol, err := NewPolicy(recs)
	if err != nil {
		return nil, err
	}
	c.keep(pol, rev)
	return pol, nil
}

func (c *Cache) touches(kinds []string) bool {
	for _, k := range kinds {
		if c.kinds[k] {
			return true
		}
	}
	return false
}

func (c *Cache) keep(pol *Policy, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev >= c.rev {
		c.pol, c.rev = pol, rev
	}
}
