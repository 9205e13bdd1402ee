// Package access applies authorization to resources: it is where the
// resource model (kinds, records, writes) meets the policy of package authz.
// The resource API and the central control plane's fleet API both enforce
// through it, so a rule cannot differ between them.
//
//	write:  Guard ── per object, inside the write's transaction ──▶ Create / Write / SetPolicy + no escalation
//	delete: CanDelete, References ── per record ──▶ Delete / SetPolicy, nothing left naming it
//	read:   CanRead ── per record ──▶ Read (hidden records look absent)
//
// The rules, in one place:
//   - Teams, service accounts (and their keys), roles and access bindings
//     decide who may do what, so writing or deleting one needs SetPolicy.
//   - Nobody grants, directly or through a role, a team or a key, a
//     permission they do not hold where it would hold.
//   - A Role, Team or ServiceAccount that a binding names cannot be
//     deleted; a deleted node takes the bindings on it with it.
//   - The creator of a node (tenant, workspace, group, cluster) is its
//     admin through an AccessBinding written with the node, which can be
//     revoked like any other.
package access

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
)

// Principal returns the authenticated caller of ctx, or an Unauthenticated
// error when the call was not authenticated (a handler reached without the
// authentication interceptor).
func Principal(ctx context.Context) (authn.Principal, error) {
	p, ok := authn.FromContext(ctx)
	if !ok {
		return authn.Principal{}, connect.NewError(connect.CodeUnauthenticated, authn.ErrNoToken)
	}
	return p, nil
}

// Actor is how the audit names the caller of ctx.
func Actor(ctx context.Context) string {
	p, _ := authn.FromContext(ctx)
	return store.Actor(p.Subject, p.Method)
}

// Checker returns the caller's checker against the policy src sees at rev.
func Checker(ctx context.Context, cache *authz.Cache, src authz.Source, rev int64) (*authz.Checker, error) {
	p, err := Principal(ctx)
	if err != nil {
		return nil, err
	}
	pol, err := cache.Policy(ctx, src, rev)
	if err != nil {
		return nil, fmt.Errorf("read the access policy: %w", err)
	}
	return pol.For(p), nil
}

// ReadChecker is Checker at the store's newest revision, for reads.
func ReadChecker(ctx context.Context, cache *authz.Cache, st store.Store) (*authz.Checker, error) {
	rev, err := st.Revision(ctx)
	if err != nil {
		return nil, err
	}
	return Checker(ctx, cache, st, rev)
}

// CanRead reports whether the checker's principal may read rec. An access
// binding is read with Read on its target.
func CanRead(chk *authz.Checker, rec store.Record) bool {
	if rec.Kind == authz.KindAccessBinding {
		ok, _ := chk.Can(authz.Read, authz.KindAccessBinding, authz.BindingTarget(rec))
		return ok
	}
	ok, _ := chk.Can(authz.Read, rec.Kind, rec.FQN)
	return ok
}

// Can answers "may the principal do perm on kind at fqn?" as writes are
// judged: changing a Team, ServiceAccount, Role or AccessBinding takes
// SetPolicy, whatever the permission asked. (The no-escalation rule depends
// on the change itself, so a yes here is necessary, not sufficient.)
func Can(chk *authz.Checker, perm authz.Permission, kind, fqn string) (bool, string) {
	if perm != authz.Read && isIdentity(kind) {
		perm = authz.SetPolicy
	}
	return chk.Can(perm, kind, fqn)
}

func isIdentity(kind string) bool {
	switch kind {
	case authz.KindTeam, authz.KindServiceAccount, authz.KindRole, authz.KindAccessBinding:
		return true
	}
	return false
}

// CanDelete reports whether the principal may delete rec, and why not.
func CanDelete(chk *authz.Checker, rec store.Record) (bool, string) {
	switch rec.Kind {
	case authz.KindAccessBinding:
		return chk.Can(authz.SetPolicy, authz.KindAccessBinding, authz.BindingTarget(rec))
	case authz.KindTeam, authz.KindServiceAccount, authz.KindRole:
		if ok, reason := chk.Can(authz.SetPolicy, rec.Kind, rec.FQN); !ok {
			return false, identityNeedsSetPolicy(rec.Kind, rec.FQN) + reason
		}
		return true, ""
	}
	return chk.Can(authz.Delete, rec.Kind, rec.FQN)
}

// References names the access bindings that keep rec from being deleted: a
// Role, Team or ServiceAccount that a binding names would leave the binding
// dangling, and whoever re-created the name would inherit its grants.
func References(chk *authz.Checker, rec store.Record) []string {
	var gs []authz.Grant
	switch rec.Kind {
	case authz.KindRole:
		gs = chk.Policy().GrantsOfRole(rec.FQN)
	case authz.KindTeam:
		gs = chk.Policy().GrantsTo(authz.TeamSubject(rec.FQN))
	case authz.KindServiceAccount:
		gs = chk.Policy().GrantsTo(authn.ServiceAccountPrefix + rec.FQN)
	}
	var out []string
	for _, g := range gs {
		if !slices.Contains(out, g.Binding) {
			out = append(out, g.Binding)
		}
	}
	return out
}

