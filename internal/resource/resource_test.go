package resource

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

func TestKindsAreFoundByNamePluralAndShortNameInAnyCase(t *testing.T) {
	reg := Builtin()
	for name, want := range map[string]string{
		"Workspace": "Workspace", "workspaces": "Workspace", "WS": "Workspace",
		"org": "Organization", "clusters": "Cluster", "grp": "Group", "tn": "Tenant",
	} {
		k, ok := reg.Lookup(name)
		if !ok || k.Name != want {
			t.Errorf("Lookup(%q) = %v, %v; want %s", name, k, ok, want)
		}
	}
	if _, ok := reg.Lookup("widget"); ok {
		t.Error("an unknown kind was found")
	}
}

func TestRegistryRefusesADuplicateName(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("registering two kinds with one short name did not panic")
		}
	}()
	Builtin(&Kind{Name: "Widget", Plural: "widgets", Short: []string{"ws"}})
}

func TestParseDerivesFQNAndParentsAndAppliesDefaults(t *testing.T) {
	reg := Builtin()
	spec, _ := structpb.NewStruct(map[string]any{"type": "traffic", "namespaceSelector": map[string]any{"names": []any{"*/a"}}})
	obj, vs := reg.Parse(0, &pb.Resource{ApiVersion: APIVersion, Kind: "Group", Metadata: &pb.Metadata{Name: "g", Organization: "o", Tenant: "t", Workspace: "w"}, Spec: spec})
	if len(vs) > 0 {
		t.Fatal(vs)
	}
	if obj.FQN() != "organizations/o/tenants/t/workspaces/w/groups/g" || obj.ParentFQN() != "organizations/o/tenants/t/workspaces/w" {
		t.Fatalf("fqn %s parent %s", obj.FQN(), obj.ParentFQN())
	}
	if obj.Spec.(*pb.GroupSpec).GetConfigMode() != "BRIDGED" {
		t.Fatal("configMode did not default to BRIDGED")
	}
	rec, err := obj.Record()
	if err != nil {
		t.Fatal(err)
	}
	back, err := reg.Resource(rec)
	if err != nil {
		t.Fatal(err)
	}
	md := back.GetMetadata()
	if md.GetOrganization() != "o" || md.GetTenant() != "t" || md.GetWorkspace() != "w" || md.GetGroup() != "" {
		t.Fatalf("parents not recovered from the FQN: %v", md)
	}
}

func TestParseReportsEveryProblemWithItsField(t *testing.T) {
	reg := Builtin()
	cases := []struct {
		name  string
		res   *pb.Resource
		field string
		says  string
	}{
		{"wrong apiVersion", &pb.Resource{ApiVersion: "v1", Kind: "Organization", Metadata: &pb.Metadata{Name: "o"}}, "apiVersion", `set it to "flotilla.io/v1alpha1"`},
		{"missing kind", &pb.Resource{ApiVersion: APIVersion}, "kind", "is missing"},
		{"missing metadata", &pb.Resource{ApiVersion: APIVersion, Kind: "Organization"}, "metadata", "is missing"},
		{"missing parent name", &pb.Resource{ApiVersion: APIVersion, Kind: "Tenant", Metadata: &pb.Metadata{Name: "t"}}, "metadata.organization", "is required"},
		{"extra parent name", &pb.Resource{ApiVersion: APIVersion, Kind: "Cluster", Metadata: &pb.Metadata{Name: "c", Organization: "o", Tenant: "t"}}, "metadata.tenant", "remove this field"},
		{"bad label", &pb.Resource{ApiVersion: APIVersion, Kind: "Organization", Metadata: &pb.Metadata{Name: "o", Labels: map[string]string{"a b": "x"}}}, "metadata.labels.a b", "invalid key"},
		{"fqn that disagrees", &pb.Resource{ApiVersion: APIVersion, Kind: "Organization", Metadata: &pb.Metadata{Name: "o", Fqn: "organizations/p"}}, "metadata.fqn", "derived"},
		{"workspace without selector", &pb.Resource{ApiVersion: APIVersion, Kind: "Workspace", Metadata: &pb.Metadata{Name: "w", Organization: "o", Tenant: "t"}}, "spec.namespaceSelector.names", "is required"},
		{"bad trust domain", &pb.Resource{ApiVersion: APIVersion, Kind: "Cluster", Metadata: &pb.Metadata{Name: "c", Organization: "o"}, Spec: mustStruct(map[string]any{"trustDomain": "Not_Valid"})}, "spec.trustDomain", "Not_Valid"},
		{"bad address range", &pb.Resource{ApiVersion: APIVersion, Kind: "Cluster", Metadata: &pb.Metadata{Name: "c", Organization: "o"}, Spec: mustStruct(map[string]any{"addressRanges": []any{"10.0.0.0/8", "10.1.2.3/16"}})}, "spec.addressRanges", "[1]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj, vs := reg.Parse(3, c.res)
			if obj != nil {
				t.Fatal("an invalid resource parsed")
			}
			for _, v := range vs {
				if v.Index == 3 && v.Field == c.field && strings.Contains(v.Message, c.says) {
					return
				}
			}
			t.Fatalf("no violation of %s saying %q in %v", c.field, c.says, vs)
		})
	}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}
