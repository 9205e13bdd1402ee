package resource

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// settingLevel is the level of a settings kind.
var settingLevel = map[string]string{
	KindOrganizationSetting: compile.LevelOrganization,
	KindTenantSetting:       compile.LevelTenant,
	KindWorkspaceSetting:    compile.LevelWorkspace,
	KindTrafficSetting:      compile.LevelGroup,
	KindSecuritySetting:     compile.LevelGroup,
}

// settingSpec makes an empty spec of a settings kind.
var settingSpec = map[string]func() proto.Message{
	KindOrganizationSetting: func() proto.Message { return &pb.OrganizationSettingSpec{} },
	KindTenantSetting:       func() proto.Message { return &pb.TenantSettingSpec{} },
	KindWorkspaceSetting:    func() proto.Message { return &pb.WorkspaceSettingSpec{} },
	KindTrafficSetting:      func() proto.Message { return &pb.TrafficSettingSpec{} },
	KindSecuritySetting:     func() proto.Message { return &pb.SecuritySettingSpec{} },
}

// layerOf is the settings layer of a settings object's spec.
func layerOf(fqn, kind, scope string, spec proto.Message) compile.Layer {
	l := compile.Layer{FQN: fqn, Level: settingLevel[kind], Scope: scope,
		TrafficPath: "spec.defaultTrafficSetting", SecurityPath: "spec.defaultSecuritySetting"}
	switch s := spec.(type) {
	case *pb.OrganizationSettingSpec:
		l.Traffic, l.Security = s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case *pb.TenantSettingSpec:
		l.Traffic, l.Security = s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case *pb.WorkspaceSettingSpec:
		l.Traffic, l.Security = s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case *pb.TrafficSettingSpec:
		l.Traffic, l.TrafficPath = s, "spec"
	case *pb.SecuritySettingSpec:
		l.Security, l.SecurityPath = s, "spec"
	}
	return l
}

// storedLayers reads the settings of kind whose parent is scope, except
// the one named skip.
func storedLayers(ctx context.Context, r store.Reader, kind, scope, skip string) ([]compile.Layer, error) {
	recs, err := r.List(ctx, store.Query{Kind: kind, Parent: scope})
	if err != nil {
		return nil, err
	}
	var out []compile.Layer
	for _, rec := range recs {
		if rec.FQN == skip {
			continue
		}
		spec := settingSpec[kind]()
		if err := protojson.Unmarshal(rec.Spec, spec); err != nil {
			return nil, fmt.Errorf("stored %s: %w", rec.FQN, err)
		}
		out = append(out, layerOf(rec.FQN, kind, scope, spec))
	}
	return out, nil
}

// checkSetting: a setting in a group suits the group; every FQN its
// authorization rules name exists; and, merged under the settings above it
// and beside it at its level, it neither relaxes a STRICTER setting nor
// conflicts with a setting of its own level.
func checkSetting(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	var out []FieldError
	level := settingLevel[obj.Kind.Name]
	if level == compile.LevelGroup {
		g, _, err := parentGroup(ctx, r, obj)
		if err != nil {
			return nil, err
		}
		if why := suitsGroup(obj.Kind.Name, g); why != "" {
			out = append(out, FieldError{Field: "metadata.group", Message: fmt.Sprintf("%s; %s is a %s group in %s mode", why, obj.ParentFQN(), g.GetType(), g.GetConfigMode())})
		}
	}
	self := layerOf(obj.FQN(), obj.Kind.Name, obj.ParentFQN(), obj.Spec)
	if self.Security != nil {
		refs, err := checkRuleRefs(ctx, r, self)
		if err != nil {
			return nil, err
		}
		out = append(out, refs...)
	}

	// The scopes above the object, highest first, with the kind of their
	// settings.
	type scopeKind struct{ fqn, kind string }
	var scopes []scopeKind
	for i, p := range obj.Parents {
		kind := map[string]string{KindOrganization: KindOrganizationSetting, KindTenant: KindTenantSetting, KindWorkspace: KindWorkspaceSetting}[p.Kind.Name]
		if kind != "" {
			scopes = append(scopes, scopeKind{fqn(obj.Parents[:i], p.Kind, p.Name), kind})
		}
	}
	var layers []compile.Layer
	for _, s := range scopes {
		ls, err := storedLayers(ctx, r, s.kind, s.fqn, obj.FQN())
		if err != nil {
			return nil, err
		}
		layers = append(layers, ls...)
	}
	if level == compile.LevelGroup {
		siblings, err := overlappingGroupSettings(ctx, r, obj)
		if err != nil {
			return nil, err
		}
		layers = append(layers, siblings...)
	}
	_, problems := compile.Merge(append(layers, self))
	for _, p := range problems {
		if p.FQN == self.FQN {
			out = append(out, FieldError{Field: p.Field, Message: p.Message})
		}
	}
	return out, nil
}

