package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/schema"
	"flotilla.io/flotilla/internal/store"
)

// Ref names one ancestor of an object.
type Ref struct {
	Kind *Kind
	Name string
}

// Object is a parsed, statically valid resource.
type Object struct {
	Kind        *Kind
	Name        string
	Parents     []Ref // root first
	Labels      map[string]string
	Annotations map[string]string
	// Namespace is set for namespaced kinds (raw Istio objects).
	Namespace string
	// ETag, when set, must match the stored etag for a write to succeed.
	ETag string
	Spec proto.Message
	// Force allows a change that removes live objects from clusters (a
	// group with resources whose selector narrows).
	Force bool
}

// FQN is the object's fully qualified name.
func (o *Object) FQN() string { return fqn(o.Parents, o.Kind, o.Name) }

// ParentFQN is the FQN of the object's parent; empty for a root.
func (o *Object) ParentFQN() string {
	if len(o.Parents) == 0 {
		return ""
	}
	last := len(o.Parents) - 1
	return fqn(o.Parents[:last], o.Parents[last].Kind, o.Parents[last].Name)
}

func fqn(parents []Ref, k *Kind, name string) string {
	var b strings.Builder
	for _, p := range parents {
		b.WriteString(p.Kind.Plural + "/" + p.Name + "/")
	}
	b.WriteString(k.Plural + "/" + name)
	return b.String()
}

// Violation is one problem with one resource of a request.
type Violation struct {
	Index   int
	Kind    string
	Name    string
	Field   string
	Message string
}

func (v Violation) Error() string {
	where := v.Kind
	if v.Name != "" {
		where += fmt.Sprintf(" %q", v.Name)
	}
	if v.Field != "" {
		return fmt.Sprintf("%s: %s: %s", where, v.Field, v.Message)
	}
	return fmt.Sprintf("%s: %s", where, v.Message)
}

// metadataField is the Metadata field that names an ancestor of kind k.
func metadataField(k *Kind) protoreflect.FieldDescriptor {
	return (&pb.Metadata{}).ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(strings.ToLower(k.Name)))
}

// parentFields are the Metadata fields that name ancestors, by field name.
var parentFields = []string{"organization", "tenant", "workspace", "group"}