// BindingsOn lists the access bindings on node or below it, which go with
// the node when it is deleted: a binding must not outlive its target and
// come back to life when someone re-creates the name.
func BindingsOn(chk *authz.Checker, node string) []string {
	return chk.Policy().BindingsOnOrBelow(node)
}

// Annotations the server keeps on records; what a client sends for them is
// ignored.
const (
	// CreatorBindingAnnotation names the AccessBinding that made a node's
	// creator its admin. It is set when the binding is written, and stays
	// when the binding is later deleted (revoked), so that the grant is
	// never made again.
	CreatorBindingAnnotation = "flotilla.io/creator-binding"
)

var serverAnnotations = []string{authz.CreatorAnnotation, CreatorBindingAnnotation}

// Guard authorizes each object of a write inside its transaction tx:
//   - Create for a new object, Write for an existing one;
//   - for Teams, ServiceAccounts and Roles, SetPolicy, and the holding of
//     every grant the change hands to someone (new members, new keys, new
//     rules);
//   - for an access binding, SetPolicy on its target plus every permission
//     of the roles it grants.
//
// It keeps the server's annotations (the creator, and its binding) and,
// when someone other than the bootstrap administrator creates a node,
// writes the AccessBinding that makes them its admin.
func Guard(chk *authz.Checker, tx store.Tx) resource.Guard {
	return func(ctx context.Context, obj *resource.Object, rec *store.Record, old *store.Record) (string, error) {
		keepServerAnnotations(chk, rec, old)
		if old != nil && !CanRead(chk, *old) {
			// An object the caller may not read looks absent: the
			// answer is a create's, never a word about what is there.
			if ok, reason := chk.Can(authz.Create, obj.Kind.Name, rec.FQN); !ok {
				return "permission denied: " + reason, nil
			}
			return fmt.Sprintf("permission denied: %s %s is taken: choose another name", obj.Kind.Name, rec.FQN), nil
		}
		switch obj.Kind.Name {
		case authz.KindAccessBinding:
			return bindingGuard(ctx, chk, tx, obj, old)
		case authz.KindTeam, authz.KindServiceAccount, authz.KindRole:
			return identityGuard(chk, obj.Kind.Name, *rec, old)
		}
		perm := authz.Create
		if old != nil {
			perm = authz.Write
		}
		if ok, reason := chk.Can(perm, obj.Kind.Name, rec.FQN); !ok {
			return "permission denied: " + reason, nil
		}
		if old == nil && IsNode(obj.Kind.Name) && !chk.Principal().Bootstrap() {
			chk.Created(rec.FQN)
			name, err := writeCreatorBinding(ctx, tx, rec.FQN, chk.Principal().Subject)
			if err != nil {
				return "", err
			}
			rec.Annotations[CreatorBindingAnnotation] = name
		}
		if len(rec.Annotations) == 0 {
			rec.Annotations = nil
		}
		return "", nil
	}
}

// keepServerAnnotations drops what the client sent for the server's
// annotations, and carries the stored ones (or sets the creator on create).
func keepServerAnnotations(chk *authz.Checker, rec, old *store.Record) {
	if rec.Annotations == nil {
		rec.Annotations = map[string]string{}
	}
	for _, a := range serverAnnotations {
		delete(rec.Annotations, a)
		if old != nil && old.Annotations[a] != "" {
			rec.Annotations[a] = old.Annotations[a]
		}
	}
	if old == nil {
		rec.Annotations[authz.CreatorAnnotation] = chk.Principal().Subject
	}
}

// IsNode reports whether kind is a node of the hierarchy, which access
// bindings target.
func IsNode(kind string) bool { return slices.Contains(resource.NodeKinds, kind) }

func identityNeedsSetPolicy(kind, fqn string) string {
	return fmt.Sprintf("%s %s decides who may do what, so changing it needs SetPolicy; ", kind, fqn)
}

// identityGuard authorizes a write of a Team, ServiceAccount or Role: it
// needs SetPolicy, and whoever hands a subject's grants to someone new (a
// member, a key) or widens a role must hold what that grants.
func identityGuard(chk *authz.Checker, kind string, rec store.Record, old *store.Record) (string, error) {
	if ok, reason := chk.Can(authz.SetPolicy, kind, rec.FQN); !ok {
		return "permission denied: " + identityNeedsSetPolicy(kind, rec.FQN) + reason, nil
	}
	pol := chk.Policy()
	switch kind {
	case authz.KindTeam:
		added, err := authz.TeamAdds(rec, old)
		if err != nil {
			return "", err
		}
		if added == "" {
			return "", nil
		}
		if ok, reason := chk.HoldsGrants(pol.GrantsTo(authz.TeamSubject(rec.FQN))); !ok {
			return fmt.Sprintf("permission denied: adding %s to team %s gives them the team's grants; %s", added, rec.FQN, reason), nil
		}
	case authz.KindServiceAccount:
		added, err := authz.ServiceAccountAddsKeys(rec, old)
		if err != nil {
			return "", err
		}
		if added == "" {
			return "", nil
		}
		return KeyGuard(chk, rec.FQN, added), nil
	case authz.KindRole:
		role, err := authz.RoleFromRecord(rec)
		if err != nil {
			return "", err
		}
		for _, g := range pol.GrantsOfRole(rec.FQN) {
			if ok, reason := chk.Holds(role, g.Target); !ok {
				return fmt.Sprintf("permission denied: role %s is granted by %s on %s; %s", rec.FQN, g.Binding, g.Target, reason), nil
			}
		}
	}
	return "", nil
}

