package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istio"
	"flotilla.io/flotilla/internal/selector"
	"flotilla.io/flotilla/internal/store"
)

// KindIngressGateway exposes services through a cluster's ingress gateway.
const KindIngressGateway = "IngressGateway"

// KindEdgeGateway spreads hostnames over the ingress gateways of several
// clusters from an edge cluster.
const KindEdgeGateway = "EdgeGateway"

// meshKinds are the kinds that live in groups and travel to clusters:
// Flotilla's IngressGateway, and Istio's own kinds for DIRECT groups.
func meshKinds() []*Kind {
	kinds := []*Kind{{
		Name: KindIngressGateway, Plural: "ingressgateways", Short: []string{"igw"}, Parent: KindGroup,
		NewSpec:   func() proto.Message { return &pb.IngressGatewaySpec{} },
		Validate:  validateIngressGateway,
		CheckRefs: checkIngressGateway,
	}, {
		Name: KindEdgeGateway, Plural: "edgegateways", Short: []string{"egw"}, Parent: KindGroup,
		NewSpec:   func() proto.Message { return &pb.EdgeGatewaySpec{} },
		Validate:  func(spec proto.Message) []FieldError { return validateCompiled(KindEdgeGateway, spec) },
		CheckRefs: checkEdgeGateway,
	}}
	for _, k := range istio.All() {
		k := k
		group, _, _ := strings.Cut(k.APIVersion, "/")
		versions := []string{k.APIVersion}
		for _, v := range []string{"v1beta1", "v1alpha3"} {
			if alt, ok := istio.Lookup(group+"/"+v, k.Kind); ok && alt.Kind == k.Kind {
				versions = append(versions, group+"/"+v)
			}
		}
		kinds = append(kinds, &Kind{
			Name: k.Kind, Plural: k.GVR.Resource, Parent: KindGroup,
			APIVersions: versions, Namespaced: true,
			NewSpec: k.New,
			ValidateIn: func(name, namespace string, spec proto.Message) []FieldError {
				return validateIstio(k, name, namespace, spec)
			},
			CheckRefs: checkDirect,
		})
	}
	return kinds
}

// validateIstio runs Istio's own validation, as istiod's admission webhook
// would in each cluster (the schema was checked when the spec was decoded).
func validateIstio(k istio.Kind, name, namespace string, spec proto.Message) []FieldError {
	b, err := protojson.Marshal(spec)
	if err != nil {
		return []FieldError{{Field: "spec", Message: err.Error()}}
	}
	var out []FieldError
	for _, e := range istio.Validate(k, name, namespace, json.RawMessage(b)) {
		out = append(out, FieldError{Field: e.Path, Message: e.Message})
	}
	return out
}

// validateIngressGateway checks a spec with the compiler itself, so apply
// time and compile time give the same verdict in the same words.
func validateIngressGateway(spec proto.Message) []FieldError {
	return validateCompiled(KindIngressGateway, spec)
}

// validateCompiled compiles a spec of a gateway kind alone and returns
// the compiler's diagnostics of its fields. Diagnostics without a field
// speak of the cluster (targets, namespaces), not of the spec.
func validateCompiled(kind string, spec proto.Message) []FieldError {
	raw, err := protojson.Marshal(spec)
	if err != nil {
		return []FieldError{{Field: "spec", Message: err.Error()}}
	}
	const owner = "validate"
	b := &bundle.Bundle{
		Cluster: "validate",
		Groups:  []bundle.Group{{FQN: "group", Type: "gateway", ConfigMode: compile.ConfigModeBridged, Namespaces: []string{"*/*"}}},
		Objects: []bundle.Object{{APIVersion: APIVersion, Kind: kind, FQN: owner, Name: "validate", Group: "group", Spec: raw}},
	}
	var out []FieldError
	for _, d := range compile.Compile(b, nil).Diagnostics {
		if d.FQN == owner && (d.Field != "" || kind == KindIngressGateway) {
			out = append(out, FieldError{Field: d.Field, Message: d.Message})
		}
	}
	return out
}

// parentGroup reads the group an object lives in.
func parentGroup(ctx context.Context, r store.Reader, obj *Object) (*pb.GroupSpec, selector.Set, error) {
	rec, err := r.Get(ctx, obj.ParentFQN())
	if err != nil {
		return nil, nil, err
	}
	return StoredGroup(rec)
}

// selectsNamespace reports whether some pattern of sel can select ns.
// systemNote says why a system namespace is never selected.
func systemNote(ns string) string {
	if !selector.System(ns) {
		return ""
	}
	return "; it is a system namespace, which belongs to no workspace (" + selector.SystemNamespaces + ")"
}

