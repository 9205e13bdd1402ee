package resource

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/store"
)

// NodeKinds are the kinds an AccessBinding can target.
var NodeKinds = []string{KindOrganization, KindTenant, KindWorkspace, KindGroup, KindCluster}

// iamKinds are the identity and access kinds; they live in an organization.
// known reports whether a kind name exists (a Role's rules name kinds).
func iamKinds(known func(string) bool) []*Kind {
	return []*Kind{
		{Name: authz.KindTeam, Plural: "teams", Parent: KindOrganization,
			NewSpec: func() proto.Message { return &pb.TeamSpec{} }, Validate: validateTeam},
		{Name: authz.KindServiceAccount, Plural: "serviceaccounts", Short: []string{"sa"}, Parent: KindOrganization,
			NewSpec: func() proto.Message { return &pb.ServiceAccountSpec{} }, Validate: validateServiceAccount},
		{Name: authz.KindRole, Plural: "roles", Parent: KindOrganization,
			NewSpec:  func() proto.Message { return &pb.RoleSpec{} },
			Validate: func(spec proto.Message) []FieldError { return validateRole(spec, known) }},
		{Name: authz.KindAccessBinding, Plural: "accessbindings", Short: []string{"ab"}, Parent: KindOrganization,
			NewSpec: func() proto.Message { return &pb.AccessBindingSpec{} }, Validate: validateBinding, CheckRefs: checkBinding},
	}
}

func validateTeam(spec proto.Message) []FieldError {
	var out []FieldError
	for i, m := range spec.(*pb.TeamSpec).GetMembers() {
		switch {
		case strings.TrimPrefix(m, authn.UserPrefix) == "" || strings.ContainsAny(m, " \t\n"):
			out = append(out, FieldError{Field: fmt.Sprintf("spec.members[%d]", i), Message: fmt.Sprintf("%q is not a user name: write the person's login, e.g. alice@example.com", m)})
		case authz.UserSubject(m) == authn.BootstrapSubject:
			out = append(out, FieldError{Field: fmt.Sprintf("spec.members[%d]", i), Message: bootstrapReserved})
		}
	}
	return out
}

func validateServiceAccount(spec proto.Message) []FieldError {
	var out []FieldError
	seen := map[string]bool{}
	for i, k := range spec.(*pb.ServiceAccountSpec).GetKeys() {
		field := fmt.Sprintf("spec.keys[%d]", i)
		switch {
		case k.GetId() == "":
			out = append(out, FieldError{Field: field + ".id", Message: "is required: name the key (assertions carry it as kid)"})
		case seen[k.GetId()]:
			out = append(out, FieldError{Field: field + ".id", Message: fmt.Sprintf("%q names two keys: key ids must be unique", k.GetId())})
		}
		seen[k.GetId()] = true
		if _, err := authn.ParsePublicKey(k.GetPublicKey()); err != nil {
			out = append(out, FieldError{Field: field + ".publicKey", Message: err.Error() + ": give the PEM public key of an Ed25519 key pair (`flotilla serviceaccount key create` makes one)"})
		}
	}
	return out
}

func validateRole(spec proto.Message, known func(string) bool) []FieldError {
	r := spec.(*pb.RoleSpec)
	if len(r.GetRules()) == 0 {
		return []FieldError{{Field: "spec.rules", Message: "is required: a role grants permissions on kinds, e.g. {permissions: [Read], kinds: [\"*\"]}"}}
	}
	var out []FieldError
	for i, rule := range r.GetRules() {
		field := fmt.Sprintf("spec.rules[%d]", i)
		if len(rule.GetPermissions()) == 0 {
			out = append(out, FieldError{Field: field + ".permissions", Message: "is required: list Read, Write, Create, Delete or SetPolicy"})
		}
		for j, p := range rule.GetPermissions() {
			if _, err := authz.ParsePermission(p); err != nil {
				out = append(out, FieldError{Field: fmt.Sprintf("%s.permissions[%d]", field, j), Message: err.Error()})
			}
		}
		if len(rule.GetKinds()) == 0 {
			out = append(out, FieldError{Field: field + ".kinds", Message: `is required: list kinds, or "*" for every kind`})
		}
		for j, k := range rule.GetKinds() {
			if k != authz.AnyKind && !known(k) {
				out = append(out, FieldError{Field: fmt.Sprintf("%s.kinds[%d]", field, j), Message: fmt.Sprintf("unknown kind %q: `flotilla get kinds` lists them, or use \"*\"", k)})
			}
		}
	}
	return out
}

// bootstrapReserved refuses naming the bootstrap administrator, whom only
// the bootstrap credential authenticates: no other identity may become it.
const bootstrapReserved = `"user:admin" is the bootstrap administrator, who holds every permission without a binding; no other identity can be it: name the person's login instead`

