package schema

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxListed is how many names a message lists before it points to the type.
const maxListed = 12

// scalar checks v as the JSON form of one value of fd's scalar or enum type.
func (c *checker) scalar(path string, v any, fd protoreflect.FieldDescriptor) {
	switch k := fd.Kind(); k {
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			c.mismatch(path, "a boolean", v)
		}
	case protoreflect.StringKind:
		s, ok := v.(string)
		if !ok {
			c.mismatch(path, "a string", v)
			return
		}
		c.utf8(path, s)
	case protoreflect.BytesKind:
		s, ok := v.(string)
		if !ok {
			c.mismatch(path, "a base64 string", v)
			return
		}
		if !validBase64(s) {
			c.addf(path, "invalid base64 %s: use standard or URL-safe base64", quote(s))
		}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		c.float(path, v, k)
	case protoreflect.EnumKind:
		c.enum(path, v, fd.Enum())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		c.integer(path, v, k)
	default:
		c.addf(path, "fields of kind %s are not supported", k)
	}
}

func (c *checker) utf8(path, s string) {
	if !utf8.ValidString(s) {
		c.addf(path, "string is not valid UTF-8")
	}
}

// integer accepts an integral JSON number in range, or the same number
// written as a string, as protojson does for every integer kind.
func (c *checker) integer(path string, v any, k protoreflect.Kind) {
	text, ok := c.numberText(path, v)
	if !ok {
		return
	}
	if text == "" {
		s, isString := v.(string)
		if !isString || !isJSONNumber(s) {
			c.addf(path, "expected an integer, got %s", describeValue(v))
			return
		}
		text = s
	}
	bits, signed := intKind(k)
	switch intRange(text, bits, signed) {
	case notInteger:
		c.addf(path, "expected an integer, got %s", text)
	case overflow:
		c.addf(path, "value %s overflows %s", text, k)
	case negative:
		c.addf(path, "value %s is negative, but %s holds only values ≥ 0", text, k)
	}
}

func (c *checker) float(path string, v any, k protoreflect.Kind) {
	text, ok := c.numberText(path, v)
	if !ok {
		return
	}
	if text == "" {
		s, isString := v.(string)
		switch {
		case !isString:
			c.mismatch(path, "a number", v)
			return
		case s == "NaN" || s == "Infinity" || s == "-Infinity":
			return
		case !isJSONNumber(s):
			c.addf(path, "expected a number, got %s; special values are written \"NaN\", \"Infinity\" and \"-Infinity\"", describeValue(v))
			return
		}
		text = s
	}
	bits := 64
	if k == protoreflect.FloatKind {
		bits = 32
	}
	if _, err := strconv.ParseFloat(text, bits); err != nil {
		c.addf(path, "value %s overflows %s", text, k)
	}
}

func (c *checker) enum(path string, v any, ed protoreflect.EnumDescriptor) {
	if isNull(v) && ed.FullName() == nullValueName {
		return
	}
	text, ok := c.numberText(path, v)
	if !ok {
		return
	}
	if text != "" {
		switch intRange(text, 32, true) {
		case notInteger:
			c.addf(path, "expected an enum value name or integer, got %s", text)
		case overflow:
			c.addf(path, "value %s overflows an enum number (int32)", text)
		}
		return
	}
	name, isString := v.(string)
	if !isString {
		c.mismatch(path, "an enum value name", v)
		return
	}
	values := ed.Values()
	if values.ByName(protoreflect.Name(name)) != nil {
		return
	}
	var names []string
	var candidates []candidate
	for i := 0; i < values.Len(); i++ {
		n := string(values.Get(i).Name())
		names = append(names, n)
		candidates = append(candidates, candidate{match: n, suggest: n})
	}
	slices.Sort(names)
	msg := fmt.Sprintf("unknown value %s for enum %s", quote(name), ed.FullName())
	if len(names) <= maxListed {
		msg += " (allowed: " + joinNames(names) + ")"
	} else {
		msg += fmt.Sprintf(" (see the enum %s for allowed values)", ed.FullName())
	}
	if s, ok := suggest(name, candidates); ok {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	c.addf(path, "%s", msg)
}

// numberText returns the JSON text json.Marshal writes for v when v is a
// number, "" when v is not a number, and false (after reporting) when v is a
// number that cannot be written as JSON.
func (c *checker) numberText(path string, v any) (string, bool) {
	switch n := v.(type) {
	case float64:
		if math.IsNaN(n) || math.IsInf(n, 0) {
			c.addf(path, "number %v cannot be written as JSON; use the string \"NaN\", \"Infinity\" or \"-Infinity\"", n)
			return "", false
		}
		return marshalNumber(n), true
	case float32:
		if math.IsNaN(float64(n)) || math.IsInf(float64(n), 0) {
			c.addf(path, "number %v cannot be written as JSON; use the string \"NaN\", \"Infinity\" or \"-Infinity\"", n)
			return "", false
		}
		return marshalNumber(n), true
	case json.Number:
		if !isJSONNumber(string(n)) {
			c.addf(path, "invalid number %s", quote(string(n)))
			return "", false
		}
		return string(n), true
	case int:
		return strconv.FormatInt(int64(n), 10), true
	case int8:
		return strconv.FormatInt(int64(n), 10), true
	case int16:
		return strconv.FormatInt(int64(n), 10), true
	case int32:
		return strconv.FormatInt(int64(n), 10), true
	case int64:
		return strconv.FormatInt(n, 10), true
	case uint:
		return strconv.FormatUint(uint64(n), 10), true
	case uint8:
		return strconv.FormatUint(uint64(n), 10), true
	case uint16:
		return strconv.FormatUint(uint64(n), 10), true
	case uint32:
		return strconv.FormatUint(uint64(n), 10), true
	case uint64:
		return strconv.FormatUint(n, 10), true
	}
	return "", true
}

// marshalNumber formats a finite float exactly as json.Marshal does, so the
// checks below see the text protojson will see.
func marshalNumber(f any) string {
	b, err := json.Marshal(f)
	if err != nil {
		return "NaN" // unreachable: callers pass finite numbers
	}
	return string(b)
}

// isJSONNumber reports whether s is exactly one JSON number:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func isJSONNumber(s string) bool {
	_, ok := splitNumber(s)
	return ok
}

