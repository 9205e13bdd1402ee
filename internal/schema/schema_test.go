package schema

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

// jsonValue decodes a JSON test input the way callers decode documents.
func jsonValue(t testing.TB, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

func desc(m proto.Message) protoreflect.MessageDescriptor { return m.ProtoReflect().Descriptor() }

var (
	virtualService        = desc(&networking.VirtualService{})
	destinationRule       = desc(&networking.DestinationRule{})
	gateway               = desc(&networking.Gateway{})
	serviceEntry          = desc(&networking.ServiceEntry{})
	peerAuthentication    = desc(&security.PeerAuthentication{})
	authorizationPolicy   = desc(&security.AuthorizationPolicy{})
	requestAuthentication = desc(&security.RequestAuthentication{})
)

// kinds is a proto2 message with the field kinds Istio's API does not use.
var kinds = func() protoreflect.MessageDescriptor {
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	req := descriptorpb.FieldDescriptorProto_LABEL_REQUIRED.Enum()
	field := func(name string, num int32, label *descriptorpb.FieldDescriptorProto_Label, typ descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Label: label, Type: typ.Enum()}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	entry := func(name string, key descriptorpb.FieldDescriptorProto_Type) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{
			Name: proto.String(name),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("key", 1, opt, key, ""),
				field("value", 2, opt, descriptorpb.FieldDescriptorProto_TYPE_STRING, ""),
			},
			Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
		}
	}
	var letters []*descriptorpb.EnumValueDescriptorProto
	for i, name := range []string{"A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M"} {
		letters = append(letters, &descriptorpb.EnumValueDescriptorProto{Name: proto.String("LETTER_" + name), Number: proto.Int32(int32(i))})
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("flotilla/schema_test/kinds.proto"),
		Package: proto.String("flotilla.test"),
		Syntax:  proto.String("proto2"),
		EnumType: []*descriptorpb.EnumDescriptorProto{{
			Name:  proto.String("Letter"),
			Value: letters,
		}},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Kinds"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("name", 1, req, descriptorpb.FieldDescriptorProto_TYPE_STRING, ""),
				field("i64", 2, opt, descriptorpb.FieldDescriptorProto_TYPE_INT64, ""),
				field("u64", 3, opt, descriptorpb.FieldDescriptorProto_TYPE_UINT64, ""),
				field("s32", 4, opt, descriptorpb.FieldDescriptorProto_TYPE_SINT32, ""),
				field("f32", 5, opt, descriptorpb.FieldDescriptorProto_TYPE_FLOAT, ""),
				field("f64", 6, opt, descriptorpb.FieldDescriptorProto_TYPE_DOUBLE, ""),
				field("raw", 7, opt, descriptorpb.FieldDescriptorProto_TYPE_BYTES, ""),
				field("letter", 8, opt, descriptorpb.FieldDescriptorProto_TYPE_ENUM, ".flotilla.test.Letter"),
				field("by_int", 9, rep, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".flotilla.test.Kinds.ByIntEntry"),
				field("by_bool", 10, rep, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".flotilla.test.Kinds.ByBoolEntry"),
				field("flags", 11, rep, descriptorpb.FieldDescriptorProto_TYPE_BOOL, ""),
				field("child", 12, opt, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".flotilla.test.Kinds"),
			},
			NestedType: []*descriptorpb.DescriptorProto{
				entry("ByIntEntry", descriptorpb.FieldDescriptorProto_TYPE_INT64),
				entry("ByBoolEntry", descriptorpb.FieldDescriptorProto_TYPE_BOOL),
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		panic(err)
	}
	return fd.Messages().ByName("Kinds")
}()

type checkCase struct {
	name string
	md   protoreflect.MessageDescriptor
	in   any // a decoded value; see jsonValue
	want []string
}

func runCheckCases(t *testing.T, cases []checkCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, e := range Check("spec", tc.in, tc.md) {
				got = append(got, e.Error())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Check errors (-want +got):\n%s", diff)
			}
			// Check and Decode agree, and Decode never fails on a valid value.
			err := Decode("spec", tc.in, dynamicpb.NewMessage(tc.md))
			if (err == nil) != (len(tc.want) == 0) {
				t.Errorf("Decode error = %v, want error: %v", err, len(tc.want) > 0)
			}
		})
	}
}

