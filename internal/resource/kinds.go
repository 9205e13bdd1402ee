package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/addrrange"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// Kind names of the built-in kinds.
const (
	KindOrganization = "Organization"
	KindTenant       = "Tenant"
	KindWorkspace    = "Workspace"
	KindGroup        = "Group"
	KindCluster      = "Cluster"
)

// Group types and config modes.
var (
	GroupTypes  = []string{"traffic", "security", "gateway"}
	ConfigModes = []string{"BRIDGED", "DIRECT"}
)

// Builtin returns a registry of the kinds this release knows, plus extra.
func Builtin(extra ...*Kind) *Registry {
	kinds := []*Kind{
		{Name: KindOrganization, Plural: "organizations", Short: []string{"org", "orgs"},
			NewSpec: func() proto.Message { return &pb.OrganizationSpec{} }},
		{Name: KindTenant, Plural: "tenants", Short: []string{"tn"}, Parent: KindOrganization,
			NewSpec: func() proto.Message { return &pb.TenantSpec{} }},
		{Name: KindWorkspace, Plural: "workspaces", Short: []string{"ws"}, Parent: KindTenant,
			NewSpec:   func() proto.Message { return &pb.WorkspaceSpec{} },
			Validate:  validateWorkspace,
			CheckRefs: checkWorkspace},
		{Name: KindGroup, Plural: "groups", Short: []string{"grp"}, Parent: KindWorkspace,
			NewSpec:   func() proto.Message { return &pb.GroupSpec{} },
			Default:   defaultGroup,
			Validate:  validateGroup,
			CheckRefs: checkGroup},
		{Name: KindCluster, Plural: "clusters", Short: []string{"cl"}, Parent: KindOrganization,
			NewSpec:  func() proto.Message { return &pb.ClusterSpec{} },
			Validate: validateCluster},
	}
	var reg *Registry
	kinds = append(kinds, iamKinds(func(name string) bool { _, ok := reg.Kind(name); return ok })...)
	kinds = append(kinds, meshKinds()...)
	kinds = append(kinds, settingKinds()...)
	kinds = append(kinds, dnsKinds()...)
	kinds = append(kinds, istioKinds()...)
	reg = NewRegistry(append(kinds, extra...)...)
	return reg
}

func validateSelector(field string, sel *pb.NamespaceSelector) []FieldError {
	if len(sel.GetNames()) == 0 {
		return []FieldError{{Field: field + ".names", Message: `is required: list at least one "<cluster>/<namespace>" pattern, e.g. "*/payments"`}}
	}
	var out []FieldError
	for i, n := range sel.GetNames() {
		p, err := selector.Parse(n)
		switch {
		case err != nil:
			out = append(out, FieldError{Field: fmt.Sprintf("%s.names[%d]", field, i), Message: err.Error()})
		case p.OnlySystem():
			out = append(out, FieldError{Field: fmt.Sprintf("%s.names[%d]", field, i), Message: fmt.Sprintf("%q selects a system namespace, which belongs to no workspace (%s: a policy there can reach every tenant): select the namespaces your workloads run in", n, selector.SystemNamespaces)})
		}
	}
	return out
}

func validateWorkspace(spec proto.Message) []FieldError {
	return validateSelector("spec.namespaceSelector", spec.(*pb.WorkspaceSpec).GetNamespaceSelector())
}

func defaultGroup(spec proto.Message) {
	g := spec.(*pb.GroupSpec)
	if g.ConfigMode == "" {
		g.ConfigMode = "BRIDGED"
	}
}

func oneOf(field, v string, allowed []string) []FieldError {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	if v == "" {
		return []FieldError{{Field: field, Message: "is required: one of " + strings.Join(allowed, ", ")}}
	}
	return []FieldError{{Field: field, Message: fmt.Sprintf("%q is not one of %s", v, strings.Join(allowed, ", "))}}
}

func validateGroup(spec proto.Message) []FieldError {
	g := spec.(*pb.GroupSpec)
	out := validateSelector("spec.namespaceSelector", g.GetNamespaceSelector())
	out = append(out, oneOf("spec.type", g.GetType(), GroupTypes)...)
	return append(out, oneOf("spec.configMode", g.GetConfigMode(), ConfigModes)...)
}

