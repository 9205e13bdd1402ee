package compile

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/selector"
)

// The settings pass: settings objects are collected while the objects are
// compiled, then merged per namespace (Merge) and emitted per namespace
// (security.go, traffic.go). Scope groups carry the organization, tenant and
// workspace settings; a namespace belongs to the workspace whose scope group
// selects it.

// settingObject is a decoded, valid settings object.
type settingObject struct {
	layer Layer
	group string       // FQN of the group it sits in
	sel   selector.Set // that group's selector (real groups only)
}

// scope is a scope group of the bundle.
type scope struct {
	group bundle.Group
	sel   selector.Set
}

// namespaceSettings is a namespace's merged settings.
type namespaceSettings struct {
	workspace string
	fields    map[string]Setting
	problems  []Problem
}

// setting collects a settings object of group g.
func (c *compilation) setting(o bundle.Object, g bundle.Group, sel selector.Set) {
	want := map[string]string{
		KindOrganizationSetting: GroupTypeOrganization, KindTenantSetting: GroupTypeTenant,
		KindWorkspaceSetting: GroupTypeWorkspace, KindTrafficSetting: "traffic", KindSecuritySetting: "security",
	}[o.Kind]
	if g.Type != want {
		c.diag(o.FQN, "group", "a %s belongs in a %s group, and %s is a %s group", o.Kind, want, g.FQN, g.Type)
		return
	}
	l := Layer{FQN: o.FQN, Scope: g.FQN, Level: LevelGroup, TrafficPath: "spec.defaultTrafficSetting", SecurityPath: "spec.defaultSecuritySetting"}
	switch o.Kind {
	case KindOrganizationSetting:
		s, ok := decodeCached(c, o, func() *pb.OrganizationSettingSpec { return &pb.OrganizationSettingSpec{} })
		if !ok {
			return
		}
		l.Level, l.Traffic, l.Security = LevelOrganization, s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case KindTenantSetting:
		s, ok := decodeCached(c, o, func() *pb.TenantSettingSpec { return &pb.TenantSettingSpec{} })
		if !ok {
			return
		}
		l.Level, l.Traffic, l.Security = LevelTenant, s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case KindWorkspaceSetting:
		s, ok := decodeCached(c, o, func() *pb.WorkspaceSettingSpec { return &pb.WorkspaceSettingSpec{} })
		if !ok {
			return
		}
		l.Level, l.Traffic, l.Security = LevelWorkspace, s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting()
	case KindTrafficSetting:
		s, ok := decodeCached(c, o, func() *pb.TrafficSettingSpec { return &pb.TrafficSettingSpec{} })
		if !ok {
			return
		}
		l.Traffic, l.TrafficPath = s, "spec"
	case KindSecuritySetting:
		s, ok := decodeCached(c, o, func() *pb.SecuritySettingSpec { return &pb.SecuritySettingSpec{} })
		if !ok {
			return
		}
		l.Security, l.SecurityPath = s, "spec"
	}
	if l.Traffic == nil && l.Security == nil {
		return // e.g. a WorkspaceSetting for east-west exposure only
	}
	var probs []FieldProblem
	if l.Traffic != nil {
		probs = append(probs, ValidateTrafficSetting(l.TrafficPath, l.Traffic, l.Level == LevelGroup)...)
	}
	if l.Security != nil {
		probs = append(probs, ValidateSecuritySetting(l.SecurityPath, l.Security, l.Level == LevelGroup)...)
	}
	for _, p := range probs {
		c.diag(o.FQN, p.Field, "%s", p.Message)
	}
	if len(probs) == 0 {
		c.settingObjs[g.FQN] = append(c.settingObjs[g.FQN], settingObject{layer: l, group: g.FQN, sel: sel})
	}
}

// scopeOf splits a workspace FQN into its organization's and tenant's.
func scopeOf(workspace string) (org, tenant string) {
	parts := strings.SplitN(workspace, "/", 5)
	if len(parts) < 4 {
		return workspace, ""
	}
	return parts[0] + "/" + parts[1], strings.Join(parts[:4], "/")
}

// workspaceOf is the workspace FQN of a group FQN.
func workspaceOf(group string) string {
	if i := strings.Index(group, "/groups/"); i >= 0 {
		return group[:i]
	}
	return ""
}

// settingsFor merges the settings of namespace ns (cached).
func (c *compilation) settingsFor(ns string) *namespaceSettings {
	if s, ok := c.nsSettings[ns]; ok {
		return s
	}
	s := c.merge(ns)
	c.nsSettings[ns] = s
	return s
}

func (c *compilation) merge(ns string) *namespaceSettings {
	ws := ""
	for _, sc := range c.workspaces {
		if sc.sel.Match(c.cluster, ns) {
			ws = sc.group.FQN
			break
		}
	}
	var groupLayers []settingObject
	for _, g := range c.settingGroups {
		for _, so := range c.settingObjs[g] {
			if so.sel.Match(c.cluster, ns) && (ws == "" || workspaceOf(g) == ws) {
				if ws == "" {
					ws = workspaceOf(g)
				}
				groupLayers = append(groupLayers, so)
			}
		}
	}
	if ws == "" {
		return nil
	}
	org, tenant := scopeOf(ws)
	var layers []Layer
	for _, scopeFQN := range []string{org, tenant, ws} {
		for _, so := range c.settingObjs[scopeFQN] {
			layers = append(layers, so.layer)
		}
	}
	for _, so := range groupLayers {
		if workspaceOf(so.group) == ws {
			layers = append(layers, so.layer)
		}
	}
	if len(layers) == 0 {
		return &namespaceSettings{workspace: ws}
	}
	fields, probs := Merge(layers)
	return &namespaceSettings{workspace: ws, fields: fields, problems: probs}
}