func TestCheckIstioObjects(t *testing.T) {
	runCheckCases(t, []checkCase{
		{
			name: "a valid VirtualService has no errors",
			md:   virtualService,
			in:   jsonValue(t, `{"hosts":["reviews"],"http":[{"route":[{"destination":{"host":"reviews","subset":"v1"}}]}]}`),
		},
		{
			name: "spec.http given as a string is rejected with path spec.http",
			md:   virtualService,
			in:   jsonValue(t, `{"hosts":["reviews"],"http":"route to reviews"}`),
			want: []string{"spec.http: expected a list, got string"},
		},
		{
			name: "unknown nested field reports its full path",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"route":[{"destination":{"hostt":"reviews"}}]}]}`),
			want: []string{`spec.http[0].route[0].destination.hostt: unknown field "hostt"; did you mean "host"?`},
		},
		{
			name: "unknown field far from every name lists the valid fields",
			md:   virtualService,
			in:   jsonValue(t, `{"routes":[]}`),
			want: []string{`spec.routes: unknown field "routes"; valid fields are exportTo, gateways, hosts, http, tcp, tls`},
		},
		{
			name: "a field named with the wrong case is suggested its JSON name",
			md:   virtualService,
			in:   jsonValue(t, `{"Hosts":["a"]}`),
			want: []string{`spec.Hosts: unknown field "Hosts"; did you mean "hosts"?`},
		},
		{
			name: "a misspelled proto name suggests the JSON name",
			md:   virtualService,
			in:   jsonValue(t, `{"export_too":["."]}`),
			want: []string{`spec.export_too: unknown field "export_too"; did you mean "exportTo"?`},
		},
		{
			name: "the original proto name is accepted like the JSON name",
			md:   virtualService,
			in:   jsonValue(t, `{"export_to":["."],"http":[{"retries":{"retry_on":"5xx","perTryTimeout":"1s"}}]}`),
		},
		{
			name: "a field given by both its names is a duplicate",
			md:   virtualService,
			in:   jsonValue(t, `{"exportTo":["."],"export_to":["*"]}`),
			want: []string{`spec.export_to: "exportTo" and "export_to" both set field "exportTo"; keep one`},
		},
		{
			name: "two oneof members set",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"match":[{"uri":{"prefix":"/a","exact":"/a"}}]}]}`),
			want: []string{`spec.http[0].match[0].uri.prefix: cannot be set together with "exact": both belong to oneof "match_type", set only one`},
		},
		{
			name: "a null oneof member does not count as set",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"match":[{"uri":{"prefix":"/a","exact":null}}]}]}`),
		},
		{
			name: "null leaves any field unset",
			md:   virtualService,
			in:   jsonValue(t, `{"hosts":null,"http":[{"timeout":null,"retries":null,"mirrorPercent":null,"match":null,"headers":{"request":{"set":null}}}]}`),
		},
		{
			name: "null inside a list is an error",
			md:   virtualService,
			in:   jsonValue(t, `{"hosts":["a",null],"http":[null]}`),
			want: []string{
				"spec.hosts[1]: expected a string, got null",
				"spec.http[0]: expected an object, got null",
			},
		},
		{
			name: "duration with a bad unit",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"timeout":"5x"}]}`),
			want: []string{`spec.http[0].timeout: invalid duration "5x": use a value like "1.5s" (seconds, with up to 9 decimals, and the unit s)`},
		},
		{
			name: "duration written as a number is rejected",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"timeout":5}]}`),
			want: []string{`spec.http[0].timeout: expected a duration string such as "1.5s", got number`},
		},
		{
			name: "every error is reported, sorted by path with indexes in numeric order",
			md:   virtualService,
			in: jsonValue(t, `{"http":[
				{"timeout":"1m"},{},{"timeout":"2h"},{},{},{},{},{},{},{},
				{"route":[{"weight":1.5,"destination":{"host":7}}],"timeout":"1.5s"}
			],"hosts":"x"}`),
			want: []string{
				"spec.hosts: expected a list, got string",
				`spec.http[0].timeout: invalid duration "1m": use a value like "1.5s" (seconds, with up to 9 decimals, and the unit s)`,
				`spec.http[2].timeout: invalid duration "2h": use a value like "1.5s" (seconds, with up to 9 decimals, and the unit s)`,
				"spec.http[10].route[0].destination.host: expected a string, got number",
				"spec.http[10].route[0].weight: expected an integer, got 1.5",
			},
		},
		{
			name: "int32 overflow is reported with the value",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"retries":{"attempts":99999999999}}]}`),
			want: []string{"spec.http[0].retries.attempts: value 99999999999 overflows int32"},
		},
		{
			name: "a negative uint32 is reported",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"match":[{"port":-80}]}]}`),
			want: []string{"spec.http[0].match[0].port: value -80 is negative, but uint32 holds only values ≥ 0"},
		},
		{
			name: "integers may be strings and exponents when the value is integral",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"retries":{"attempts":"3"},"match":[{"port":8.08e3}],"route":[{"weight":"1e2"}]}]}`),
		},
		{
			name: "an integer string that is not a number is rejected",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"retries":{"attempts":"three"}},{"retries":{"attempts":" 3"}}]}`),
			want: []string{
				`spec.http[0].retries.attempts: expected an integer, got string "three"`,
				`spec.http[1].retries.attempts: expected an integer, got string " 3"`,
			},
		},
		{
			name: "wrappers take the plain value",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"mirrorPercent":50,"retries":{"retryRemoteLocalities":true},"mirrorPercentage":{"value":12.5}}]}`),
		},
		{
			name: "a wrapper given an object is rejected",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"mirrorPercent":{"value":50},"retries":{"retryRemoteLocalities":"yes"}}]}`),
			want: []string{
				"spec.http[0].mirrorPercent: expected an integer, got object",
				"spec.http[0].retries.retryRemoteLocalities: expected a boolean, got string",
			},
		},
		{
			name: "string maps check their values and quote unusual keys",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"match":[{"headers":{"x-user":{"exact":"a"},"ok":{"exakt":"b"},"end-user":{"exact":1}}}]}]}`),
			want: []string{
				`spec.http[0].match[0].headers.ok.exakt: unknown field "exakt"; did you mean "exact"?`,
				`spec.http[0].match[0].headers["end-user"].exact: expected a string, got number`,
			},
		},
		{
			name: "a map given a list is rejected",
			md:   virtualService,
			in:   jsonValue(t, `{"http":[{"headers":{"request":{"set":["a"]}}}]}`),
			want: []string{"spec.http[0].headers.request.set: expected an object, got list"},
		},
		{
			name: "a top-level value that is not an object is rejected",
			md:   virtualService,
			in:   jsonValue(t, `["hosts"]`),
			want: []string{"spec: expected an object, got list"},
		},
		{
			name: "a missing spec is rejected",
			md:   virtualService,
			in:   nil,
			want: []string{"spec: expected an object, got null"},
		},
		{
			name: "enum by wrong name lists allowed values",
			md:   peerAuthentication,
			in:   jsonValue(t, `{"mtls":{"mode":"strict"}}`),
			want: []string{`spec.mtls.mode: unknown value "strict" for enum istio.security.v1beta1.PeerAuthentication.MutualTLS.Mode (allowed: DISABLE, PERMISSIVE, STRICT, UNSET); did you mean "STRICT"?`},
		},
		{
			name: "enum by name or number is accepted",
			md:   peerAuthentication,
			in:   jsonValue(t, `{"mtls":{"mode":"STRICT"},"portLevelMtls":{"8080":{"mode":2}}}`),
		},
		{
			name: "an integer map key must parse and not repeat",
			md:   peerAuthentication,
			in:   jsonValue(t, `{"portLevelMtls":{"http":{"mode":"STRICT"},"80":{},"080":{},"-1":{}}}`),
			want: []string{
				`spec.portLevelMtls.http: invalid map key "http": expected a decimal uint32`,
				`spec.portLevelMtls["-1"]: invalid map key "-1": expected a decimal uint32`,
				`spec.portLevelMtls["80"]: map key "80" is the same key as "080"; keep one`,
			},
		},
		{
			name: "an AuthorizationPolicy with a bad action and a misspelled rule field",
			md:   authorizationPolicy,
			in:   jsonValue(t, `{"action":"REJECT","rules":[{"from":[{"source":{"principals":["a"]}}],"too":[]}]}`),
			want: []string{
				`spec.action: unknown value "REJECT" for enum istio.security.v1beta1.AuthorizationPolicy.Action (allowed: ALLOW, AUDIT, CUSTOM, DENY)`,
				`spec.rules[0].too: unknown field "too"; did you mean "to"?`,
			},
		},
		{
			name: "a DestinationRule with wrappers, durations and a oneof decodes",
			md:   destinationRule,
			in: jsonValue(t, `{"host":"reviews","trafficPolicy":{"loadBalancer":{"simple":"LEAST_REQUEST"},
				"outlierDetection":{"consecutive5xxErrors":7,"interval":"5m0s"}}}`),
			want: []string{`spec.trafficPolicy.outlierDetection.interval: invalid duration "5m0s": use a value like "1.5s" (seconds, with up to 9 decimals, and the unit s)`},
		},
		{
			name: "a Gateway with a bad TLS mode and port number",
			md:   gateway,
			in:   jsonValue(t, `{"servers":[{"port":{"number":"443x","protocol":"HTTPS"},"hosts":["*"],"tls":{"mode":"SIMPLEX"}}]}`),
			want: []string{
				`spec.servers[0].port.number: expected an integer, got string "443x"`,
				`spec.servers[0].tls.mode: unknown value "SIMPLEX" for enum istio.networking.v1alpha3.ServerTLSSettings.TLSmode (allowed: AUTO_PASSTHROUGH, ISTIO_MUTUAL, MUTUAL, OPTIONAL_MUTUAL, PASSTHROUGH, SIMPLE); did you mean "SIMPLE"?`,
			},
		},
		{
			name: "a ServiceEntry with endpoint port maps decodes",
			md:   serviceEntry,
			in:   jsonValue(t, `{"hosts":["api.example.com"],"ports":[{"number":443,"name":"https","protocol":"TLS"}],"resolution":"DNS","endpoints":[{"address":"1.2.3.4","ports":{"https":8443}}]}`),
		},
		{
			name: "a RequestAuthentication with a bad JWT timeout",
			md:   requestAuthentication,
			in:   jsonValue(t, `{"jwtRules":[{"issuer":"me","timeout":"-1.0000000001s"}]}`),
			want: []string{`spec.jwtRules[0].timeout: invalid duration "-1.0000000001s": use a value like "1.5s" (seconds, with up to 9 decimals, and the unit s)`},
		},
	})
}