// KeyGuard says why the principal may not add a key (named by what) to the
// service account fqn, or "" when it may: the key's holder acts as the
// account, so the principal must hold every grant of the account. SetPolicy
// is checked by the caller.
func KeyGuard(chk *authz.Checker, fqn, what string) string {
	if ok, reason := chk.HoldsGrants(chk.Policy().GrantsTo(authn.ServiceAccountPrefix + fqn)); !ok {
		return fmt.Sprintf("permission denied: %s lets its holder act as service account %s; %s", what, fqn, reason)
	}
	return ""
}

// KeyGuardFull is the whole check of adding a key to the service account
// fqn: SetPolicy there, and KeyGuard.
func KeyGuardFull(chk *authz.Checker, fqn, what string) string {
	if ok, reason := chk.Can(authz.SetPolicy, authz.KindServiceAccount, fqn); !ok {
		return "permission denied: " + identityNeedsSetPolicy(authz.KindServiceAccount, fqn) + reason
	}
	return KeyGuard(chk, fqn, what)
}

func bindingGuard(ctx context.Context, chk *authz.Checker, rd store.Reader, obj *resource.Object, old *store.Record) (string, error) {
	spec := obj.Spec.(*pb.AccessBindingSpec)
	targets := []string{spec.GetTarget()}
	if old != nil {
		if prev := authz.BindingTarget(*old); prev != spec.GetTarget() {
			targets = append(targets, prev)
		}
	}
	for _, t := range targets {
		if ok, reason := chk.Can(authz.SetPolicy, authz.KindAccessBinding, t); !ok {
			return "permission denied: changing access on " + t + " needs SetPolicy there; " + reason, nil
		}
	}
	org := obj.ParentFQN()
	for _, a := range spec.GetAllow() {
		role, ok := authz.Builtin(a.GetRole())
		if !ok {
			rec, err := rd.Get(ctx, org+"/roles/"+a.GetRole())
			if errors.Is(err, store.ErrNotFound) {
				continue // the reference check reports it
			} else if err != nil {
				return "", err
			}
			if role, err = authz.RoleFromRecord(rec); err != nil {
				return "", err
			}
		}
		if ok, reason := chk.Holds(role, spec.GetTarget()); !ok {
			return "permission denied: " + reason, nil
		}
	}
	return "", nil
}

// CreatorBindingName is the name of the AccessBinding that makes the
// creator of node its admin.
func CreatorBindingName(node string) string {
	sum := sha256.Sum256([]byte(node))
	return "creator-" + hex.EncodeToString(sum[:6])
}

// writeCreatorBinding writes, in tx, the AccessBinding that gives subject
// admin on node, and returns its name.
func writeCreatorBinding(ctx context.Context, tx store.Tx, node, subject string) (string, error) {
	org := authz.OrgOf(node)
	name := CreatorBindingName(node)
	spec, err := resource.SpecJSON(&pb.AccessBindingSpec{Target: node, Allow: []*pb.AccessRule{{Role: "admin", Subjects: []string{subject}}}})
	if err != nil {
		return "", err
	}
	rec := store.Record{
		Kind: authz.KindAccessBinding, FQN: org + "/accessbindings/" + name, Name: name, Parent: org, Spec: spec,
		Annotations: map[string]string{authz.CreatorAnnotation: subject},
	}
	if _, err := tx.Put(ctx, rec); err != nil {
		return "", fmt.Errorf("write the creator's binding on %s: %w", node, err)
	}
	return name, nil
}

// BindCreators gives the creators of nodes made before creators got
// bindings (whose only mark is the creator annotation) the binding a new
// node's creator gets, once: the node is marked with the binding's name,
// so a binding revoked later is never made again. It runs at start.
func BindCreators(ctx context.Context, st store.Store) (int, error) {
	n := 0
	err := st.Update(ctx, "server:bind-creators", func(tx store.Tx) error {
		n = 0
		for _, kind := range resource.NodeKinds {
			recs, err := tx.List(ctx, store.Query{Kind: kind})
			if err != nil {
				return err
			}
			for _, rec := range recs {
				creator := rec.Annotations[authz.CreatorAnnotation]
				if creator == "" || creator == authn.BootstrapSubject || rec.Annotations[CreatorBindingAnnotation] != "" || authz.OrgOf(rec.FQN) == rec.FQN {
					continue
				}
				name, err := writeCreatorBinding(ctx, tx, rec.FQN, creator)
				if err != nil {
					return err
				}
				rec.Annotations[CreatorBindingAnnotation] = name
				if _, err := tx.Put(ctx, rec); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}