func validateCluster(spec proto.Message) []FieldError {
	c := spec.(*pb.ClusterSpec)
	out := validateLabels("spec.labels", c.GetLabels())
	for _, f := range []struct{ name, v string }{{"network", c.GetNetwork()}, {"region", c.GetRegion()}, {"zone", c.GetZone()}} {
		if f.v == "" {
			continue
		}
		for _, m := range validation.IsValidLabelValue(f.v) {
			out = append(out, FieldError{Field: "spec." + f.name, Message: fmt.Sprintf("%q: %s", f.v, m)})
		}
	}
	if _, err := addrrange.Parse(c.GetAddressRanges()); err != nil {
		out = append(out, FieldError{Field: "spec.addressRanges", Message: err.Error()})
	}
	if td := c.GetTrustDomain(); td != "" {
		for _, m := range validation.IsDNS1123Subdomain(td) {
			out = append(out, FieldError{Field: "spec.trustDomain", Message: fmt.Sprintf("%q: %s", td, m)})
		}
	}
	return out
}

// selectorOf decodes the namespace selector of a stored workspace or group
// (both keep it at spec.namespaceSelector).
func selectorOf(rec store.Record) (selector.Set, error) {
	var spec struct {
		NamespaceSelector struct {
			Names []string `json:"names"`
		} `json:"namespaceSelector"`
	}
	if err := json.Unmarshal(rec.Spec, &spec); err != nil {
		return nil, fmt.Errorf("stored %s: %w", rec.FQN, err)
	}
	return selector.ParseSet(spec.NamespaceSelector.Names)
}

// StoredGroup decodes a stored Group's spec and parses its selector.
func StoredGroup(rec store.Record) (*pb.GroupSpec, selector.Set, error) {
	spec := &pb.GroupSpec{}
	if err := protojson.Unmarshal(rec.Spec, spec); err != nil {
		return nil, nil, fmt.Errorf("stored %s: %w", rec.FQN, err)
	}
	sel, err := selector.ParseSet(spec.GetNamespaceSelector().GetNames())
	if err != nil {
		return nil, nil, fmt.Errorf("stored %s: %w", rec.FQN, err)
	}
	return spec, sel, nil
}

// checkWorkspace: no namespace is owned by two workspaces of an
// organization, and the workspace's groups stay inside its new selector.
func checkWorkspace(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	mine, err := selector.ParseSet(obj.Spec.(*pb.WorkspaceSpec).GetNamespaceSelector().GetNames())
	if err != nil {
		return nil, err // Validate already rejected it
	}
	org := fqn(nil, obj.Parents[0].Kind, obj.Parents[0].Name)
	others, err := r.List(ctx, store.Query{Kind: KindWorkspace, Ancestor: org})
	if err != nil {
		return nil, err
	}
	var out []FieldError
	for _, other := range others {
		if other.FQN == obj.FQN() {
			continue
		}
		theirs, err := selectorOf(other)
		if err != nil {
			return nil, err
		}
		for i, p := range mine {
			for _, q := range theirs {
				if p.Overlaps(q) {
					// Another tenant's workspace is not named: its
					// patterns and name are not this writer's to learn.
					theirs := fmt.Sprintf("%q of workspace %s", q, other.FQN)
					if tenantOf(other.FQN) != tenantOf(obj.FQN()) {
						theirs = "a namespace pattern of another tenant's workspace"
					}
					out = append(out, FieldError{
						Field:   fmt.Sprintf("spec.namespaceSelector.names[%d]", i),
						Message: fmt.Sprintf("%q overlaps %s: a namespace belongs to at most one workspace; narrow yours, or ask the organization's administrators", p, theirs),
					})
				}
			}
		}
	}
	groups, err := r.List(ctx, store.Query{Kind: KindGroup, Parent: obj.FQN()})
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		theirs, err := selectorOf(g)
		if err != nil {
			return nil, err
		}
		for _, q := range theirs {
			if !mine.Covers(q) {
				out = append(out, FieldError{
					Field:   "spec.namespaceSelector.names",
					Message: fmt.Sprintf("no longer covers %q of group %s: keep it covered, or narrow the group first", q, g.FQN),
				})
			}
		}
	}
	return out, nil
}