func TestCheckScalarKinds(t *testing.T) {
	runCheckCases(t, []checkCase{
		{
			name: "64-bit integers accept numbers and decimal strings",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","i64":"-9223372036854775808","u64":"18446744073709551615","s32":-5}`),
		},
		{
			name: "64-bit integers out of range are rejected",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","i64":"9223372036854775808","u64":"1e20","s32":"2147483648"}`),
			want: []string{
				"spec.i64: value 9223372036854775808 overflows int64",
				"spec.s32: value 2147483648 overflows sint32",
				"spec.u64: value 1e20 overflows uint64",
			},
		},
		{
			name: "Go integers and json.Number from YAML decoders are numbers",
			md:   kinds,
			in: map[string]any{
				"name": "n", "i64": int64(math.MinInt64), "u64": uint64(math.MaxUint64), "s32": 7,
				"f64": json.Number("1.5e3"), "letter": int32(2),
			},
		},
		{
			name: "an invalid json.Number is rejected",
			md:   kinds,
			in:   map[string]any{"name": "n", "i64": json.Number("12abc")},
			want: []string{`spec.i64: invalid number "12abc"`},
		},
		{
			name: "floats accept numbers, numeric strings and the special strings",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","f32":"NaN","f64":"-Infinity","flags":[true]}`),
		},
		{
			name: "float overflow and a NaN Go float are rejected",
			md:   kinds,
			in:   map[string]any{"name": "n", "f32": 1e39, "f64": math.NaN()},
			want: []string{
				"spec.f32: value 1e+39 overflows float",
				`spec.f64: number NaN cannot be written as JSON; use the string "NaN", "Infinity" or "-Infinity"`,
			},
		},
		{
			name: "a float given a word is rejected",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","f64":"inf"}`),
			want: []string{`spec.f64: expected a number, got string "inf"; special values are written "NaN", "Infinity" and "-Infinity"`},
		},
		{
			name: "bytes take standard or URL-safe base64",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","raw":"aGk_"}`),
		},
		{
			name: "bytes that are not base64 are rejected",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","raw":"not base64!"}`),
			want: []string{`spec.raw: invalid base64 "not base64!": use standard or URL-safe base64`},
		},
		{
			name: "an enum with many values points to the enum instead of listing them",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","letter":"LETTER_Z"}`),
			want: []string{`spec.letter: unknown value "LETTER_Z" for enum flotilla.test.Letter (see the enum flotilla.test.Letter for allowed values)`},
		},
		{
			name: "an enum number must be an int32",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","letter":2.5}`),
			want: []string{"spec.letter: expected an enum value name or integer, got 2.5"},
		},
		{
			name: "int64 and bool map keys must parse",
			md:   kinds,
			in:   jsonValue(t, `{"name":"n","byInt":{"-7":"a","seven":"b"},"byBool":{"true":"a","yes":"b"}}`),
			want: []string{
				`spec.byBool.yes: invalid map key "yes": expected true or false`,
				`spec.byInt.seven: invalid map key "seven": expected a decimal int64`,
			},
		},
		{
			name: "a missing required proto2 field is reported, in nested messages too",
			md:   kinds,
			in:   jsonValue(t, `{"child":{"child":{"name":"deep"}}}`),
			want: []string{
				"spec.child.name: required field is missing",
				"spec.name: required field is missing",
			},
		},
		{
			name: "messages nested more than 64 levels deep are rejected",
			md:   kinds,
			in: func() any {
				v := map[string]any{"name": "leaf"}
				for range 70 {
					v = map[string]any{"name": "n", "child": v}
				}
				return v
			}(),
			want: []string{"spec" + strings.Repeat(".child", 64) + ": nested more than 64 levels deep"},
		},
		{
			name: "a value that contains itself ends at the depth limit",
			md:   kinds,
			in: func() any {
				v := map[string]any{"name": "loop"}
				v["child"] = v
				return v
			}(),
			want: []string{"spec" + strings.Repeat(".child", 64) + ": nested more than 64 levels deep"},
		},
		{
			name: "Go values that are not JSON are rejected",
			md:   kinds,
			in:   map[string]any{"name": []string{"a"}, "child": map[any]any{"name": "x"}},
			want: []string{
				"spec.child: expected an object, got a Go value of type map[interface {}]interface {}, which is not a JSON value",
				"spec.name: expected a string, got a Go value of type []string, which is not a JSON value",
			},
		},
		{
			name: "strings must be valid UTF-8",
			md:   kinds,
			in:   map[string]any{"name": "a\xffb"},
			want: []string{"spec.name: string is not valid UTF-8"},
		},
	})
}