// Parse checks res alone and returns it as an Object. index is the
// resource's position in its request, copied into violations.
func (r *Registry) Parse(index int, res *pb.Resource) (*Object, []Violation) {
	var vs []Violation
	name := res.GetMetadata().GetName()
	bad := func(kind, field, format string, args ...any) {
		vs = append(vs, Violation{Index: index, Kind: kind, Name: name, Field: field, Message: fmt.Sprintf(format, args...)})
	}
	k, ok := r.Kind(res.GetKind())
	switch {
	case ok && !k.acceptsAPIVersion(res.GetApiVersion()):
		bad(res.GetKind(), "apiVersion", "is %q; set it to %s", res.GetApiVersion(), strings.Join(apiVersionsOf(k), " or "))
	case !ok && res.GetApiVersion() == "":
		bad(res.GetKind(), "apiVersion", "is missing; set it to %q", APIVersion)
	}
	if !ok {
		if res.GetKind() == "" {
			bad("", "kind", "is missing; set it to one of %s", r.Names())
		} else if alt, ok := r.Lookup(res.GetKind()); ok {
			bad(res.GetKind(), "kind", "unknown kind %q: did you mean %q?", res.GetKind(), alt.Name)
		} else if alt, ok := schema.Closest(res.GetKind(), r.names()); ok {
			bad(res.GetKind(), "kind", "unknown kind %q: did you mean %q?", res.GetKind(), alt)
		} else {
			bad(res.GetKind(), "kind", "unknown kind %q: known kinds are %s", res.GetKind(), r.Names())
		}
		return nil, vs
	}
	md := res.GetMetadata()
	if md == nil {
		bad(k.Name, "metadata", "is missing; give at least metadata.name")
		return nil, vs
	}
	obj := &Object{Kind: k, Name: md.GetName(), Namespace: md.GetNamespace(), ETag: md.GetEtag(), Labels: md.GetLabels(), Annotations: md.GetAnnotations()}
	checkName(md.GetName(), "metadata.name", func(f, m string) { bad(k.Name, f, "%s", m) })
	switch {
	case k.Namespaced && md.GetNamespace() == "":
		bad(k.Name, "metadata.namespace", "is required: name the namespace the %s is written to in each selected cluster", k.Name)
	case k.Namespaced:
		checkName(md.GetNamespace(), "metadata.namespace", func(f, m string) { bad(k.Name, f, "%s", m) })
	case md.GetNamespace() != "":
		bad(k.Name, "metadata.namespace", "a %s has no namespace; remove this field", k.Name)
	}

	// Parents: every ancestor named, nothing else.
	mref := md.ProtoReflect()
	want := map[string]bool{}
	for _, a := range r.Ancestors(k) {
		fd := metadataField(a)
		want[string(fd.Name())] = true
		v := mref.Get(fd).String()
		if v == "" {
			bad(k.Name, "metadata."+string(fd.Name()), "is required: a %s lives in a %s; name it", k.Name, a.Name)
			continue
		}
		checkName(v, "metadata."+string(fd.Name()), func(f, m string) { bad(k.Name, f, "%s", m) })
		obj.Parents = append(obj.Parents, Ref{Kind: a, Name: v})
	}
	for _, f := range parentFields {
		if !want[f] && mref.Get(mref.Descriptor().Fields().ByName(protoreflect.Name(f))).String() != "" {
			bad(k.Name, "metadata."+f, "a %s has no %s parent; remove this field", k.Name, f)
		}
	}
	for key, val := range md.GetLabels() {
		for _, m := range validation.IsQualifiedName(key) {
			bad(k.Name, "metadata.labels."+key, "invalid key: %s", m)
		}
		for _, m := range validation.IsValidLabelValue(val) {
			bad(k.Name, "metadata.labels."+key, "invalid value %q: %s", val, m)
		}
	}
	for key := range md.GetAnnotations() {
		for _, m := range validation.IsQualifiedName(key) {
			bad(k.Name, "metadata.annotations."+key, "invalid key: %s", m)
		}
	}
	if md.GetFqn() != "" && len(vs) == 0 && md.GetFqn() != obj.FQN() {
		bad(k.Name, "metadata.fqn", "is %q but the name and parents give %q; fqn is derived: remove it or fix the parents", md.GetFqn(), obj.FQN())
	}

	// Spec: the kind's schema, then its own rules.
	var specValue any = map[string]any{}
	if res.GetSpec() != nil {
		specValue = res.GetSpec().AsMap()
	}
	obj.Spec = k.NewSpec()
	if err := schema.Decode("spec", specValue, obj.Spec); err != nil {
		var errs schema.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				bad(k.Name, e.Path, "%s", e.Message)
			}
		} else {
			bad(k.Name, "spec", "%v", err)
		}
		return nil, vs
	}
	if k.Default != nil {
		k.Default(obj.Spec)
	}
	if k.Validate != nil {
		for _, e := range k.Validate(obj.Spec) {
			bad(k.Name, e.Field, "%s", e.Message)
		}
	}
	if k.ValidateIn != nil {
		for _, e := range k.ValidateIn(obj.Name, obj.Namespace, obj.Spec) {
			bad(k.Name, e.Field, "%s", e.Message)
		}
	}
	if len(vs) > 0 {
		return nil, vs
	}
	return obj, nil
}

func apiVersionsOf(k *Kind) []string {
	if len(k.APIVersions) == 0 {
		return []string{fmt.Sprintf("%q", APIVersion)}
	}
	out := make([]string, len(k.APIVersions))
	for i, v := range k.APIVersions {
		out[i] = fmt.Sprintf("%q", v)
	}
	return out
}

func checkName(v, field string, bad func(field, msg string)) {
	for _, m := range validation.IsDNS1123Label(v) {
		bad(field, fmt.Sprintf("%q is not a valid name: %s", v, m))
	}
}

// CheckRefs checks obj against the store: its parent exists, and its kind's
// own cross-object rules hold. r must see the writes made earlier in the
// same transaction.
func (r *Registry) CheckRefs(ctx context.Context, rd store.Reader, obj *Object) ([]FieldError, error) {
	if p := obj.ParentFQN(); p != "" {
		if _, err := rd.Get(ctx, p); errors.Is(err, store.ErrNotFound) {
			last := obj.Parents[len(obj.Parents)-1]
			return []FieldError{{
				Field:   "metadata." + string(metadataField(last.Kind).Name()),
				Message: fmt.Sprintf("%s %q does not exist (%s): create it first, or apply it in the same request", last.Kind.Name, last.Name, p),
			}}, nil
		} else if err != nil {
			return nil, err
		}
	}
	if obj.Kind.CheckRefs == nil {
		return nil, nil
	}
	return obj.Kind.CheckRefs(ctx, rd, obj)
}