// tenantOf is the FQN of the tenant fqn is in ("" for none).
func tenantOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 5)
	if len(parts) < 4 || parts[2] != "tenants" {
		return ""
	}
	return strings.Join(parts[:4], "/")
}

// checkGroup: the group's selector stays inside its workspace's.
func checkGroup(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	ws, err := r.Get(ctx, obj.ParentFQN())
	if err != nil {
		return nil, err
	}
	outer, err := selectorOf(ws)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	spec := obj.Spec.(*pb.GroupSpec)
	for i, n := range spec.GetNamespaceSelector().GetNames() {
		p, err := selector.Parse(n)
		if err != nil {
			return nil, err // Validate already rejected it
		}
		if !outer.Covers(p) {
			out = append(out, FieldError{
				Field:   fmt.Sprintf("spec.namespaceSelector.names[%d]", i),
				Message: fmt.Sprintf("%q is outside workspace %s, which selects %v: narrow it to namespaces the workspace selects", n, ws.FQN, outer),
			})
		}
	}
	changes, err := checkGroupChange(ctx, r, obj, spec)
	return append(out, changes...), err
}

// checkGroupChange guards the resources of an existing group: a new type
// or mode must still suit every one of them, and a selector that narrows
// removes their objects from the namespaces it no longer selects, so it
// needs Force (plan shows what would go).
func checkGroupChange(ctx context.Context, r store.Reader, obj *Object, spec *pb.GroupSpec) ([]FieldError, error) {
	old, err := r.Get(ctx, obj.FQN())
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	children, err := r.List(ctx, store.Query{Parent: old.FQN})
	if err != nil || len(children) == 0 {
		return nil, err
	}
	oldSpec, oldSel, err := StoredGroup(old)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	if spec.GetType() != oldSpec.GetType() || spec.GetConfigMode() != oldSpec.GetConfigMode() {
		var misfits []string
		for _, c := range children {
			if suitsGroup(c.Kind, spec) != "" {
				misfits = append(misfits, c.Kind+" "+c.Name)
			}
		}
		if len(misfits) > 0 {
			out = append(out, FieldError{Field: "spec.configMode", Message: fmt.Sprintf("a %s group in %s mode cannot hold %d of its resources (%s): delete or move them first, or keep type %s and mode %s",
				spec.GetType(), spec.GetConfigMode(), len(misfits), strings.Join(misfits[:min(3, len(misfits))], ", "), oldSpec.GetType(), oldSpec.GetConfigMode())})
		}
	}
	if !obj.Force {
		newSel, err := selector.ParseSet(spec.GetNamespaceSelector().GetNames())
		if err != nil {
			return nil, err
		}
		var lost []string
		for _, p := range oldSel {
			if !newSel.Covers(p) {
				lost = append(lost, p.String())
			}
		}
		if len(lost) > 0 {
			out = append(out, FieldError{Field: "spec.namespaceSelector.names", Message: fmt.Sprintf("no longer selects %s, where its %d resource(s) have live objects that would be deleted: run `flotilla plan` to see them, then apply with --force",
				strings.Join(lost, ", "), len(children))})
		}
	}
	return out, nil
}

// suitsGroup says why a resource of kind cannot live in a group of spec,
// or "" when it can.
func suitsGroup(kind string, spec *pb.GroupSpec) string {
	bridged := map[string]string{KindIngressGateway: "gateway", KindEdgeGateway: "gateway", KindTrafficSetting: "traffic", KindServiceRoute: "traffic", KindSecuritySetting: "security"}
	if want, ok := bridged[kind]; ok {
		if spec.GetType() != want || spec.GetConfigMode() == "DIRECT" {
			return fmt.Sprintf("a%s %s lives in a %s group in BRIDGED mode", map[bool]string{true: "n"}[kind == KindIngressGateway || kind == KindEdgeGateway], kind, want)
		}
		return ""
	}
	if spec.GetConfigMode() != "DIRECT" {
		return "a raw Istio " + kind + " lives in a DIRECT group"
	}
	return ""
}

// StoredWorkspaceSelector decodes a stored Workspace's namespace selector.
func StoredWorkspaceSelector(rec store.Record) (selector.Set, error) { return selectorOf(rec) }