func TestCheckWellKnownTypes(t *testing.T) {
	runCheckCases(t, []checkCase{
		{name: "a duration with nanoseconds is valid", md: desc(&durationpb.Duration{}), in: "-0.000000001s"},
		{name: "a duration of only a point is valid, as in protojson", md: desc(&durationpb.Duration{}), in: ".s"},
		{
			name: "a duration beyond 10000 years is out of range",
			md:   desc(&durationpb.Duration{}),
			in:   "315576000001s",
			want: []string{`spec: duration "315576000001s" is out of range: it must be within ±315576000000s`},
		},
		{name: "an RFC 3339 timestamp with an offset is valid", md: desc(&timestamppb.Timestamp{}), in: "2024-02-29T12:00:00.123+01:00"},
		{
			name: "a timestamp without a zone is rejected",
			md:   desc(&timestamppb.Timestamp{}),
			in:   "2024-02-29 12:00:00",
			want: []string{`spec: invalid timestamp "2024-02-29 12:00:00": use RFC 3339, e.g. "2006-01-02T15:04:05.5Z", with at most 9 fractional digits`},
		},
		{
			name: "a timestamp with more than nanosecond precision is rejected",
			md:   desc(&timestamppb.Timestamp{}),
			in:   "2024-02-29T12:00:00.1234567891Z",
			want: []string{`spec: invalid timestamp "2024-02-29T12:00:00.1234567891Z": use RFC 3339, e.g. "2006-01-02T15:04:05.5Z", with at most 9 fractional digits`},
		},
		{name: "a Struct takes any object", md: desc(&structpb.Struct{}), in: jsonValue(t, `{"a":[1,"x",null,{"b":true}]}`)},
		{name: "a Value takes null", md: desc(&structpb.Value{}), in: nil},
		{
			name: "a Struct given a list is rejected",
			md:   desc(&structpb.Struct{}),
			in:   jsonValue(t, `[1]`),
			want: []string{"spec: expected an object, got list"},
		},
		{
			name: "a Value number must fit a double",
			md:   desc(&structpb.Value{}),
			in:   map[string]any{"big": json.Number("1e400")},
			want: []string{"spec.big: value 1e400 overflows double"},
		},
		{name: "a ListValue takes a list of anything", md: desc(&structpb.ListValue{}), in: jsonValue(t, `[1,"a",[],{}]`)},
		{
			name: "a ListValue given an object is rejected",
			md:   desc(&structpb.ListValue{}),
			in:   jsonValue(t, `{}`),
			want: []string{"spec: expected a list, got object"},
		},
		{name: "a FieldMask takes lowerCamel paths", md: desc(&fieldmaskpb.FieldMask{}), in: "http.route,exportTo"},
		{
			name: "a FieldMask with snake_case paths is rejected",
			md:   desc(&fieldmaskpb.FieldMask{}),
			in:   "export_to,a..b",
			want: []string{
				`spec: invalid field mask path "a..b": write lowerCamel field names separated by dots, and paths separated by commas`,
				`spec: invalid field mask path "export_to": write lowerCamel field names separated by dots, and paths separated by commas`,
			},
		},
		{name: "Empty takes an empty object", md: desc(&emptypb.Empty{}), in: map[string]any{}},
		{
			name: "Empty with a field is rejected",
			md:   desc(&emptypb.Empty{}),
			in:   jsonValue(t, `{"a":1}`),
			want: []string{`spec.a: unknown field "a"; google.protobuf.Empty takes no fields, write {}`},
		},
		{
			name: "Any is rejected as unsupported",
			md:   desc(&anypb.Any{}),
			in:   jsonValue(t, `{"@type":"type.googleapis.com/google.protobuf.Empty"}`),
			want: []string{"spec: google.protobuf.Any is not supported here; put the message itself in this field's place"},
		},
		{name: "a BytesValue takes base64", md: desc(&wrapperspb.BytesValue{}), in: "aGVsbG8="},
		{
			name: "an Int64Value given a boolean is rejected",
			md:   desc(&wrapperspb.Int64Value{}),
			in:   true,
			want: []string{"spec: expected an integer, got boolean"},
		},
	})
}

