package compile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/istio"
)

const (
	edgeGroup   = "groups/edge"
	directGroup = "groups/raw"
)

// testBundle has a gateway group and a DIRECT group that select every
// namespace of cluster c1, and the given objects.
func testBundle(objects ...bundle.Object) *bundle.Bundle {
	return &bundle.Bundle{
		Cluster: "c1",
		Groups: []bundle.Group{
			{FQN: edgeGroup, Type: "gateway", ConfigMode: ConfigModeBridged, Namespaces: []string{"c1/*"}},
			{FQN: directGroup, Type: "traffic", ConfigMode: ConfigModeDirect, Namespaces: []string{"c1/*"}},
		},
		Objects: objects,
	}
}

func ingressGateway(name, spec string) bundle.Object {
	return bundle.Object{
		APIVersion: IngressGatewayAPIVersion, Kind: IngressGatewayKind,
		FQN: "ingressgateways/" + name, Name: name, Group: edgeGroup, Spec: json.RawMessage(spec),
	}
}

const validGateway = `{"workloadSelector":{"namespace":"istio-ingress","labels":{"istio":"ingressgateway"}},
	"http":[{"name":"www","hostname":"www.example.com","port":80,"routing":{"rules":[{"route":{"host":"shop/web.shop.svc.cluster.local"}}]}}]}`

func TestANilBundleCompilesToNothing(t *testing.T) {
	r := Compile(nil, []string{"shop"})
	if len(r.Objects) != 0 || len(r.Diagnostics) != 0 {
		t.Errorf("Compile(nil) = %+v", r)
	}
}

func TestInvalidIntentIsReportedEvenWhereItIsNotDelivered(t *testing.T) {
	b := testBundle(ingressGateway("shop", `{"workloadSelector":{"namespace":"edge","labels":{"a":"b"}},"http":[{"name":"www","hostname":"www.example.com","port":80,
		"routing":{"rules":[{"route":{"host":"no-namespace"}}]}}]}`))
	r := Compile(b, []string{"shop"}) // edge does not exist
	want := []Diagnostic{{
		FQN: "ingressgateways/shop", Field: "spec.http[0].routing.rules[0].route.host",
		Message: `route host "no-namespace" is not of the form "<namespace>/<service fqdn>", e.g. "shop/frontend.shop.svc.cluster.local"`,
	}}
	if diff := cmp.Diff(want, r.Diagnostics); diff != "" {
		t.Errorf("diagnostics (-want +got):\n%s", diff)
	}
	if len(r.Objects) != 0 {
		t.Errorf("emitted %d objects into a namespace that does not exist", len(r.Objects))
	}
}

