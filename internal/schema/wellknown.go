package schema

import (
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	valueName     protoreflect.FullName = "google.protobuf.Value"
	nullValueName protoreflect.FullName = "google.protobuf.NullValue"
)

// wellKnownFunc checks the special JSON form of a well-known type. Null has
// already been handled for fields; here it is an error unless the type takes
// it (google.protobuf.Value).
type wellKnownFunc func(c *checker, path string, v any, md protoreflect.MessageDescriptor, depth int)

// wellKnown maps each well-known type with a special JSON form to its check.
// It is never modified.
var wellKnown = map[protoreflect.FullName]wellKnownFunc{
	"google.protobuf.Any":         (*checker).anyMessage,
	"google.protobuf.Duration":    (*checker).duration,
	"google.protobuf.Timestamp":   (*checker).timestamp,
	"google.protobuf.FieldMask":   (*checker).fieldMask,
	"google.protobuf.Empty":       (*checker).empty,
	"google.protobuf.Struct":      (*checker).structMessage,
	"google.protobuf.ListValue":   (*checker).listValue,
	valueName:                     (*checker).valueMessage,
	"google.protobuf.BoolValue":   (*checker).wrapper,
	"google.protobuf.StringValue": (*checker).wrapper,
	"google.protobuf.BytesValue":  (*checker).wrapper,
	"google.protobuf.Int32Value":  (*checker).wrapper,
	"google.protobuf.Int64Value":  (*checker).wrapper,
	"google.protobuf.UInt32Value": (*checker).wrapper,
	"google.protobuf.UInt64Value": (*checker).wrapper,
	"google.protobuf.FloatValue":  (*checker).wrapper,
	"google.protobuf.DoubleValue": (*checker).wrapper,
}

// wrapper checks a wrapper such as google.protobuf.UInt32Value, written as
// its plain value.
func (c *checker) wrapper(path string, v any, md protoreflect.MessageDescriptor, _ int) {
	fd := md.Fields().ByName("value")
	if fd == nil {
		c.addf(path, "%s has no value field", md.FullName())
		return
	}
	c.scalar(path, v, fd)
}

func (c *checker) anyMessage(path string, v any, md protoreflect.MessageDescriptor, _ int) {
	if _, ok := c.object(path, v); ok {
		c.addf(path, "%s is not supported here; put the message itself in this field's place", md.FullName())
	}
}

func (c *checker) empty(path string, v any, md protoreflect.MessageDescriptor, _ int) {
	obj, ok := c.object(path, v)
	if !ok {
		return
	}
	for _, key := range sortedKeys(obj) {
		c.addf(JoinKey(path, key), "unknown field %q; %s takes no fields, write {}", key, md.FullName())
	}
}

func (c *checker) structMessage(path string, v any, _ protoreflect.MessageDescriptor, depth int) {
	if obj, ok := c.object(path, v); ok {
		c.structFields(path, obj, depth)
	}
}

func (c *checker) listValue(path string, v any, _ protoreflect.MessageDescriptor, depth int) {
	list, ok := asList(v)
	if !ok {
		c.mismatch(path, "a list", v)
		return
	}
	c.listValues(path, list, depth)
}

func (c *checker) valueMessage(path string, v any, _ protoreflect.MessageDescriptor, depth int) {
	c.value(path, v, depth)
}

// value checks any JSON value, for google.protobuf.Value.
func (c *checker) value(path string, v any, depth int) {
	if depth > maxDepth {
		c.addf(path, "nested more than %d levels deep", maxDepth)
		return
	}
	if isNull(v) {
		return
	}
	switch x := v.(type) {
	case bool:
	case string:
		c.utf8(path, x)
	case map[string]any:
		c.structFields(path, x, depth)
	case []any:
		c.listValues(path, x, depth)
	default:
		text, ok := c.numberText(path, v)
		switch {
		case !ok:
		case text == "":
			c.addf(path, "expected a JSON value, got %s", describe(v))
		default:
			if _, err := strconv.ParseFloat(text, 64); err != nil {
				c.addf(path, "value %s overflows double", text)
			}
		}
	}
}

func (c *checker) structFields(path string, obj map[string]any, depth int) {
	for _, key := range sortedKeys(obj) {
		p := JoinKey(path, key)
		if c.validKey(p, key) {
			c.value(p, obj[key], depth+1)
		}
	}
}