func selectsNamespace(sel selector.Set, ns string) bool {
	if selector.System(ns) {
		return false
	}
	for _, p := range sel {
		if p.Namespace.Match(ns) {
			return true
		}
	}
	return false
}

func checkIngressGateway(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	g, sel, err := parentGroup(ctx, r, obj)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	if why := suitsGroup(obj.Kind.Name, g); why != "" {
		out = append(out, FieldError{Field: "metadata.group", Message: fmt.Sprintf("%s; %s is a %s group in %s mode", why, obj.ParentFQN(), g.GetType(), g.GetConfigMode())})
	}
	ns := obj.Spec.(*pb.IngressGatewaySpec).GetWorkloadSelector().GetNamespace()
	if !selectsNamespace(sel, ns) {
		out = append(out, FieldError{Field: "spec.workloadSelector.namespace", Message: fmt.Sprintf("namespace %q is not selected by group %s (%v)%s: use a namespace the group selects", ns, obj.ParentFQN(), sel, systemNote(ns))})
	}
	return out, nil
}

func checkDirect(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	g, sel, err := parentGroup(ctx, r, obj)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	if why := suitsGroup(obj.Kind.Name, g); why != "" {
		out = append(out, FieldError{Field: "metadata.group", Message: fmt.Sprintf("%s; %s is %s: set its spec.configMode to DIRECT or use another group", why, obj.ParentFQN(), g.GetConfigMode())})
	}
	if !selectsNamespace(sel, obj.Namespace) {
		out = append(out, FieldError{Field: "metadata.namespace", Message: fmt.Sprintf("namespace %q is not selected by group %s (%v)%s: use a namespace the group selects", obj.Namespace, obj.ParentFQN(), sel, systemNote(obj.Namespace))})
	}
	// Hosts and exportTo stay inside the workspace, as the compiler will
	// hold them: refused here with the same words.
	ws, err := r.Get(ctx, workspaceOfGroup(obj.ParentFQN()))
	if err != nil {
		return nil, err
	}
	owned, err := selectorOf(ws)
	if err != nil {
		return nil, err
	}
	raw, err := protojson.Marshal(obj.Spec)
	if err != nil {
		return nil, err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, err
	}
	for _, d := range compile.Confine(obj.Kind.Name, obj.Namespace, spec, func(ns string) bool { return selectsNamespace(owned, ns) }) {
		out = append(out, FieldError{Field: d.Field, Message: d.Message})
	}
	return out, nil
}

// workspaceOfGroup is the FQN of the workspace a group FQN is in.
func workspaceOfGroup(group string) string {
	ws, _, _ := strings.Cut(group, "/groups/")
	return ws
}

// checkEdgeGateway checks an EdgeGateway against its group and its
// organization: a gateway group in BRIDGED mode selecting the gateway's
// namespace, and clusters of an explicit list that exist.
func checkEdgeGateway(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	g, sel, err := parentGroup(ctx, r, obj)
	if err != nil {
		return nil, err
	}
	var out []FieldError
	if why := suitsGroup(obj.Kind.Name, g); why != "" {
		out = append(out, FieldError{Field: "metadata.group", Message: fmt.Sprintf("%s; %s is a %s group in %s mode", why, obj.ParentFQN(), g.GetType(), g.GetConfigMode())})
	}
	spec := obj.Spec.(*pb.EdgeGatewaySpec)
	ns := spec.GetWorkloadSelector().GetNamespace()
	if !selectsNamespace(sel, ns) {
		out = append(out, FieldError{Field: "spec.workloadSelector.namespace", Message: fmt.Sprintf("namespace %q is not selected by group %s (%v)%s: use a namespace the group selects", ns, obj.ParentFQN(), sel, systemNote(ns))})
	}
	org := obj.FQN()
	if i := strings.Index(org, "/tenants/"); i >= 0 {
		org = org[:i]
	}
	for i, es := range spec.GetExternalServers() {
		for j, cw := range es.GetClusters() {
			if cw.GetName() == "" {
				continue
			}
			fqn := org + "/clusters/" + cw.GetName()
			if _, err := r.Get(ctx, fqn); errors.Is(err, store.ErrNotFound) {
				out = append(out, FieldError{Field: fmt.Sprintf("spec.externalServers[%d].clusters[%d].name", i, j),
					Message: fmt.Sprintf("cluster %q does not exist in %s: list clusters of the organization (flotilla get clusters)", cw.GetName(), org)})
			} else if err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