func TestEveryEmittedObjectIsOwnedByItsIntent(t *testing.T) {
	b := testBundle(ingressGateway("shop", validGateway), bundle.Object{
		APIVersion: "security.istio.io/v1beta1", Kind: "PeerAuthentication", FQN: "peerauthentications/strict",
		Name: "strict", Namespace: "shop", Group: directGroup, Spec: json.RawMessage(`{"mtls":{"mode":"STRICT"}}`),
	})
	r := Compile(b, []string{"istio-ingress", "shop"})
	var got []string
	for _, o := range r.Objects {
		got = append(got, fmt.Sprintf("%s %s %s/%s %s=%s %s=%s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace(), o.GetName(),
			LabelManagedBy, o.GetLabels()[LabelManagedBy], AnnotationOwner, o.GetAnnotations()[AnnotationOwner]))
	}
	want := []string{
		"networking.istio.io/v1 Gateway istio-ingress/shop app.kubernetes.io/managed-by=flotilla flotilla.io/owner=ingressgateways/shop",
		"networking.istio.io/v1 VirtualService istio-ingress/shop-www app.kubernetes.io/managed-by=flotilla flotilla.io/owner=ingressgateways/shop",
		"security.istio.io/v1 PeerAuthentication shop/strict app.kubernetes.io/managed-by=flotilla flotilla.io/owner=peerauthentications/strict",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if len(r.Diagnostics) != 0 {
		t.Errorf("unexpected diagnostics: %v", r.Diagnostics)
	}
}

func TestADirectObjectWithANullSpecIsDeliveredWithAnEmptySpec(t *testing.T) {
	b := testBundle(bundle.Object{
		APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy", FQN: "authorizationpolicies/deny",
		Name: "deny", Namespace: "shop", Group: directGroup, Spec: json.RawMessage(`null`),
	})
	r := Compile(b, []string{"shop"})
	if len(r.Objects) != 1 || len(r.Diagnostics) != 0 {
		t.Fatalf("got %d objects, diagnostics %v", len(r.Objects), r.Diagnostics)
	}
	if diff := cmp.Diff(map[string]any{}, r.Objects[0].Object["spec"]); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestADirectObjectNeedsANameANamespaceAndAnObjectSpec(t *testing.T) {
	b := testBundle(bundle.Object{
		APIVersion: "networking.istio.io/v1", Kind: "Sidecar", FQN: "sidecars/x",
		Name: "Bad Name", Group: directGroup, Spec: json.RawMessage(`[1]`),
	})
	r := Compile(b, []string{"shop"})
	var fields []string
	for _, d := range r.Diagnostics {
		fields = append(fields, d.Field)
	}
	if diff := cmp.Diff([]string{"name", "namespace", "spec"}, fields); diff != "" {
		t.Errorf("diagnostic fields (-want +got):\n%s\n%v", diff, r.Diagnostics)
	}
}

func TestAnUnknownFlotillaKindIsADiagnostic(t *testing.T) {
	b := testBundle(bundle.Object{APIVersion: "flotilla.io/v1alpha1", Kind: "RateLimit", FQN: "ratelimits/x", Name: "x", Group: edgeGroup})
	r := Compile(b, []string{"shop"})
	if len(r.Diagnostics) != 1 || r.Diagnostics[0].Field != "kind" {
		t.Errorf("diagnostics = %v, want one on kind", r.Diagnostics)
	}
}

func TestASettingInAGroupOfTheWrongTypeIsADiagnostic(t *testing.T) {
	b := testBundle(bundle.Object{APIVersion: "flotilla.io/v1alpha1", Kind: "TrafficSetting", FQN: "trafficsettings/x", Name: "x", Group: edgeGroup})
	r := Compile(b, []string{"shop"})
	if len(r.Diagnostics) != 1 || r.Diagnostics[0].Field != "group" || len(r.Objects) != 0 {
		t.Errorf("diagnostics = %v, objects %d, want one on group and nothing emitted", r.Diagnostics, len(r.Objects))
	}
}

// Fuzzing: the compiler must never panic, must be deterministic, and must
// only emit objects Istio's schema accepts, whatever the specs are.

var directKinds = istio.All()

func compileGarbage(t *testing.T, spec []byte, kind uint8, ns string) {
	t.Helper()
	k := directKinds[int(kind)%len(directKinds)]
	b := testBundle(
		ingressGateway("gw", string(spec)),
		bundle.Object{APIVersion: k.APIVersion, Kind: k.Kind, FQN: "direct/x", Name: "x", Namespace: ns, Group: directGroup, Spec: spec},
	)
	namespaces := []string{"istio-ingress", "shop", ns}
	r := Compile(b, namespaces)
	checkEmittedObjects(t, r)
	again := Compile(b, namespaces)
	if diff := cmp.Diff(render(t, r), render(t, again)); diff != "" {
		t.Fatalf("two compilations differ:\n%s", diff)
	}
}

func FuzzCompile(f *testing.F) {
	f.Add([]byte(validGateway), uint8(0), "shop")
	f.Add([]byte(`{"hosts":["a"],"http":[{"route":[{"destination":{"host":"a"},"weight":50}]}]}`), uint8(4), "istio-ingress")
	f.Add([]byte(`{"http":[{"name":"a","routing":{"rules":[{"match":[{"path":{"regex":"("}}]}]}}]}`), uint8(1), "x")
	f.Add([]byte(`null`), uint8(7), "")
	f.Add([]byte(`{"portLevelMtls":{"0":{}}}`), uint8(6), "Shop")
	f.Add([]byte(`[`), uint8(2), "shop")
	f.Fuzz(func(t *testing.T, spec []byte, kind uint8, ns string) {
		compileGarbage(t, spec, kind, ns)
	})
}

// vocabulary holds the field names of IngressGatewaySpec and of Istio specs,
// so that random specs reach deep into the passes.
var vocabulary = []string{
	"workloadSelector", "namespace", "labels", "http", "name", "hostname", "port", "tls", "mode",
	"secretName", "routing", "rules", "match", "path", "headers", "route", "host", "exact", "prefix",
	"regex", "hosts", "gateways", "destination", "weight", "number", "servers", "selector",
	"portLevelMtls", "mtls", "action", "ports", "protocol", "egress", "subset", "x-user", "",
}

func randomValue(rng *rand.Rand, depth int) any {
	switch n := rng.IntN(10); {
	case depth > 5 || n < 2:
		switch rng.IntN(7) {
		case 0:
			return nil
		case 1:
			return rng.IntN(2) == 0
		case 2:
			return []float64{0, 1, 80, 443, 65535, 65536, -1, 1e20, 0.5}[rng.IntN(9)]
		case 3:
			return []string{"", "istio-ingress", "shop", "shop/web.shop.svc.cluster.local", "SIMPLE", "MUTUAL", "*", "(", "/api", "Bad Name"}[rng.IntN(10)]
		default:
			return vocabulary[rng.IntN(len(vocabulary))]
		}
	case n < 5:
		list := make([]any, rng.IntN(4))
		for i := range list {
			list[i] = randomValue(rng, depth+1)
		}
		return list
	default:
		m := map[string]any{}
		for i := rng.IntN(5); i > 0; i-- {
			m[vocabulary[rng.IntN(len(vocabulary))]] = randomValue(rng, depth+1)
		}
		return m
	}
}

func TestCompileNeverPanicsOnGarbageSpecs(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11)) // the test's randomness, not the compiler's
	n := 1000
	if testing.Short() {
		n = 200
	}
	for i := 0; i < n; i++ {
		v := map[string]any{}
		for j := rng.IntN(4); j >= 0; j-- {
			v[vocabulary[rng.IntN(len(vocabulary))]] = randomValue(rng, 0)
		}
		if i%3 == 0 { // start from a valid gateway and break one part
			v = map[string]any{}
			_ = json.Unmarshal([]byte(validGateway), &v)
			v[vocabulary[rng.IntN(len(vocabulary))]] = randomValue(rng, 2)
		}
		spec, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		ns := []string{"shop", "istio-ingress", "", "Shop"}[rng.IntN(4)]
		compileGarbage(t, spec, uint8(rng.IntN(256)), ns)
		if t.Failed() {
			t.Fatalf("spec %s", spec)
		}
	}
}

