package istio

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLookupMapsEveryServedVersionToTheV1Kind(t *testing.T) {
	for _, tc := range []struct {
		apiVersion, kind string
		want             string // the APIVersion returned, "" when not found
	}{
		{"networking.istio.io/v1", "VirtualService", "networking.istio.io/v1"},
		{"networking.istio.io/v1beta1", "VirtualService", "networking.istio.io/v1"},
		{"networking.istio.io/v1alpha3", "Gateway", "networking.istio.io/v1"},
		{"networking.istio.io/v1alpha3", "Sidecar", "networking.istio.io/v1"},
		{"security.istio.io/v1", "AuthorizationPolicy", "security.istio.io/v1"},
		{"security.istio.io/v1beta1", "PeerAuthentication", "security.istio.io/v1"},
		{"security.istio.io/v1alpha1", "AuthorizationPolicy", ""},
		{"networking.istio.io/v1", "EnvoyFilter", ""},
		{"security.istio.io/v1", "VirtualService", ""},
		{"", "", ""},
	} {
		k, ok := Lookup(tc.apiVersion, tc.kind)
		if ok != (tc.want != "") || k.APIVersion != tc.want {
			t.Errorf("Lookup(%q, %q) = %q, %v; want %q", tc.apiVersion, tc.kind, k.APIVersion, ok, tc.want)
		}
		if ok && k.Kind != tc.kind {
			t.Errorf("Lookup(%q, %q).Kind = %q", tc.apiVersion, tc.kind, k.Kind)
		}
	}
}

func TestAllListsTheEightKindsSortedWithTheirResources(t *testing.T) {
	var got []string
	for _, k := range All() {
		got = append(got, k.APIVersion+" "+k.Kind+" "+k.GVR.String())
		if k.GVR.GroupVersion().String() != k.APIVersion {
			t.Errorf("%s: GVR %s does not match APIVersion", k.Kind, k.GVR)
		}
		if m := k.New(); string(m.ProtoReflect().Descriptor().Name()) != k.Kind {
			t.Errorf("%s: New returns a %s", k.Kind, m.ProtoReflect().Descriptor().FullName())
		}
	}
	want := []string{
		"networking.istio.io/v1 DestinationRule networking.istio.io/v1, Resource=destinationrules",
		"networking.istio.io/v1 Gateway networking.istio.io/v1, Resource=gateways",
		"networking.istio.io/v1 ServiceEntry networking.istio.io/v1, Resource=serviceentries",
		"networking.istio.io/v1 Sidecar networking.istio.io/v1, Resource=sidecars",
		"networking.istio.io/v1 VirtualService networking.istio.io/v1, Resource=virtualservices",
		"security.istio.io/v1 AuthorizationPolicy security.istio.io/v1, Resource=authorizationpolicies",
		"security.istio.io/v1 PeerAuthentication security.istio.io/v1, Resource=peerauthentications",
		"security.istio.io/v1 RequestAuthentication security.istio.io/v1, Resource=requestauthentications",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("All() (-want +got):\n%s", diff)
	}
}

func TestAllReturnsACopyTheCallerMayChange(t *testing.T) {
	a := All()
	a[0].Kind = "Changed"
	if All()[0].Kind == "Changed" {
		t.Fatal("All shares its slice")
	}
}

