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

func TestAllListsTheKindsSortedWithTheirResources(t *testing.T) {
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
		"networking.istio.io/v1 WorkloadEntry networking.istio.io/v1, Resource=workloadentries",
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

func TestValidateReportsIstiosOwnErrorsAtTheirFields(t *testing.T) {
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
			name: "weights need not sum to 100: Istio normalizes them",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"tcp":[{"route":[{"destination":{"host":"a"},"weight":50},{"destination":{"host":"b"},"weight":40}]}]}`,
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
			name: "an invalid regex and negative retry attempts",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"match":[{"uri":{"regex":"(["}}],"retries":{"attempts":-1},"route":[{"destination":{"host":"a"}}]}]}`,
			want: []FieldError{
				{Path: "spec.http[0].match[0].uri.regex", Message: "\"uri\": error parsing regexp: missing closing ]: `[`; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"},
				{Path: "spec.http[0].retries.attempts", Message: "attempts cannot be negative"},
			},
		},
		{
			name: "an invalid hostname, and weights that are all zero",
			kind: "VirtualService",
			spec: `{"hosts":["a..b"],"http":[{"route":[{"destination":{"host":"a"},"weight":0},{"destination":{"host":"b"},"weight":0}]}]}`,
			want: []FieldError{
				{Path: "spec.hosts[0]", Message: `domain name ".b" invalid (label "" invalid)`},
				{Path: "spec.http[0].route", Message: "total destination weight = 0"},
			},
		},
		{
			name: "ports out of range in a VirtualService, twice the same message",
			kind: "VirtualService",
			spec: `{"hosts":["a"],"http":[{"match":[{"port":999999}],"route":[{"destination":{"host":"a","port":{"number":999999}}}]}]}`,
			want: []FieldError{
				{Path: "spec.http[0].match[0].port", Message: "port number 999999 must be in the range 1..65535"},
				{Path: "spec.http[0].route[0].destination.port.number", Message: "port number 999999 must be in the range 1..65535"},
			},
		},
		{
			name: "a Gateway server needs a port number",
			kind: "Gateway",
			spec: `{"servers":[{"port":{"name":"http","protocol":"HTTP"},"hosts":["*"]},{"port":{"number":80000,"name":"x","protocol":"HTTP"},"hosts":["*"]}]}`,
			want: []FieldError{
				{Path: "spec.servers[0].port", Message: "port number 0 must be in the range 1..65535"},
				{Path: "spec.servers[1].port.number", Message: "port number 80000 must be in the range 1..65535"},
			},
		},
		{
			name: "ServiceEntry target port",
			kind: "ServiceEntry",
			spec: `{"hosts":["x.example.com"],"ports":[{"number":443,"name":"https","protocol":"TLS","targetPort":65536}]}`,
			want: []FieldError{{Path: "spec.ports[0].targetPort", Message: "port number 65536 must be in the range 1..65535"}},
		},
		{
			name: "PeerAuthentication port-level keys, and port-level mTLS without a selector",
			kind: "PeerAuthentication",
			spec: `{"portLevelMtls":{"8080":{"mode":"DISABLE"},"70000":{"mode":"STRICT"}}}`,
			want: []FieldError{
				{Path: "spec.portLevelMtls", Message: "mesh/namespace peer authentication cannot have port level mTLS"},
				{Path: `spec.portLevelMtls["70000"]`, Message: "port must be in range 1..65535"},
			},
		},
		{
			name: "a DestinationRule with a negative connection limit",
			kind: "DestinationRule",
			spec: `{"host":"a","trafficPolicy":{"connectionPool":{"tcp":{"maxConnections":-1}}}}`,
			want: []FieldError{{Path: "spec.trafficPolicy.connectionPool.tcp.maxConnections", Message: "max connections must be non-negative"}},
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
			got := Validate(k, "x", "default", decodeJSON(t, tc.spec))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateReadsTheObjectsNamespace(t *testing.T) {
	// Istio's rule: exportTo may not name the object's own namespace twice,
	// once as "." and once by name. The same spec is fine elsewhere.
	k := kindNamed(t, "VirtualService")
	spec := `{"hosts":["a"],"exportTo":[".","payments"],"tcp":[{"route":[{"destination":{"host":"a"}}]}]}`
	if errs := Validate(k, "x", "shop", decodeJSON(t, spec)); errs != nil {
		t.Fatalf("in namespace shop: %v", errs)
	}
	want := []FieldError{{Path: "spec.exportTo", Message: "duplicate entries in exportTo for entry payments"}}
	if diff := cmp.Diff(want, Validate(k, "x", "payments", decodeJSON(t, spec))); diff != "" {
		t.Fatalf("in namespace payments (-want +got):\n%s", diff)
	}
}

func TestValidateAcceptsRawJSON(t *testing.T) {
	k := kindNamed(t, "PeerAuthentication")
	if errs := Validate(k, "x", "default", json.RawMessage(`{"mtls":{"mode":"STRICT"}}`)); errs != nil {
		t.Errorf("valid raw spec: %v", errs)
	}
	if errs := Validate(k, "x", "default", json.RawMessage(`{"mtls":`)); len(errs) != 1 || errs[0].Path != "spec" {
		t.Errorf("broken raw spec: got %v, want one error at spec", errs)
	}
}

func TestValidateOfTheZeroKindIsAnErrorNotAPanic(t *testing.T) {
	if errs := Validate(Kind{}, "x", "default", map[string]any{}); len(errs) != 1 {
		t.Errorf("got %v, want one error", errs)
	}
}

func TestLocatingIsBoundedForHugeSpecs(t *testing.T) {
	k := kindNamed(t, "VirtualService")
	var hosts []any
	for range 3000 {
		hosts = append(hosts, "a..b")
	}
	errs := Validate(k, "x", "default", map[string]any{"hosts": hosts, "tcp": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "a"}}}}}})
	if len(errs) == 0 {
		t.Fatal("3000 bad hosts passed")
	}
	for _, e := range errs {
		if e.Message != `domain name ".b" invalid (label "" invalid)` {
			t.Fatalf("unexpected error %v", e)
		}
	}
}

func TestEveryKindHasIstiosOwnValidation(t *testing.T) {
	for _, k := range All() {
		if _, ok := istioValidator(k); !ok {
			t.Errorf("%s has no Istio validation function", k.Kind)
		}
	}
}
