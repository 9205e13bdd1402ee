// Package access applies authorization to resources: it is where the
// resource model (kinds, records, writes) meets the policy of package authz.
// The resource API and the central control plane's fleet API both enforce
// through it, so a rule cannot differ between them.
//
//	write: Guard ── per object, inside the write's transaction ──▶ Create / Write / SetPolicy
//	read:  CanRead ── per record ──▶ Read (hidden records look absent)
package access

import (
	"context"
	"errors"
	"fmt"

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
	chk := pol.For(p)
	// A failed read finds no creator: it denies, never allows.
	chk.Creators(func(fqn string) string {
		rec, err := src.Get(ctx, fqn)
		if err != nil {
			return ""
		}
		return rec.Annotations[authz.CreatorAnnotation]
	})
	return chk, nil
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
		ok, _ := chk.Can(authz.Read, authz.KindAccessBinding, authz.BindingTarget(rec), "")
		return ok
	}
	ok, _ := chk.Can(authz.Read, rec.Kind, rec.FQN, rec.Annotations[authz.CreatorAnnotation])
	return ok
}

// CanDelete reports whether the principal may delete rec, and why not.
func CanDelete(chk *authz.Checker, rec store.Record) (bool, string) {
	if rec.Kind == authz.KindAccessBinding {
		return chk.Can(authz.SetPolicy, authz.KindAccessBinding, authz.BindingTarget(rec), "")
	}
	return chk.Can(authz.Delete, rec.Kind, rec.FQN, rec.Annotations[authz.CreatorAnnotation])
}

// Guard authorizes each object of a write inside its transaction rd:
// Create for a new object, Write for an existing one, and for an access
// binding SetPolicy on its target plus every permission of the roles it
// grants. It also keeps the creator annotation: set on create, carried on
// update, never taken from the client.
func Guard(chk *authz.Checker, rd store.Reader) resource.Guard {
	return func(ctx context.Context, obj *resource.Object, rec *store.Record, old *store.Record) (string, error) {
		sub := chk.Principal().Subject
		if rec.Annotations == nil {
			rec.Annotations = map[string]string{}
		}
		delete(rec.Annotations, authz.CreatorAnnotation)
		var creator string
		if old != nil {
			creator = old.Annotations[authz.CreatorAnnotation]
		} else {
			creator = sub
		}
		if creator != "" {
			rec.Annotations[authz.CreatorAnnotation] = creator
		}
		if len(rec.Annotations) == 0 {
			rec.Annotations = nil
		}
		if obj.Kind.Name == authz.KindAccessBinding {
			return bindingGuard(ctx, chk, rd, obj, old)
		}
		perm, owner := authz.Create, "" // a new object has no creator yet
		if old != nil {
			perm, owner = authz.Write, creator
		}
		if ok, reason := chk.Can(perm, obj.Kind.Name, rec.FQN, owner); !ok {
			return "permission denied: " + reason, nil
		}
		if old == nil {
			chk.Created(rec.FQN)
		}
		return "", nil
	}
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
		if ok, reason := chk.Can(authz.SetPolicy, authz.KindAccessBinding, t, ""); !ok {
			return "permission denied: changing access on " + t + " needs SetPolicy there; " + reason, nil
		}
	}
	target, err := rd.Get(ctx, spec.GetTarget())
	if errors.Is(err, store.ErrNotFound) {
		return "", nil // the reference check reports it
	} else if err != nil {
		return "", err
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
		if ok, reason := chk.Holds(role, target.FQN); !ok {
			return "permission denied: " + reason, nil
		}
	}
	return "", nil
}
