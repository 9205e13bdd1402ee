// Package authz decides what an authenticated caller may do. Permissions
// come from roles, which AccessBindings give to users, teams and service
// accounts on a node of the hierarchy (organization, tenant, workspace,
// group, cluster); a binding holds on its node and everything below it.
// Nothing else grants anything: not who created an object, not a name.
//
//	store records (bindings, roles, teams, nodes) ──▶ Policy (immutable snapshot)
//	Policy + Principal ──▶ Checker.Can(permission, kind, fqn)
//
// A Policy is pure data; Cache keeps one current against the store.
package authz

import (
	"fmt"
	"sort"
	"strings"
)

// Permission is one thing a role allows.
type Permission string

// The permissions.
const (
	Read      Permission = "Read"
	Write     Permission = "Write"
	Create    Permission = "Create"
	Delete    Permission = "Delete"
	SetPolicy Permission = "SetPolicy"
)

// Permissions lists every permission.
var Permissions = []Permission{Read, Write, Create, Delete, SetPolicy}

// ParsePermission accepts a permission name in any case.
func ParsePermission(s string) (Permission, error) {
	for _, p := range Permissions {
		if strings.EqualFold(s, string(p)) {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown permission %q: use one of Read, Write, Create, Delete, SetPolicy", s)
}

// AnyKind in a rule covers every kind.
const AnyKind = "*"

// Rule grants permissions on kinds.
type Rule struct {
	Permissions []Permission
	Kinds       []string // kind names, or AnyKind
}

func (r Rule) grants(p Permission, kind string) bool {
	return r.hasPermission(p) && r.hasKind(kind)
}

func (r Rule) hasPermission(p Permission) bool {
	for _, q := range r.Permissions {
		if q == p {
			return true
		}
	}
	return false
}

func (r Rule) hasKind(kind string) bool {
	for _, k := range r.Kinds {
		if k == AnyKind || k == kind {
			return true
		}
	}
	return false
}

// Role is a named set of rules.
type Role struct {
	Name  string
	Rules []Rule
}

// Grants reports whether the role allows p on kind.
func (r Role) Grants(p Permission, kind string) bool {
	for _, rule := range r.Rules {
		if rule.grants(p, kind) {
			return true
		}
	}
	return false
}

// The built-in roles.
var builtin = map[string]Role{
	"admin":   {Name: "admin", Rules: []Rule{{Permissions: Permissions, Kinds: []string{AnyKind}}}},
	"editor":  {Name: "editor", Rules: []Rule{{Permissions: []Permission{Read, Write, Create, Delete}, Kinds: []string{AnyKind}}}},
	"creator": {Name: "creator", Rules: []Rule{{Permissions: []Permission{Read, Create}, Kinds: []string{AnyKind}}}},
	"writer":  {Name: "writer", Rules: []Rule{{Permissions: []Permission{Read, Write}, Kinds: []string{AnyKind}}}},
	"reader":  {Name: "reader", Rules: []Rule{{Permissions: []Permission{Read}, Kinds: []string{AnyKind}}}},
}

// BuiltinRoles lists the built-in role names, most powerful first.
var BuiltinRoles = []string{"admin", "editor", "creator", "writer", "reader"}

// Builtin returns a built-in role by name.
func Builtin(name string) (Role, bool) {
	r, ok := builtin[name]
	return r, ok
}

// Ancestry returns fqn's nodes from the root down to fqn itself:
// "organizations/a/tenants/b" → ["organizations/a", "organizations/a/tenants/b"].
func Ancestry(fqn string) []string {
	parts := strings.Split(fqn, "/")
	var out []string
	for i := 2; i <= len(parts); i += 2 {
		out = append(out, strings.Join(parts[:i], "/"))
	}
	return out
}

// OrgOf returns the organization FQN fqn lies in ("" for none).
func OrgOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 3)
	if len(parts) < 2 || parts[0] != "organizations" {
		return ""
	}
	return parts[0] + "/" + parts[1]
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