func kindNamed(t *testing.T, kind string) Kind {
	t.Helper()
	for _, k := range All() {
		if k.Kind == kind {
			return k
		}
	}
	t.Fatalf("no kind %q", kind)
	return Kind{}
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

func TestValidateSpecReportsEachProblemWithItsFieldPath(t *testing.T) {
	for _, tc := range []struct {
		name, kind, spec string
		want             []FieldError
	}{
		{
			name: "a valid VirtualService passes",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"match":[{"uri":{"prefix":"/"},"port":8080}],"route":[
				{"destination":{"host":"a","port":{"number":80}},"weight":70},
				{"destination":{"host":"b"},"weight":30}]}]}`,
		},
		{
			name: "a single destination needs no weight",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"route":[{"destination":{"host":"a"}}]}]}`,
		},
		{
			name: "a wrong type is rejected by the schema",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":"x"}`,
			want: []FieldError{{Path: "spec.http", Message: "expected a list, got string"}},
		},
		{
			name: "an unknown field is rejected by the schema",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"route":[{"destination":{"hostt":"a"}}]}]}`,
			want: []FieldError{{Path: "spec.http[0].route[0].destination.hostt", Message: `unknown field "hostt"; did you mean "host"?`}},
		},
		{
			name: "weights out of range and not summing to 100",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"route":[{"destination":{"host":"a"},"weight":900},{"destination":{"host":"b"},"weight":-1}]}],
				"tcp":[{"route":[{"destination":{"host":"a"},"weight":50},{"destination":{"host":"b"},"weight":40}]}]}`,
			want: []FieldError{
				{Path: "spec.http[0].route[0].weight", Message: "weight 900 is out of range: use a weight within 0..100"},
				{Path: "spec.http[0].route[1].weight", Message: "weight -1 is out of range: use a weight within 0..100"},
				{Path: "spec.http[0].route", Message: "the weights of the 2 destinations sum to 899: they must sum to 100"},
				{Path: "spec.tcp[0].route", Message: "the weights of the 2 destinations sum to 90: they must sum to 100"},
			},
		},
		{
			name: "ports out of range in a VirtualService",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"match":[{"port":70000}],"route":[{"destination":{"host":"a","port":{"number":999999}}}]}]}`,
			want: []FieldError{
				{Path: "spec.http[0].match[0].port", Message: "port 70000 is out of range: use a port within 1..65535"},
				{Path: "spec.http[0].route[0].destination.port.number", Message: "port 999999 is out of range: use a port within 1..65535"},
			},
		},
		{
			name: "a Gateway server needs a port number",
			kind: "Gateway",
			spec: `{"servers":[{"port":{"name":"http","protocol":"HTTP"},"hosts":["*"]},{"port":{"number":80000,"name":"x","protocol":"HTTP"},"hosts":["*"]}]}`,
			want: []FieldError{
				{Path: "spec.servers[0].port.number", Message: "a port number is required, within 1..65535"},
				{Path: "spec.servers[1].port.number", Message: "port 80000 is out of range: use a port within 1..65535"},
			},
		},
		{
			name: "ServiceEntry ports",
			kind: "ServiceEntry",
			spec: `{"hosts":["x.example.com"],"ports":[{"number":443,"name":"https","protocol":"TLS","targetPort":65536}]}`,
			want: []FieldError{{Path: "spec.ports[0].targetPort", Message: "port 65536 is out of range: use a port within 1..65535"}},
		},
		{
			name: "PeerAuthentication port-level keys",
			kind: "PeerAuthentication",
			spec: `{"portLevelMtls":{"8080":{"mode":"DISABLE"},"70000":{"mode":"STRICT"}}}`,
			want: []FieldError{{Path: `spec.portLevelMtls["70000"]`, Message: "port 70000 is out of range: use a port within 1..65535"}},
		},
		{
			name: "a valid AuthorizationPolicy passes",
			kind: "AuthorizationPolicy",
			spec: `{"action":"ALLOW","rules":[{"from":[{"source":{"principals":["cluster.local/ns/a/sa/b"]}}],"to":[{"operation":{"methods":["GET"],"ports":["8080"]}}]}]}`,
		},
		{
			name: "an AuthorizationPolicy with a bad enum",
			kind: "AuthorizationPolicy",
			spec: `{"action":"PERMIT"}`,
			want: []FieldError{{Path: "spec.action", Message: `unknown value "PERMIT" for enum istio.security.v1beta1.AuthorizationPolicy.Action (allowed: ALLOW, AUDIT, CUSTOM, DENY)`}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := kindNamed(t, tc.kind)
			got := ValidateSpec(k, decodeJSON(t, tc.spec))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ValidateSpec (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateSpecAcceptsRawJSON(t *testing.T) {
	k := kindNamed(t, "PeerAuthentication")
	if errs := ValidateSpec(k, json.RawMessage(`{"mtls":{"mode":"STRICT"}}`)); errs != nil {
		t.Errorf("valid raw spec: %v", errs)
	}
	if errs := ValidateSpec(k, json.RawMessage(`{"mtls":`)); len(errs) != 1 || errs[0].Path != "spec" {
		t.Errorf("broken raw spec: got %v, want one error at spec", errs)
	}
}

func TestValidateSpecOfTheZeroKindIsAnErrorNotAPanic(t *testing.T) {
	if errs := ValidateSpec(Kind{}, map[string]any{}); len(errs) != 1 {
		t.Errorf("got %v, want one error", errs)
	}
}
