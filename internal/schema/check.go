package schema

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxDepth is how deeply messages, and JSON inside google.protobuf.Value, may
// nest. It also bounds the walk over self-referencing Go values.
const maxDepth = 64

// checker walks one value and collects its errors. It lives for one Check.
type checker struct {
	errs Errors
}

func (c *checker) addf(path, format string, args ...any) {
	c.errs = append(c.errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// mismatch reports that v is not the JSON kind the field wants; want reads
// like "an object" or "a list".
func (c *checker) mismatch(path, want string, v any) {
	c.addf(path, "expected %s, got %s", want, describe(v))
}

// message checks v as the JSON form of a message of type md.
func (c *checker) message(path string, v any, md protoreflect.MessageDescriptor, depth int) {
	if depth > maxDepth {
		c.addf(path, "nested more than %d levels deep", maxDepth)
		return
	}
	if wkt := wellKnown[md.FullName()]; wkt != nil {
		wkt(c, path, v, md, depth)
		return
	}
	obj, ok := c.object(path, v)
	if !ok {
		return
	}
	fields := md.Fields()
	byNumber := make(map[protoreflect.FieldNumber]string, len(obj)) // field -> key that named it
	byOneof := make(map[int]string)                                 // oneof index -> key that set it
	set := make(map[protoreflect.FieldNumber]bool, len(obj))
	for _, key := range sortedKeys(obj) {
		val := obj[key]
		p := JoinKey(path, key)
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil {
			c.unknownField(p, key, md)
			continue
		}
		if prev, dup := byNumber[fd.Number()]; dup {
			c.addf(p, "%q and %q both set field %q; keep one", prev, key, fd.JSONName())
			continue
		}
		byNumber[fd.Number()] = key
		if isNull(val) && !takesNull(fd) {
			continue // null leaves the field unset
		}
		if od := fd.ContainingOneof(); od != nil {
			if prev, dup := byOneof[od.Index()]; dup {
				c.addf(p, "cannot be set together with %q: both belong to oneof %q, set only one", prev, od.Name())
				continue
			}
			byOneof[od.Index()] = key
		}
		set[fd.Number()] = true
		switch {
		case fd.IsMap():
			c.mapField(p, val, fd, depth)
		case fd.IsList():
			list, ok := asList(val)
			if !ok {
				c.mismatch(p, "a list", val)
				continue
			}
			for i, elem := range list {
				c.single(JoinIndex(p, i), elem, fd, depth)
			}
		default:
			c.single(p, val, fd, depth)
		}
	}
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); fd.Cardinality() == protoreflect.Required && !set[fd.Number()] {
			c.addf(JoinKey(path, fd.JSONName()), "required field is missing")
		}
	}
}

// single checks one value of fd's type: the field itself, a list element or
// a map value. Null is an error here unless the type takes null.
func (c *checker) single(path string, v any, fd protoreflect.FieldDescriptor, depth int) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		c.message(path, v, fd.Message(), depth+1)
	default:
		c.scalar(path, v, fd)
	}
}

func (c *checker) mapField(path string, v any, fd protoreflect.FieldDescriptor, depth int) {
	obj, ok := c.object(path, v)
	if !ok {
		return
	}
	keyFd, valFd := fd.MapKey(), fd.MapValue()
	seen := make(map[string]string, len(obj)) // parsed key -> key as written
	for _, key := range sortedKeys(obj) {
		p := JoinKey(path, key)
		canon, ok := c.mapKey(p, key, keyFd)
		if !ok {
			continue
		}
		if prev, dup := seen[canon]; dup {
			c.addf(p, "map key %q is the same key as %q; keep one", key, prev)
			continue
		}
		seen[canon] = key
		c.single(p, obj[key], valFd, depth)
	}
}

// mapKey parses a map key as protojson does and returns its canonical form.
func (c *checker) mapKey(path, key string, fd protoreflect.FieldDescriptor) (string, bool) {
	if !c.validKey(path, key) {
		return "", false
	}
	var err error
	var canon string
	switch fd.Kind() {
	case protoreflect.StringKind:
		return key, true
	case protoreflect.BoolKind:
		if key == "true" || key == "false" {
			return key, true
		}
		c.addf(path, "invalid map key %q: expected true or false", key)
		return "", false
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		var n int64
		n, err = strconv.ParseInt(key, 10, 32)
		canon = strconv.FormatInt(n, 10)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		var n int64
		n, err = strconv.ParseInt(key, 10, 64)
		canon = strconv.FormatInt(n, 10)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		var n uint64
		n, err = strconv.ParseUint(key, 10, 32)
		canon = strconv.FormatUint(n, 10)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		var n uint64
		n, err = strconv.ParseUint(key, 10, 64)
		canon = strconv.FormatUint(n, 10)
	default:
		c.addf(path, "map keys of kind %s are not supported", fd.Kind())
		return "", false
	}
	if err != nil {
		c.addf(path, "invalid map key %q: expected a decimal %s", key, fd.Kind())
		return "", false
	}
	return canon, true
}

// validKey reports whether a map key is valid UTF-8. json.Marshal would
// replace invalid bytes, which can make two keys one.
func (c *checker) validKey(path, key string) bool {
	if !utf8.ValidString(key) {
		c.addf(path, "map key is not valid UTF-8")
		return false
	}
	return true
}

// object returns v as a JSON object, or reports that it is not one.
func (c *checker) object(path string, v any) (map[string]any, bool) {
	obj, ok := v.(map[string]any)
	if !ok || obj == nil { // json.Marshal writes a nil map as null
		c.mismatch(path, "an object", v)
		return nil, false
	}
	return obj, true
}

// unknownField reports key, which names no field of md, with a hint.
func (c *checker) unknownField(path, key string, md protoreflect.MessageDescriptor) {
	fields := md.Fields()
	var names []string
	var candidates []candidate
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		names = append(names, fd.JSONName())
		candidates = append(candidates,
			candidate{match: fd.JSONName(), suggest: fd.JSONName()},
			candidate{match: string(fd.Name()), suggest: fd.JSONName()})
	}
	switch s, ok := suggest(key, candidates); {
	case ok:
		c.addf(path, "unknown field %q; did you mean %q?", key, s)
	case len(names) == 0:
		c.addf(path, "unknown field %q; %s has no fields", key, md.FullName())
	case len(names) <= maxListed:
		slices.Sort(names)
		c.addf(path, "unknown field %q; valid fields are %s", key, joinNames(names))
	default:
		c.addf(path, "unknown field %q; see message %s for the valid fields", key, md.FullName())
	}
}

// takesNull reports whether null is a value of fd rather than "unset".
func takesNull(fd protoreflect.FieldDescriptor) bool {
	if fd.IsList() || fd.IsMap() {
		return false
	}
	if md := fd.Message(); md != nil {
		return md.FullName() == valueName
	}
	if ed := fd.Enum(); ed != nil {
		return ed.FullName() == nullValueName
	}
	return false
}

func sortedKeys(obj map[string]any) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the order json.Marshal writes them, so protojson sees the same "first" key
	return keys
}

// asList returns v as a JSON list. A nil []any is null to json.Marshal.
func asList(v any) ([]any, bool) {
	list, ok := v.([]any)
	return list, ok && list != nil
}

// isNull reports whether json.Marshal writes v as null.
func isNull(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return x == nil
	case []any:
		return x == nil
	}
	return false
}