// SpecJSON renders a spec message as canonical JSON: JSON field names,
// sorted keys, no insignificant space.
func SpecJSON(spec proto.Message) (json.RawMessage, error) {
	b, err := protojson.Marshal(spec)
	if err != nil {
		return nil, err
	}
	return canonical(b)
}

func canonical(b []byte) (json.RawMessage, error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// Record converts obj into the store's form. The store fills etag, revision
// and times.
func (o *Object) Record() (store.Record, error) {
	spec, err := SpecJSON(o.Spec)
	if err != nil {
		return store.Record{}, fmt.Errorf("encode spec of %s: %w", o.FQN(), err)
	}
	return store.Record{
		Kind:        o.Kind.Name,
		FQN:         o.FQN(),
		Name:        o.Name,
		Parent:      o.ParentFQN(),
		Namespace:   o.Namespace,
		Labels:      maps.Clone(o.Labels),
		Annotations: maps.Clone(o.Annotations),
		Spec:        spec,
	}, nil
}

// SameContent reports whether writing a would change nothing in b.
func SameContent(a, b store.Record) bool {
	return string(a.Spec) == string(b.Spec) && a.Namespace == b.Namespace && maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations)
}

// Resource converts a stored record into its API form.
func (r *Registry) Resource(rec store.Record) (*pb.Resource, error) {
	md := &pb.Metadata{
		Name:        rec.Name,
		Namespace:   rec.Namespace,
		Labels:      rec.Labels,
		Annotations: rec.Annotations,
		Etag:        rec.ETag,
		Fqn:         rec.FQN,
		Revision:    rec.Revision,
		CreateTime:  timestamppb.New(rec.CreateTime),
		UpdateTime:  timestamppb.New(rec.UpdateTime),
	}
	mref := md.ProtoReflect()
	parts := strings.Split(rec.FQN, "/")
	for i := 0; i+3 < len(parts); i += 2 {
		k, ok := r.ByPlural(parts[i])
		if !ok {
			return nil, fmt.Errorf("stored record %s: unknown kind segment %q", rec.FQN, parts[i])
		}
		mref.Set(metadataField(k), protoreflect.ValueOfString(parts[i+1]))
	}
	apiVersion := APIVersion
	if k, ok := r.Kind(rec.Kind); ok {
		apiVersion = k.APIVersion()
	}
	res := &pb.Resource{ApiVersion: apiVersion, Kind: rec.Kind, Metadata: md}
	var err error
	if res.Spec, err = structOf(rec.Spec); err != nil {
		return nil, fmt.Errorf("stored record %s: spec: %w", rec.FQN, err)
	}
	if len(rec.Status) > 0 {
		if res.Status, err = structOf(rec.Status); err != nil {
			return nil, fmt.Errorf("stored record %s: status: %w", rec.FQN, err)
		}
	}
	return res, nil
}

func structOf(raw json.RawMessage) (*structpb.Struct, error) {
	m := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
	}
	return structpb.NewStruct(m)
}

// Target resolves what a request names: a kind by any of its names, and an
// FQN given directly or computed from a name and parents in md. Its errors
// are the caller's fault (invalid argument).
func (r *Registry) Target(kindName, fqn string, md *pb.Metadata) (*Kind, string, error) {
	k, ok := r.Lookup(kindName)
	if !ok {
		return nil, "", r.UnknownKind(kindName)
	}
	if fqn != "" {
		return k, fqn, nil
	}
	if md == nil {
		md = &pb.Metadata{}
	}
	out, err := r.FQNOf(k, md)
	return k, out, err
}

// FQNOf computes the FQN for kind k from a name and the parent names in md.
// It reports which parent is missing.
func (r *Registry) FQNOf(k *Kind, md *pb.Metadata) (string, error) {
	mref := md.ProtoReflect()
	var parents []Ref
	for _, a := range r.Ancestors(k) {
		v := mref.Get(metadataField(a)).String()
		if v == "" {
			return "", fmt.Errorf("a %s lives in a %s: name it (--%s)", k.Name, a.Name, metadataField(a).Name())
		}
		parents = append(parents, Ref{Kind: a, Name: v})
	}
	if md.GetName() == "" {
		return "", fmt.Errorf("name the %s", k.Name)
	}
	return fqn(parents, k, md.GetName()), nil
}

// SortByDepth orders objects parents first, keeping the request order among
// equals. It returns the permutation as indexes into objs.
func (r *Registry) SortByDepth(kinds []*Kind) []int {
	idx := make([]int, len(kinds))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return r.Depth(kinds[idx[a]]) < r.Depth(kinds[idx[b]]) })
	return idx
}
