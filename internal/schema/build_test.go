package schema

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/google/go-cmp/cmp"
	networking "istio.io/api/networking/v1"
	security "istio.io/api/security/v1"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// randomFor builds a random value for message md from its own fields:
// mostly well-typed, sometimes not (a wrong type, an unknown enum, a
// fractional integer, a bad duration), so that both Build's yes and its
// no are exercised.
func randomFor(rng *rand.Rand, md protoreflect.MessageDescriptor, depth int) any {
	switch md.FullName() {
	case "google.protobuf.Duration":
		return []any{"10s", "0.25s", "1.000000001s", "-1s", "5m", "1.5", 3.0}[rng.IntN(7)]
	case "google.protobuf.BoolValue":
		return []any{true, false, "x"}[rng.IntN(3)]
	case "google.protobuf.UInt32Value", "google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.UInt64Value":
		return []any{0.0, 7.0, -1.0, 1.5, 1e12, "3"}[rng.IntN(6)]
	case "google.protobuf.DoubleValue":
		return []any{0.5, 2.0}[rng.IntN(2)]
	case "google.protobuf.StringValue":
		return "s"
	}
	out := map[string]any{}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		if rng.IntN(3) != 0 || depth > 4 {
			continue
		}
		fd := fields.Get(i)
		one := func() any { return randomScalar(rng, fd, depth) }
		switch {
		case fd.IsMap():
			m := map[string]any{}
			for j := range rng.IntN(3) {
				m[fmt.Sprintf("k%d", j)] = randomScalar(rng, fd.MapValue(), depth)
			}
			out[fd.JSONName()] = m
		case fd.IsList():
			l := make([]any, rng.IntN(3))
			for j := range l {
				l[j] = one()
			}
			out[fd.JSONName()] = l
		default:
			out[fd.JSONName()] = one()
		}
	}
	return out
}

func randomScalar(rng *rand.Rand, fd protoreflect.FieldDescriptor, depth int) any {
	if rng.IntN(20) == 0 {
		return []any{nil, "wrong", 1.25, true, []any{}}[rng.IntN(5)]
	}
	switch fd.Kind() {
	case protoreflect.MessageKind:
		return randomFor(rng, fd.Message(), depth+1)
	case protoreflect.StringKind:
		return []string{"", "a", "shop/*", "ünïcode"}[rng.IntN(4)]
	case protoreflect.BoolKind:
		return rng.IntN(2) == 0
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		if rng.IntN(5) == 0 {
			return "NOT_A_VALUE"
		}
		return string(vals.Get(rng.IntN(vals.Len())).Name())
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		return rng.Float64() * 100
	}
	return []float64{0, 1, 80, 65535, -3, 4294967296}[rng.IntN(6)]
}

// Build agrees with the JSON round trip it replaces: whenever it says yes,
// the message equals what protojson decodes from the value's JSON; and a
// value protojson refuses is never one Build accepts.
func TestBuildAgreesWithProtojson(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	msgs := []proto.Message{
		&networking.DestinationRule{}, &networking.VirtualService{}, &networking.Sidecar{}, &networking.Gateway{},
		&security.PeerAuthentication{}, &security.AuthorizationPolicy{}, &security.RequestAuthentication{},
		&pb.ServiceRouteSpec{}, &pb.SecuritySettingSpec{}, &pb.TrafficSettingSpec{}, &pb.WorkspaceSettingSpec{}, &pb.IngressGatewaySpec{},
	}
	built := 0
	for i := range 20000 {
		proto := msgs[i%len(msgs)]
		v := randomFor(rng, proto.ProtoReflect().Descriptor(), 0)
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		viaJSON := proto.ProtoReflect().New().Interface()
		jsonErr := protojson.Unmarshal(raw, viaJSON)
		direct := proto.ProtoReflect().New()
		ok := Build(direct, v)
		if !ok {
			continue
		}
		built++
		if jsonErr != nil {
			t.Fatalf("Build accepted what protojson refuses (%v): %s", jsonErr, raw)
		}
		if diff := cmp.Diff(viaJSON, direct.Interface(), protocmp.Transform()); diff != "" {
			t.Fatalf("Build and protojson differ for %s:\n%s", raw, diff)
		}
	}
	if built < 3000 {
		t.Fatalf("Build accepted only %d of 20,000 values: the test does not exercise it", built)
	}
}