// overlappingGroupSettings are the settings of obj's kind in the groups of
// its workspace whose selectors overlap its group's: they apply to some
// namespace at the same level.
func overlappingGroupSettings(ctx context.Context, r store.Reader, obj *Object) ([]compile.Layer, error) {
	_, mine, err := parentGroup(ctx, r, obj)
	if err != nil {
		return nil, err
	}
	ws := obj.Parents[len(obj.Parents)-2]
	wsFQN := fqn(obj.Parents[:len(obj.Parents)-2], ws.Kind, ws.Name)
	groups, err := r.List(ctx, store.Query{Kind: KindGroup, Parent: wsFQN})
	if err != nil {
		return nil, err
	}
	var out []compile.Layer
	for _, g := range groups {
		theirs, err := selectorOf(g)
		if err != nil {
			return nil, err
		}
		if !overlaps(mine, theirs) {
			continue
		}
		ls, err := storedLayers(ctx, r, obj.Kind.Name, g.FQN, obj.FQN())
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

func overlaps(a, b selector.Set) bool {
	for _, p := range a {
		for _, q := range b {
			if p.Overlaps(q) {
				return true
			}
		}
	}
	return false
}

// checkRuleRefs: the organizations, tenants and workspaces that
// authorization rules name exist.
func checkRuleRefs(ctx context.Context, r store.Reader, l compile.Layer) ([]FieldError, error) {
	rules := l.Security.GetAuthorization().GetRules()
	var out []FieldError
	for _, side := range []struct {
		name  string
		rules []*pb.AuthorizationRule
	}{{"allow", rules.GetAllow()}, {"deny", rules.GetDeny()}} {
		for i, rule := range side.rules {
			for _, f := range []struct{ name, v string }{{"from", rule.GetFrom()}, {"to", rule.GetTo()}} {
				if f.v == "" || strings.Count(f.v, "/")%2 == 0 {
					continue // Validate reported it
				}
				_, err := r.Get(ctx, f.v)
				if errors.Is(err, store.ErrNotFound) {
					out = append(out, FieldError{
						Field:   fmt.Sprintf("%s.authorization.rules.%s[%d].%s", l.SecurityPath, side.name, i, f.name),
						Message: fmt.Sprintf("%s does not exist: name an existing organization, tenant or workspace", f.v),
					})
				} else if err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// checkServiceRoute: the route suits its group, and the service's
// namespace is one the group can select.
func checkServiceRoute(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	g, sel, err := parentGroup(ctx, r, obj)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	if why := suitsGroup(obj.Kind.Name, g); why != "" {
		out = append(out, FieldError{Field: "metadata.group", Message: fmt.Sprintf("%s; %s is a %s group in %s mode", why, obj.ParentFQN(), g.GetType(), g.GetConfigMode())})
	}
	svc := obj.Spec.(*pb.ServiceRouteSpec).GetService()
	if ns, _, ok := strings.Cut(svc, "/"); ok && !selectsNamespace(sel, ns) {
		out = append(out, FieldError{Field: "spec.service", Message: fmt.Sprintf("namespace %q is not selected by group %s (%v): route a service of a namespace the group selects", ns, obj.ParentFQN(), sel)})
	}
	return out, nil
}