func (c *checker) listValues(path string, list []any, depth int) {
	for i, elem := range list {
		c.value(JoinIndex(path, i), elem, depth+1)
	}
}

// Durations are bounded to ±10,000 years, as in duration.proto.
const maxDurationSeconds = 315576000000

func (c *checker) duration(path string, v any, _ protoreflect.MessageDescriptor, _ int) {
	s, ok := v.(string)
	if !ok {
		c.mismatch(path, `a duration string such as "1.5s"`, v)
		return
	}
	secs, ok := parseDuration(s)
	if !ok {
		c.addf(path, "invalid duration %s: use a value like \"1.5s\" (seconds, with up to 9 decimals, and the unit s)", quote(s))
		return
	}
	if secs < -maxDurationSeconds || secs > maxDurationSeconds {
		c.addf(path, "duration %s is out of range: it must be within ±%ds", quote(s), maxDurationSeconds)
	}
}

// parseDuration parses the proto3 JSON form of a Duration, a decimal number
// of seconds followed by "s", and returns its whole seconds. The grammar is
// protojson's: [+-]? (0 | [1-9][0-9]*)? (. [0-9]{0,9})? s, with at least one
// of the integer part and the point.
func parseDuration(s string) (int64, bool) {
	body, ok := strings.CutSuffix(s, "s")
	if !ok {
		return 0, false
	}
	neg := false
	if body != "" && (body[0] == '+' || body[0] == '-') {
		neg, body = body[0] == '-', body[1:]
	}
	intPart, frac, hasPoint := strings.Cut(body, ".")
	switch {
	case intPart == "" && !hasPoint:
		return 0, false
	case len(intPart) > 1 && intPart[0] == '0':
		return 0, false
	case digits(intPart) != len(intPart) || digits(frac) != len(frac) || len(frac) > 9:
		return 0, false
	}
	var secs int64
	if intPart != "" {
		n, err := strconv.ParseInt(intPart, 10, 64)
		if err != nil {
			return 0, false
		}
		secs = n
	}
	if neg {
		secs = -secs
	}
	return secs, true
}

// Timestamps are bounded to years 0001 to 9999, as in timestamp.proto.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

func (c *checker) timestamp(path string, v any, _ protoreflect.MessageDescriptor, _ int) {
	s, ok := v.(string)
	if !ok {
		c.mismatch(path, `an RFC 3339 timestamp string such as "2006-01-02T15:04:05Z"`, v)
		return
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || tooManyFractionDigits(s) {
		c.addf(path, "invalid timestamp %s: use RFC 3339, e.g. \"2006-01-02T15:04:05.5Z\", with at most 9 fractional digits", quote(s))
		return
	}
	if secs := t.Unix(); secs < minTimestampSeconds || secs > maxTimestampSeconds {
		c.addf(path, "timestamp %s is out of range: the year must be within 0001 to 9999", quote(s))
	}
}

// tooManyFractionDigits reports whether the seconds of an RFC 3339 time have
// more than nanosecond precision, which time.Parse accepts but proto cannot
// hold.
func tooManyFractionDigits(s string) bool {
	point := strings.LastIndexByte(s, '.')
	zone := strings.LastIndexAny(s, "Z-+")
	return point >= 0 && zone >= point && zone-point > len(".999999999")
}

func (c *checker) fieldMask(path string, v any, _ protoreflect.MessageDescriptor, _ int) {
	s, ok := v.(string)
	if !ok {
		c.mismatch(path, `a field mask string such as "http,tcp"`, v)
		return
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return
	}
	for _, p := range strings.Split(s, ",") {
		if strings.Contains(p, "_") || !protoreflect.FullName(snakeCase(p)).IsValid() {
			c.addf(path, "invalid field mask path %s: write lowerCamel field names separated by dots, and paths separated by commas", quote(p))
		}
	}
}

// snakeCase turns a lowerCamel path into proto field names: "retryOn" ->
// "retry_on".
func snakeCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if ch := s[i]; 'A' <= ch && ch <= 'Z' {
			b.WriteByte('_')
			b.WriteByte(ch + ('a' - 'A'))
		} else {
			b.WriteByte(ch)
		}
	}
	return b.String()
}
