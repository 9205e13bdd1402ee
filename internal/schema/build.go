package schema

import (
	"math"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// Build sets msg from v (maps, slices, strings, bools and numbers, as
// decoded from JSON or built by a program) the way protojson would decode
// v's JSON, without encoding it: scalars, enums by name, nested messages,
// lists, maps with string keys, google.protobuf.Duration in its JSON form
// and the scalar wrappers. It reports false on anything else or anything
// wrong (msg is then partly set), and the caller takes the JSON path, which
// says what.
func Build(msg protoreflect.Message, v any) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	fields := msg.Descriptor().Fields()
	for key, val := range m {
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil {
			return false
		}
		if val == nil {
			if fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Value" {
				return false // null is a value there
			}
			continue
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if set := msg.WhichOneof(od); set != nil && set != fd {
				return false // two members of one oneof
			}
		}
		switch {
		case fd.IsMap():
			entries, ok := val.(map[string]any)
			if !ok || fd.MapKey().Kind() != protoreflect.StringKind {
				return false
			}
			mp := msg.Mutable(fd).Map()
			for k, ev := range entries {
				mv, ok := elem(msg, fd.MapValue(), ev, mp.NewValue)
				if !ok {
					return false
				}
				mp.Set(protoreflect.ValueOfString(k).MapKey(), mv)
			}
		case fd.IsList():
			items, ok := val.([]any)
			if !ok {
				return false
			}
			list := msg.Mutable(fd).List()
			for _, item := range items {
				lv, ok := elem(msg, fd, item, list.NewElement)
				if !ok {
					return false
				}
				list.Append(lv)
			}
		default:
			sv, ok := elem(msg, fd, val, func() protoreflect.Value { return msg.NewField(fd) })
			if !ok {
				return false
			}
			msg.Set(fd, sv)
		}
	}
	return true
}

// elem converts one value of field fd (a list element, a map value or a
// singular field).
func elem(_ protoreflect.Message, fd protoreflect.FieldDescriptor, v any, newMsg func() protoreflect.Value) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		nv := newMsg()
		switch fd.Message().FullName() {
		case "google.protobuf.Duration":
			return nv, duration(nv.Message(), v)
		case "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.UInt32Value",
			"google.protobuf.Int32Value", "google.protobuf.UInt64Value", "google.protobuf.Int64Value", "google.protobuf.DoubleValue":
			inner := nv.Message().Descriptor().Fields().ByName("value")
			x, ok := scalar(inner, v)
			if ok {
				nv.Message().Set(inner, x)
			}
			return nv, ok
		}
		if strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			return nv, false // Struct, Any, ...: the slow path
		}
		return nv, Build(nv.Message(), v)
	}
	return scalar(fd, v)
}

func scalar(fd protoreflect.FieldDescriptor, v any) (protoreflect.Value, bool) {
	num := func() (float64, bool) {
		switch n := v.(type) {
		case int64:
			return float64(n), true
		case int:
			return float64(n), true
		case float64:
			return n, n == math.Trunc(n)
		}
		return 0, false
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		s, ok := v.(string)
		return protoreflect.ValueOfString(s), ok
	case protoreflect.BoolKind:
		b, ok := v.(bool)
		return protoreflect.ValueOfBool(b), ok
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			return protoreflect.Value{}, false
		}
		ev := fd.Enum().Values().ByName(protoreflect.Name(s))
		if ev == nil {
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfEnum(ev.Number()), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		n, ok := num()
		return protoreflect.ValueOfInt32(int32(n)), ok && n >= math.MinInt32 && n <= math.MaxInt32
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		n, ok := num()
		return protoreflect.ValueOfUint32(uint32(n)), ok && n >= 0 && n <= math.MaxUint32
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n, ok := num()
		return protoreflect.ValueOfInt64(int64(n)), ok
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		n, ok := num()
		return protoreflect.ValueOfUint64(uint64(n)), ok && n >= 0
	case protoreflect.DoubleKind:
		switch n := v.(type) {
		case float64:
			return protoreflect.ValueOfFloat64(n), true
		case int64:
			return protoreflect.ValueOfFloat64(float64(n)), true
		}
	}
	return protoreflect.Value{}, false
}

// duration sets a google.protobuf.Duration from its JSON form: seconds
// with up to nine decimals and the unit s ("10s", "0.25s").
func duration(m protoreflect.Message, v any) bool {
	s, ok := v.(string)
	if !ok || !strings.HasSuffix(s, "s") {
		return false
	}
	s = strings.TrimSuffix(s, "s")
	whole, frac, _ := strings.Cut(s, ".")
	if strings.HasPrefix(whole, "-") || whole == "" || len(frac) > 9 {
		return false
	}
	secs, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return false
	}
	var nanos int64
	if frac != "" {
		n, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil {
			return false
		}
		nanos = n
	}
	fields := m.Descriptor().Fields()
	m.Set(fields.ByName("seconds"), protoreflect.ValueOfInt64(secs))
	m.Set(fields.ByName("nanos"), protoreflect.ValueOfInt32(int32(nanos)))
	return true
}
