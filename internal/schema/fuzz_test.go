package schema

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

var fuzzSeeds = []string{
	`{"hosts":["reviews"],"http":[{"route":[{"destination":{"host":"reviews","subset":"v1"},"weight":100}]}]}`,
	`{"http":[{"match":[{"uri":{"prefix":"/a"},"headers":{"x":{"regex":".*"}},"port":"80"}],"timeout":"1.5s",
	  "retries":{"attempts":3,"perTryTimeout":".5s","retryRemoteLocalities":true},"mirrorPercentage":{"value":"NaN"},
	  "directResponse":{"status":200,"body":{"bytes":"aGk="}},"fault":{"delay":{"fixedDelay":"1s","percentage":{"value":1e2}}}}]}`,
	`{"http":"x","tcp":[{"route":[{"destination":{"host":"a","port":{"number":1e3}}}]}],"export_to":null}`,
	`{"tls":[{"match":[{"sniHosts":["a"],"port":-1}],"route":[{"destination":{"host":"a"},"weight":"2147483648"}]}]}`,
	`{"http":[{"match":[{"uri":{"exact":"/","prefix":"/"}}],"redirect":{"derivePort":"FROM_REQUEST_PORT","port":1}}]}`,
	`{"portLevelMtls":{"080":{"mode":"STRICT"},"80":{"mode":3}},"mtls":{"mode":1.0}}`,
	`{"name":"n","i64":"-1e18","u64":1.8446744073709551615e19,"f32":3.5e38,"byInt":{"+1":"a","1":"b"},"child":{"name":"c"}}`,
	`"-315576000000.999999999s"`,
	`"0001-01-01T00:00:00Z"`,
	`"fooBar.baz,qux"`,
	`[1,"a",{"b":[null,true]}]`,
	`"aGk_-w"`,
}

// fuzzTargets are the descriptors each fuzz input is checked against: the
// VirtualService first, then types that reach the remaining rules.
var fuzzTargets = []protoreflect.MessageDescriptor{
	virtualService,
	peerAuthentication,
	kinds,
	desc(&structpb.Value{}),
	desc(&durationpb.Duration{}),
	desc(&timestamppb.Timestamp{}),
	desc(&fieldmaskpb.FieldMask{}),
	desc(&wrapperspb.BytesValue{}),
}

// FuzzCheck checks that Check agrees with protojson on arbitrary JSON: a value
// passes Check exactly when protojson accepts it (except where Check is
// documented to be stricter), Decode succeeds exactly when Check passes, and
// what Decode builds survives a protojson round trip. Nothing may panic.
func FuzzCheck(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var values []any
		var plain any
		if json.Unmarshal(data, &plain) == nil {
			values = append(values, plain)
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var numbers any
		if dec.Decode(&numbers) == nil {
			values = append(values, numbers)
		}
		for _, v := range values {
			for _, md := range fuzzTargets {
				checkAgainstProtojson(t, v, md)
			}
		}
	})
}

func checkAgainstProtojson(t *testing.T, v any, md protoreflect.MessageDescriptor) {
	errs := Check("spec", v, md)
	doc, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json.Marshal of a decoded value: %v", err)
	}
	pjErr := protojson.Unmarshal(doc, dynamicpb.NewMessage(md))
	if len(errs) == 0 && pjErr != nil {
		t.Fatalf("%s: Check passed but protojson failed: %v\ninput: %s", md.FullName(), pjErr, doc)
	}
	if len(errs) > 0 && pjErr == nil && !onlyStricterRules(errs) {
		t.Fatalf("%s: protojson accepted but Check failed: %v\ninput: %s", md.FullName(), errs, doc)
	}

	var m proto.Message
	if md == virtualService {
		m = &networking.VirtualService{}
	} else {
		m = dynamicpb.NewMessage(md)
	}
	err = Decode("spec", v, m)
	if (err == nil) != (len(errs) == 0) {
		t.Fatalf("%s: Decode error %v, but Check errors %v\ninput: %s", md.FullName(), err, errs, doc)
	}
	if err != nil {
		return
	}
	out, err := protojson.Marshal(m)
	if err != nil {
		t.Fatalf("%s: protojson.Marshal of a decoded message: %v\ninput: %s", md.FullName(), err, doc)
	}
	back := m.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(out, back); err != nil {
		t.Fatalf("%s: protojson.Unmarshal of %s: %v\ninput: %s", md.FullName(), out, err, doc)
	}
	if !proto.Equal(m, back) {
		t.Fatalf("%s: round trip changed the message\ninput: %s\nmarshaled: %s", md.FullName(), doc, out)
	}
}

// onlyStricterRules reports whether every error comes from a rule where Check
// is deliberately stricter than protojson (see the package doc).
func onlyStricterRules(errs Errors) bool {
	for _, e := range errs {
		if !strings.Contains(e.Message, "levels deep") {
			return false
		}
	}
	return true
}

// TestTrickyScalarsAgreeWithProtojson runs the corner cases of protojson's
// number and duration grammar through Check and protojson and expects the
// same verdict from both.
func TestTrickyScalarsAgreeWithProtojson(t *testing.T) {
	numbers := []string{
		"0", "-0", "0.0", "1e2", "1E+2", "1.5e1", "1.55e1", "100e-2", "10e-2", "0.05e2", "5e-1",
		"1e-99999999999", "1e99999999999", "2147483647", "2147483648", "-2147483648", "-2147483649",
		"4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615",
		"18446744073709551616", "100000000000000000000e-1", "3.4028235e38", "3.5e38", "1e308", "1e309",
		"00", "01", "1.", ".5", "+1", " 1", "1 ", "1e", "1e+", "-", "", "NaN", "Infinity", "-Infinity", "inf", "0x10",
	}
	wrappers := []proto.Message{
		&wrapperspb.Int32Value{}, &wrapperspb.Int64Value{}, &wrapperspb.UInt32Value{},
		&wrapperspb.UInt64Value{}, &wrapperspb.FloatValue{}, &wrapperspb.DoubleValue{},
	}
	for _, text := range numbers {
		inputs := []any{text} // the number written as a JSON string
		if isJSONNumber(text) {
			inputs = append(inputs, json.Number(text))
		}
		for _, w := range wrappers {
			for _, v := range inputs {
				checkAgainstProtojson(t, v, desc(w))
			}
		}
	}
	durations := []string{
		"1s", "1.5s", "-1.5s", "+1s", ".5s", "1.s", ".s", "-.s", "s", "-s", "0s", "00s", "01s", "1..5s",
		"1.000000001s", "1.0000000001s", "315576000000s", "315576000001s", "-315576000000.999999999s",
		"99999999999999999999s", "1e3s", "1 s", "1S", "1m", "5x",
	}
	for _, d := range durations {
		checkAgainstProtojson(t, d, desc(&durationpb.Duration{}))
	}
}