var subjectPrefixes = []string{authn.UserPrefix, "team:", authn.ServiceAccountPrefix}

func validateBinding(spec proto.Message) []FieldError {
	b := spec.(*pb.AccessBindingSpec)
	var out []FieldError
	if b.GetTarget() == "" {
		out = append(out, FieldError{Field: "spec.target", Message: `is required: the FQN of the organization, tenant, workspace, group or cluster the roles hold on, e.g. "organizations/acme/tenants/payments"`})
	}
	if len(b.GetAllow()) == 0 {
		out = append(out, FieldError{Field: "spec.allow", Message: "is required: give at least one {role, subjects}"})
	}
	for i, a := range b.GetAllow() {
		field := fmt.Sprintf("spec.allow[%d]", i)
		if a.GetRole() == "" {
			out = append(out, FieldError{Field: field + ".role", Message: "is required: " + strings.Join(authz.BuiltinRoles, ", ") + ", or the name of a Role"})
		}
		if len(a.GetSubjects()) == 0 {
			out = append(out, FieldError{Field: field + ".subjects", Message: `is required: e.g. "user:alice@example.com", "team:platform", "serviceaccount:ci"`})
		}
		for j, s := range a.GetSubjects() {
			ok := false
			for _, p := range subjectPrefixes {
				ok = ok || strings.HasPrefix(s, p) && len(s) > len(p)
			}
			switch {
			case !ok:
				out = append(out, FieldError{Field: fmt.Sprintf("%s.subjects[%d]", field, j), Message: fmt.Sprintf(`%q: write "user:<name>", "team:<name>" or "serviceaccount:<name>"`, s)})
			case s == authn.BootstrapSubject:
				out = append(out, FieldError{Field: fmt.Sprintf("%s.subjects[%d]", field, j), Message: bootstrapReserved})
			}
		}
	}
	return out
}

// checkBinding checks that the target, the roles and the teams and service
// accounts a binding names exist in its organization.
func checkBinding(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	b := obj.Spec.(*pb.AccessBindingSpec)
	org := obj.ParentFQN()
	var out []FieldError
	target, err := r.Get(ctx, b.GetTarget())
	switch {
	case errors.Is(err, store.ErrNotFound) || err == nil && !isNode(target.Kind):
		out = append(out, FieldError{Field: "spec.target", Message: fmt.Sprintf("%q is not an organization, tenant, workspace, group or cluster that exists", b.GetTarget())})
	case err != nil:
		return nil, err
	case authz.OrgOf(target.FQN) != org:
		out = append(out, FieldError{Field: "spec.target", Message: fmt.Sprintf("%s is outside organization %s: bind it from an AccessBinding of its own organization", target.FQN, org)})
	}
	for i, a := range b.GetAllow() {
		field := fmt.Sprintf("spec.allow[%d]", i)
		if _, ok := authz.Builtin(a.GetRole()); !ok && a.GetRole() != "" {
			if _, err := r.Get(ctx, org+"/roles/"+a.GetRole()); errors.Is(err, store.ErrNotFound) {
				out = append(out, FieldError{Field: field + ".role", Message: fmt.Sprintf("unknown role %q: use %s, or create Role %q in %s first", a.GetRole(), strings.Join(authz.BuiltinRoles, ", "), a.GetRole(), org)})
			} else if err != nil {
				return nil, err
			}
		}
		for j, s := range a.GetSubjects() {
			norm := authz.NormalizeSubject(org, s)
			var fqn, what string
			switch {
			case strings.HasPrefix(norm, "team:"):
				fqn, what = strings.TrimPrefix(norm, "team:"), "team"
			case strings.HasPrefix(norm, authn.ServiceAccountPrefix):
				fqn, what = strings.TrimPrefix(norm, authn.ServiceAccountPrefix), "service account"
			default:
				continue
			}
			if authz.OrgOf(fqn) != org {
				// Another organization's teams and accounts are not this
				// one's to name (and whether they exist is not its to know).
				out = append(out, FieldError{Field: fmt.Sprintf("%s.subjects[%d]", field, j), Message: fmt.Sprintf("%s is not in organization %s: bind the %ss of this organization", s, org, what)})
				continue
			}
			if _, err := r.Get(ctx, fqn); errors.Is(err, store.ErrNotFound) {
				out = append(out, FieldError{Field: fmt.Sprintf("%s.subjects[%d]", field, j), Message: fmt.Sprintf("%s %s does not exist: create it first", what, fqn)})
			} else if err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func isNode(kind string) bool {
	for _, k := range NodeKinds {
		if k == kind {
			return true
		}
	}
	return false
}
