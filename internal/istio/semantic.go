package istio

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const maxPort = 65535

// semantic walks a decoded spec and returns the problems Istio's CRD schema
// accepts but Istio (or the data plane) would not, in field order.
func semantic(prefix string, m proto.Message) []FieldError {
	var w walker
	w.message(prefix, m.ProtoReflect())
	return w.errs
}

type walker struct {
	errs []FieldError
}

func (w *walker) addf(path, format string, args ...any) {
	w.errs = append(w.errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (w *walker) message(path string, m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		p := joinField(path, fd.JSONName())
		if !m.Has(fd) {
			if requiredPort(fd) {
				w.addf(p, "a port number is required, within 1..%d", maxPort)
			}
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			list := v.List()
			if fd.Message() != nil {
				for j := 0; j < list.Len(); j++ {
					w.message(joinIndex(p, j), list.Get(j).Message())
				}
			}
			if isRouteList(fd) {
				w.weights(p, list)
			}
		case fd.IsMap():
			w.mapField(p, fd, v.Map())
		case fd.Message() != nil:
			w.message(p, v.Message())
		case isPortField(fd):
			if n := v.Uint(); n > maxPort {
				w.addf(p, "port %d is out of range: use a port within 1..%d", n, maxPort)
			}
		}
	}
}

// mapField checks the values of a map in key order, and the keys of maps
// keyed by port (PeerAuthentication's portLevelMtls).
func (w *walker) mapField(path string, fd protoreflect.FieldDescriptor, m protoreflect.Map) {
	type entry struct {
		key   protoreflect.MapKey
		label string
	}
	var entries []entry
	m.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		entries = append(entries, entry{k, k.String()})
		return true
	})
	slices.SortFunc(entries, func(a, b entry) int {
		if fd.MapKey().Kind() == protoreflect.Uint32Kind {
			return cmp.Compare(a.key.Uint(), b.key.Uint())
		}
		return cmp.Compare(a.label, b.label)
	})
	for _, e := range entries {
		p := joinKey(path, e.label)
		if fd.MapKey().Kind() == protoreflect.Uint32Kind && fd.Name() == "port_level_mtls" {
			if n := e.key.Uint(); n < 1 || n > maxPort {
				w.addf(p, "port %d is out of range: use a port within 1..%d", n, maxPort)
			}
		}
		if fd.MapValue().Message() != nil {
			w.message(p, m.Get(e.key).Message())
		}
	}
}

// weights checks the destinations of one route: each weight within 0..100,
// and when there is more than one destination, a sum of 100.
func (w *walker) weights(path string, list protoreflect.List) {
	sum := int64(0)
	for j := 0; j < list.Len(); j++ {
		dest := list.Get(j).Message()
		fd := dest.Descriptor().Fields().ByName("weight")
		if fd == nil {
			return
		}
		weight := dest.Get(fd).Int()
		if weight < 0 || weight > 100 {
			w.addf(joinField(joinIndex(path, j), fd.JSONName()), "weight %d is out of range: use a weight within 0..100", weight)
		}
		sum += weight
	}
	if list.Len() > 1 && sum != 100 {
		w.addf(path, "the weights of the %d destinations sum to %d: they must sum to 100", list.Len(), sum)
	}
}

// isRouteList reports whether fd is the weighted destinations of an HTTP,
// TCP or TLS route of a VirtualService.
func isRouteList(fd protoreflect.FieldDescriptor) bool {
	if fd.Name() != "route" || fd.Message() == nil {
		return false
	}
	switch fd.Message().FullName() {
	case "istio.networking.v1alpha3.HTTPRouteDestination", "istio.networking.v1alpha3.RouteDestination":
		return true
	}
	return false
}

// isPortField reports whether fd holds a port number: a uint32 named number,
// port or target_port.
func isPortField(fd protoreflect.FieldDescriptor) bool {
	if fd.Kind() != protoreflect.Uint32Kind || fd.IsList() || fd.IsMap() {
		return false
	}
	switch fd.Name() {
	case "number", "port", "target_port":
		return true
	}
	return false
}

// requiredPort reports whether fd is the number of a port that must be set:
// a Gateway server's port or a ServiceEntry's port.
func requiredPort(fd protoreflect.FieldDescriptor) bool {
	if fd.Name() != "number" {
		return false
	}
	switch fd.ContainingMessage().FullName() {
	case "istio.networking.v1alpha3.Port", "istio.networking.v1alpha3.ServicePort":
		return true
	}
	return false
}

func joinField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func joinIndex(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// joinKey appends a map key as the schema package does: .key when it is an
// identifier, else ["key"].
func joinKey(path, key string) string {
	ident := key != ""
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			ident = false
			break
		}
	}
	if ident {
		return joinField(path, key)
	}
	return path + "[" + strconv.Quote(key) + "]"
}
