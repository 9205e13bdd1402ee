package compile

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Cache remembers, from the last two compilations, which emitted objects
// (kind, namespace, name and spec) passed Istio's validation, and the
// decoded specs of the settings and ServiceRoutes compiled, so that an
// agent's recompile after a small change decodes and validates only what
// changed. What is forgotten is recomputed: a Cache never changes the
// output. The zero value is ready; a nil *Cache remembers nothing.
type Cache struct {
	prev, cur         map[[sha256.Size]byte]bool
	prevSpec, curSpec map[[sha256.Size]byte]proto.Message
	// renders are the IstioInstallations rendered by the last compilation
	// (package istioinstall), and those of this one.
	renders, nextRenders map[[sha256.Size]byte][]*unstructured.Unstructured
}

// spec returns the decoded spec of kind that the cache holds for raw.
func (c *Cache) spec(kind string, raw []byte) (proto.Message, [sha256.Size]byte, bool) {
	if c == nil {
		return nil, [sha256.Size]byte{}, false
	}
	key := c.key(kind, "", "", raw)
	if m, ok := c.curSpec[key]; ok {
		return m, key, true
	}
	m, ok := c.prevSpec[key]
	if ok {
		c.keepSpec(key, m)
	}
	return m, key, ok
}

// keepSpec remembers a decoded spec, which no one changes afterwards.
func (c *Cache) keepSpec(key [sha256.Size]byte, m proto.Message) {
	if c == nil {
		return
	}
	if c.curSpec == nil {
		c.curSpec = map[[sha256.Size]byte]proto.Message{}
	}
	c.curSpec[key] = m
}

func (c *Cache) key(kind, namespace, name string, spec []byte) [sha256.Size]byte {
	if c == nil {
		return [sha256.Size]byte{}
	}
	h := sha256.New()
	for _, s := range []string{kind, namespace, name} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(spec)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// objectKey is the key of an emitted object: its kind, namespace, name and
// the digest of its spec, a value the compiler built (maps with sorted keys
// hashed, slices, strings, bools, int64 and float64).
func (c *Cache) objectKey(kind, namespace, name string, spec any) [sha256.Size]byte {
	h := sha256.New()
	var buf []byte
	for _, s := range []string{kind, namespace, name} {
		buf = append(append(buf, s...), 0)
	}
	buf = appendValue(buf, spec)
	h.Write(buf)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// appendValue appends an unambiguous encoding of v: a type tag, then the
// value (strings and collections length-prefixed).
func appendValue(buf []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(buf, 'n')
	case string:
		buf = binary.AppendUvarint(append(buf, 's'), uint64(len(x)))
		return append(buf, x...)
	case bool:
		if x {
			return append(buf, 't')
		}
		return append(buf, 'f')
	case int64:
		return binary.AppendVarint(append(buf, 'i'), x)
	case int:
		return binary.AppendVarint(append(buf, 'i'), int64(x))
	case float64:
		return binary.BigEndian.AppendUint64(append(buf, 'd'), math.Float64bits(x))
	case []any:
		buf = binary.AppendUvarint(append(buf, 'l'), uint64(len(x)))
		for _, e := range x {
			buf = appendValue(buf, e)
		}
		return buf
	case map[string]any:
		buf = binary.AppendUvarint(append(buf, 'm'), uint64(len(x)))
		for _, k := range slices.Sorted(maps.Keys(x)) {
			buf = appendValue(buf, k)
			buf = appendValue(buf, x[k])
		}
		return buf
	}
	// A type the compiler does not build: make the key unique, so the
	// object is always validated.
	return fmt.Appendf(append(buf, '?'), "%p%v", &v, v)
}

// valid reports whether the object with key was valid before.
func (c *Cache) valid(key [sha256.Size]byte) bool {
	return c != nil && (c.cur[key] || c.prev[key])
}

// keep notes a valid object of this compilation.
func (c *Cache) keep(key [sha256.Size]byte) {
	if c == nil {
		return
	}
	if c.cur == nil {
		c.cur = map[[sha256.Size]byte]bool{}
	}
	c.cur[key] = true
}

// rotate ends a compilation: what it kept is remembered for the next.
func (c *Cache) rotate() {
	if c == nil {
		return
	}
	c.prev, c.cur = c.cur, nil
	c.prevSpec, c.curSpec = c.curSpec, nil
	c.renders, c.nextRenders = c.nextRenders, nil
}