func TestDecodeVirtualServiceEqualsProtojson(t *testing.T) {
	const doc = `{
		"hosts": ["reviews.prod.svc.cluster.local"],
		"gateways": ["mesh"],
		"http": [{
			"name": "reviews-v2",
			"match": [{"uri": {"prefix": "/wpcatalog"}, "headers": {"end-user": {"exact": "jason"}}, "port": 8080}],
			"route": [
				{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 75},
				{"destination": {"host": "reviews", "subset": "v1"}, "weight": 25}
			],
			"timeout": "10.5s",
			"retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure", "retryRemoteLocalities": true},
			"mirrorPercentage": {"value": 12.5},
			"headers": {"request": {"set": {"x-flotilla": "1"}}}
		}]
	}`
	t.Run("a valid VirtualService with timeouts, retries, match and weights decodes and equals protojson's result", func(t *testing.T) {
		var got networking.VirtualService
		if err := Decode("spec", jsonValue(t, doc), &got); err != nil {
			t.Fatalf("Decode: %v", err)
		}
		var want networking.VirtualService
		if err := protojson.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("protojson.Unmarshal: %v", err)
		}
		if diff := cmp.Diff(&want, &got, protocmp.Transform()); diff != "" {
			t.Errorf("Decode result (-protojson +Decode):\n%s", diff)
		}
		if got.GetHttp()[0].GetTimeout().AsDuration().Seconds() != 10.5 {
			t.Errorf("timeout = %v, want 10.5s", got.GetHttp()[0].GetTimeout())
		}
	})
	t.Run("an invalid VirtualService leaves the message unchanged", func(t *testing.T) {
		got := &networking.VirtualService{Hosts: []string{"kept"}}
		err := Decode("spec", jsonValue(t, `{"hosts":["new"],"http":"x"}`), got)
		var errs Errors
		if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Path != "spec.http" {
			t.Fatalf("Decode error = %v, want one error at spec.http", err)
		}
		if diff := cmp.Diff([]string{"kept"}, got.GetHosts()); diff != "" {
			t.Errorf("message changed (-want +got):\n%s", diff)
		}
	})
	t.Run("a nil message is an error, not a panic", func(t *testing.T) {
		if err := Decode("spec", map[string]any{}, (*networking.VirtualService)(nil)); err == nil {
			t.Error("Decode into a nil *VirtualService succeeded")
		}
		if err := Decode("spec", map[string]any{}, nil); err == nil {
			t.Error("Decode into nil succeeded")
		}
		if errs := Check("spec", map[string]any{}, nil); len(errs) == 0 {
			t.Error("Check with a nil descriptor succeeded")
		}
	})
}