// prepareSettings sorts what setting() collected, once every object is seen,
// and notes the namespace-wide policies DIRECT objects already write.
func (c *compilation) prepareSettings() {
	c.directWide = map[string]string{}
	for _, e := range c.out {
		if k := namespaceWideKey(e.obj.GetKind(), e.obj.GetNamespace(), e.obj.Object["spec"]); k != "" {
			if _, seen := c.directWide[k]; !seen {
				c.directWide[k] = e.owner
			}
		}
	}
	for g, objs := range c.settingObjs {
		slices.SortFunc(objs, func(a, b settingObject) int { return cmp.Compare(a.layer.FQN, b.layer.FQN) })
		if gr, ok := c.groups[g]; ok && !isScopeType(gr.Type) {
			c.settingGroups = append(c.settingGroups, g)
		}
	}
	slices.Sort(c.settingGroups)
	for _, g := range c.groups {
		if g.Type != GroupTypeWorkspace {
			continue
		}
		sel, err := selector.ParseSet(g.Namespaces)
		if err != nil {
			continue // reported by object() for its objects
		}
		c.workspaces = append(c.workspaces, scope{group: g, sel: sel})
	}
	slices.SortFunc(c.workspaces, func(a, b scope) int { return cmp.Compare(a.group.FQN, b.group.FQN) })
	c.trustDomains = []string{"cluster.local"}
	for _, g := range c.groups {
		if g.Type == GroupTypeOrganization && len(g.TrustDomains) > 0 {
			c.trustDomains = g.TrustDomains
		}
	}
}

// namespaceWideKey is "<Kind>/<namespace>" for a PeerAuthentication or
// Sidecar that applies to its whole namespace (no selector), else "".
func namespaceWideKey(kind, ns string, spec any) string {
	field := map[string]string{"PeerAuthentication": "selector", "Sidecar": "workloadSelector"}[kind]
	if field == "" {
		return ""
	}
	if m, ok := spec.(map[string]any); ok && m[field] != nil {
		return ""
	}
	return kind + "/" + ns
}

// wideTaken says why the settings pass writes no namespace-wide kind in ns
// for owner (a DIRECT object or the cluster's own one is there: it wins),
// or "" when it may.
func (c *compilation) wideTaken(kind, ns string) string {
	key := kind + "/" + ns
	if fqn, ok := c.directWide[key]; ok {
		return fmt.Sprintf("the DIRECT %s of %s already applies to all of namespace %s, and Istio takes one: it is kept and this setting's is not written there; move the setting into one of them", kind, fqn, ns)
	}
	if name, ok := c.userWide[key]; ok {
		return fmt.Sprintf("cluster %s has its own %s %s for all of namespace %s, and Istio takes one: it is kept and this setting's is not written there; remove it to let the setting apply", c.cluster, kind, name, ns)
	}
	return ""
}

func isScopeType(t string) bool {
	return t == GroupTypeOrganization || t == GroupTypeTenant || t == GroupTypeWorkspace
}

// settingsPass emits every namespace's traffic and security objects.
func (c *compilation) settingsPass() {
	if len(c.settingObjs) == 0 {
		return
	}
	for _, ns := range c.sortedNamespaces() {
		s := c.settingsFor(ns)
		if s == nil {
			continue
		}
		for _, p := range s.problems {
			c.diag(p.FQN, p.Field, "%s", p.Message)
		}
		c.securityObjects(ns, s)
		c.trafficObjects(ns, s)
	}
}

func (c *compilation) sortedNamespaces() []string {
	if c.nsSorted == nil {
		c.nsSorted = sortedKeys(c.namespaces)
	}
	return c.nsSorted
}

// EffectiveSettings is what is in effect in one namespace of one cluster.
type EffectiveSettings struct {
	// Workspace is the FQN of the namespace's workspace; "" when none
	// selects it.
	Workspace string
	// Settings are sorted by field.
	Settings []Setting
	// Problems are settings that do not take effect there, and why.
	Problems []Problem
}

// Effective returns the settings in effect in namespace ns of the bundle's
// cluster, compiled as if ns existed there.
func Effective(b *bundle.Bundle, in Cluster, ns string) EffectiveSettings {
	if b == nil {
		return EffectiveSettings{}
	}
	in.Namespaces = append(slices.Clone(in.Namespaces), ns)
	c := newCompilation(b, in)
	for _, o := range c.objects {
		if isSettingKind(o.Kind) {
			c.object(o)
		}
	}
	c.prepareSettings()
	s := c.merge(ns)
	if s == nil {
		return EffectiveSettings{}
	}
	out := EffectiveSettings{Workspace: s.workspace, Problems: s.problems}
	for _, f := range sortedKeys(s.fields) {
		out.Settings = append(out.Settings, s.fields[f])
	}
	return out
}

func isSettingKind(kind string) bool {
	switch kind {
	case KindOrganizationSetting, KindTenantSetting, KindWorkspaceSetting, KindTrafficSetting, KindSecuritySetting:
		return true
	}
	return false
}