type numberParts struct {
	neg       bool
	int, frac string // digits; int has no leading zero ("0" is int "")
	exp       string // with its sign, if any
}

func splitNumber(s string) (numberParts, bool) {
	var p numberParts
	if strings.HasPrefix(s, "-") {
		p.neg, s = true, s[1:]
	}
	switch {
	case strings.HasPrefix(s, "0"):
		s = s[1:]
	case s != "" && '1' <= s[0] && s[0] <= '9':
		n := digits(s)
		p.int, s = s[:n], s[n:]
	default:
		return p, false
	}
	if strings.HasPrefix(s, ".") {
		n := digits(s[1:])
		if n == 0 {
			return p, false
		}
		p.frac, s = s[1:1+n], s[1+n:]
	}
	if s != "" && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		sign := 0
		if s != "" && (s[0] == '+' || s[0] == '-') {
			sign = 1
		}
		n := digits(s[sign:])
		if n == 0 {
			return p, false
		}
		p.exp, s = s[:sign+n], s[sign+n:]
	}
	return p, s == ""
}

func digits(s string) int {
	n := 0
	for n < len(s) && '0' <= s[n] && s[n] <= '9' {
		n++
	}
	return n
}

type rangeResult int

const (
	inRange rangeResult = iota
	notInteger
	overflow
	negative
)

// maxIntDigits bounds the digits of an integer before parsing, as protojson
// does, so that "1e999999999" costs nothing.
const maxIntDigits = 20

// intRange reports whether the JSON number text is an integer that fits the
// given integer type. Like protojson, it accepts exponents and fractions that
// leave an integer: 1e3, 1.5e1, 100e-2.
func intRange(text string, bits int, signed bool) rangeResult {
	p, ok := splitNumber(text)
	if !ok {
		return notInteger
	}
	frac := strings.TrimRight(p.frac, "0")
	if p.int == "" && frac == "" {
		return inRange // zero
	}
	var exp int64
	var err error
	if p.exp != "" {
		exp, err = strconv.ParseInt(p.exp, 10, 32)
	}
	if err != nil {
		if strings.HasPrefix(p.exp, "-") {
			return notInteger // a non-zero number divided by a huge power of ten
		}
		return overflow
	}
	var whole string
	if exp >= 0 {
		if int64(len(frac)) > exp {
			return notInteger
		}
		if int64(len(p.int))+exp > maxIntDigits {
			return overflow
		}
		whole = p.int + frac + strings.Repeat("0", int(exp)-len(frac))
	} else {
		if frac != "" {
			return notInteger
		}
		cut := int64(len(p.int)) + exp
		if cut < 0 || strings.Trim(p.int[cut:], "0") != "" {
			return notInteger
		}
		whole = p.int[:cut]
	}
	if p.neg {
		if !signed {
			return negative
		}
		whole = "-" + whole
	}
	if signed {
		_, err = strconv.ParseInt(whole, 10, bits)
	} else {
		_, err = strconv.ParseUint(whole, 10, bits)
	}
	if err != nil {
		return overflow
	}
	return inRange
}

func intKind(k protoreflect.Kind) (bits int, signed bool) {
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return 32, true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return 64, true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return 32, false
	default:
		return 64, false
	}
}

// validBase64 accepts standard or URL-safe base64, padded or not, as
// protojson does.
func validBase64(s string) bool {
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	_, err := enc.DecodeString(s)
	return err == nil
}

// describe names the JSON kind of v for "expected X, got Y" messages.
func describe(v any) string {
	if isNull(v) {
		return "null"
	}
	switch v.(type) {
	case bool:
		return "boolean"
	case string:
		return "string"
	case map[string]any:
		return "object"
	case []any:
		return "list"
	case float64, float32, json.Number, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return "number"
	}
	return fmt.Sprintf("a Go value of type %T, which is not a JSON value", v)
}

// describeValue is describe, with the text of a string, for fields where a
// string of the right content would have been accepted.
func describeValue(v any) string {
	if s, ok := v.(string); ok {
		return "string " + quote(s)
	}
	return describe(v)
}

// quote quotes s for a message, shortened to keep messages readable.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

func joinNames(names []string) string {
	return strings.Join(names, ", ")
}