// The compiler's own output passes through Istio's validation: an object
// istiod would reject is reported on its owner and not delivered.
func TestCompiledObjectsIstioRejectsAreNotDelivered(t *testing.T) {
	c := &compilation{}
	c.emit("owner/good", "networking.istio.io/v1", "VirtualService", "shop", "good",
		map[string]any{"hosts": []any{"a"}, "tcp": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "a"}}}}}})
	c.emit("owner/bad", "networking.istio.io/v1", "VirtualService", "shop", "bad",
		map[string]any{"hosts": []any{"a"}, "tcp": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": "a", "port": map[string]any{"number": int64(999999)}}}}}}})
	r := c.result()
	if len(r.Objects) != 1 || r.Objects[0].GetName() != "good" {
		t.Fatalf("delivered %d objects (%v); want only good", len(r.Objects), r.Objects)
	}
	want := "the VirtualService shop/bad compiled from it is invalid, so it is not delivered: spec.tcp[0].route[0].destination.port.number: port number 999999 must be in the range 1..65535"
	if len(r.Diagnostics) != 1 || r.Diagnostics[0].FQN != "owner/bad" || r.Diagnostics[0].Message != want {
		t.Fatalf("diagnostics %+v; want one on owner/bad: %s", r.Diagnostics, want)
	}
}

// settingsVocabulary holds the field names and values of the settings
// kinds and ServiceRoute, so that random specs reach the merge and every
// emitter.
var settingsVocabulary = []string{
	"defaultSecuritySetting", "defaultTrafficSetting", "mtlsMode", "authorization", "mode", "rules", "allow", "deny",
	"from", "to", "jwt", "issuer", "jwksUri", "audiences", "reachability", "hosts", "resilience", "timeout", "retries",
	"attempts", "perTryTimeout", "retryOn", "connectionPool", "maxConnections", "connectTimeout", "outlierDetection",
	"interval", "consecutive5xxErrors", "maxEjectionPercent", "egress", "host", "port", "propagationStrategy", "service",
	"subsets", "name", "labels", "weight", "httpRoutes", "match", "headers", "pathPrefix", "destination", "subset",
	"portLevelSettings", "STRICT", "PERMISSIVE", "DISABLE", "NAMESPACE", "GROUP", "WORKSPACE", "CLUSTER", "RULES",
	"DISABLED", "CUSTOM", "REPLACE", "STRICTER", "5s", "250ms", "0s", "-1s", "shop/reviews", "shop/*", "v1",
	"organizations/acme", "organizations/acme/tenants/t", "organizations/acme/tenants/t/workspaces/w", "https://i/jwks",
}

func randomSettingsValue(rng *rand.Rand, depth int) any {
	switch n := rng.IntN(10); {
	case depth > 4 || n < 3:
		switch rng.IntN(5) {
		case 0:
			return nil
		case 1:
			return []float64{0, 1, 10, 50, 90, 100, 110, -1, 65536}[rng.IntN(9)]
		default:
			return settingsVocabulary[rng.IntN(len(settingsVocabulary))]
		}
	case n < 5:
		list := make([]any, rng.IntN(3))
		for i := range list {
			list[i] = randomSettingsValue(rng, depth+1)
		}
		return list
	default:
		m := map[string]any{}
		for i := rng.IntN(5); i > 0; i-- {
			m[settingsVocabulary[rng.IntN(len(settingsVocabulary))]] = randomSettingsValue(rng, depth+1)
		}
		return m
	}
}

// The settings pass never panics, is deterministic and emits only objects
// Istio accepts, whatever the settings and routes say.
func TestSettingsCompileNeverPanicsOnGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5)) // the test's randomness, not the compiler's
	const org, tenant, ws = "organizations/acme", "organizations/acme/tenants/t", "organizations/acme/tenants/t/workspaces/w"
	groups := []bundle.Group{
		{FQN: org, Type: GroupTypeOrganization, ConfigMode: ConfigModeBridged, Namespaces: []string{}},
		{FQN: tenant, Type: GroupTypeTenant, ConfigMode: ConfigModeBridged, Namespaces: []string{}},
		{FQN: ws, Type: GroupTypeWorkspace, ConfigMode: ConfigModeBridged, Namespaces: []string{"*/shop", "*/web-*"}},
		{FQN: ws + "/groups/net", Type: "traffic", ConfigMode: ConfigModeBridged, Namespaces: []string{"c1/shop"}},
		{FQN: ws + "/groups/sec", Type: "security", ConfigMode: ConfigModeBridged, Namespaces: []string{"*/shop", "*/web-a"}},
	}
	// Each kind starts from a valid spec; most cases then break one part.
	kinds := []struct{ kind, group, valid string }{
		{KindOrganizationSetting, org, `{"defaultSecuritySetting":{"mtlsMode":"STRICT","authorization":{"mode":"NAMESPACE"},"propagationStrategy":"STRICTER"}}`},
		{KindTenantSetting, tenant, `{"defaultTrafficSetting":{"reachability":{"mode":"WORKSPACE"}}}`},
		{KindWorkspaceSetting, ws, `{"defaultTrafficSetting":{"resilience":{"timeout":"5s","connectionPool":{"maxConnections":10}}}}`},
		{KindTrafficSetting, ws + "/groups/net", `{"reachability":{"mode":"GROUP"}}`},
		{KindSecuritySetting, ws + "/groups/sec", `{"authorization":{"mode":"RULES","rules":{"allow":[{"from":"organizations/acme","to":"organizations/acme/tenants/t/workspaces/w"}]}},"jwt":[{"issuer":"i","jwksUri":"https://i/jwks"}]}`},
		{KindServiceRoute, ws + "/groups/net", `{"service":"shop/reviews","subsets":[{"name":"v1","labels":{"version":"v1"},"weight":90},{"name":"v2","labels":{"version":"v2"},"weight":10}]}`},
	}
	n := 600
	if testing.Short() {
		n = 100
	}
	emitted := map[string]int{}
	for i := range n {
		b := &bundle.Bundle{Cluster: "c1", Groups: groups}
		for j, k := range kinds {
			if rng.IntN(3) == 0 {
				continue
			}
			v := map[string]any{}
			if err := json.Unmarshal([]byte(k.valid), &v); err != nil {
				t.Fatal(err)
			}
			for range rng.IntN(3) {
				v[settingsVocabulary[rng.IntN(len(settingsVocabulary))]] = randomSettingsValue(rng, 0)
			}
			spec, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("s%d", j)
			b.Objects = append(b.Objects, bundle.Object{APIVersion: "flotilla.io/v1alpha1", Kind: k.kind, FQN: k.group + "/x/" + name, Name: name, Group: k.group, Spec: spec})
		}
		namespaces := []string{"shop", "web-a", "istio-system", "other"}
		r := Compile(b, namespaces)
		checkEmittedObjects(t, r)
		for _, o := range r.Objects {
			emitted[o.GetKind()]++
		}
		if again := Compile(b, namespaces); !bytes.Equal(render(t, r), render(t, again)) {
			t.Fatalf("case %d: two compilations differ", i)
		}
		if t.Failed() {
			t.Fatalf("case %d: %+v", i, b.Objects)
		}
	}
	// The garbage reached every emitter.
	for _, kind := range []string{"PeerAuthentication", "AuthorizationPolicy", "Sidecar", "DestinationRule", "VirtualService"} {
		if emitted[kind] == 0 {
			t.Errorf("no %s was emitted in %d cases: the random specs do not reach its emitter (emitted %v)", kind, n, emitted)
		}
	}
}