func TestErrorsFormat(t *testing.T) {
	errs := Errors{
		{Path: "spec.http[0].timeout", Message: `invalid duration "5x"`},
		{Path: "", Message: "no path"},
	}
	want := `spec.http[0].timeout: invalid duration "5x"; no path`
	if got := errs.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var fe FieldError
	if !errors.As(error(errs), &fe) || fe.Path != "spec.http[0].timeout" {
		t.Errorf("errors.As(Errors, *FieldError) = %v, want the first field error", fe)
	}
}

func TestCheckIsDeterministic(t *testing.T) {
	in := jsonValue(t, `{"b":1,"a":2,"http":[{"zz":1,"timeout":"x","yy":{"a":1},"route":[{"weight":"w","q":1}]}],"c":3,"hosts":[1,2,3]}`)
	first := Check("spec", in, virtualService)
	if len(first) < 10 {
		t.Fatalf("got %d errors, want at least 10: %v", len(first), first)
	}
	for range 20 {
		if diff := cmp.Diff(first, Check("spec", in, virtualService)); diff != "" {
			t.Fatalf("Check is not deterministic (-first +again):\n%s", diff)
		}
	}
}

func TestPathsQuoteKeysThatAreNotIdentifiers(t *testing.T) {
	for _, tc := range []struct{ path, key, want string }{
		{"spec", "hosts", "spec.hosts"},
		{"", "hosts", "hosts"},
		{"spec.labels", "app.kubernetes.io/name", `spec.labels["app.kubernetes.io/name"]`},
		{"spec.ports", "8080", `spec.ports["8080"]`},
		{"", "", `[""]`},
	} {
		if got := JoinKey(tc.path, tc.key); got != tc.want {
			t.Errorf("JoinKey(%q, %q) = %q, want %q", tc.path, tc.key, got, tc.want)
		}
	}
}

// TestIstioTypesAreProtobufV2 pins the premise of the package: istio.io/api
// messages implement google.golang.org/protobuf's proto.Message, so their
// descriptors can be walked and protojson can decode them.
func TestIstioTypesAreProtobufV2(t *testing.T) {
	for _, m := range []proto.Message{
		&networking.VirtualService{}, &networking.DestinationRule{}, &networking.Gateway{},
		&networking.ServiceEntry{}, &networking.Sidecar{}, &networking.EnvoyFilter{},
		&networking.WorkloadEntry{}, &networking.WorkloadGroup{},
		&security.PeerAuthentication{}, &security.AuthorizationPolicy{}, &security.RequestAuthentication{},
	} {
		md := m.ProtoReflect().Descriptor()
		if md.Fields().Len() == 0 {
			t.Errorf("%s has no fields", md.FullName())
		}
		if err := Decode("spec", map[string]any{}, m); err != nil {
			t.Errorf("%s: Decode of {}: %v", md.FullName(), err)
		}
	}
}
