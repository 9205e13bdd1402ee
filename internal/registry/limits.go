package registry

import (
	"errors"
	"fmt"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

// Bounds of what one cluster's runtime may hold, so that one compromised
// cluster cannot inflate every replica's memory (each replica holds every
// cluster's registry). At the bounds a cluster's state is about
// MaxServices × 2 KiB, 100 MiB; real clusters are far below (10,000
// services of a few hundred bytes each are 4 MiB).
const (
	MaxServices    = 50_000 // per cluster
	MaxLocalities  = 64     // ready-endpoint entries (instances by locality) per service
	MaxPorts       = 256    // per service
	MaxLabels      = 64     // per service, labels and selector each
	MaxNameBytes   = 253    // namespace, name, region, zone, address, port name and protocol
	MaxLabelKey    = 317    // a Kubernetes label key: a 253-byte prefix, "/", 63 bytes
	MaxLabelValue  = 63
	MaxRemovedKeys = MaxServices // names in one delta's removed
)

// ErrTooLarge says a report is over the registry's bounds: it is refused
// whole and changes nothing.
var ErrTooLarge = errors.New("runtime report over the registry's bounds")

// checkBounds says what in report m is over the bounds, given that the
// cluster holds have (nil for none) before it.
func checkBounds(m *agentv1.Runtime, have map[string]*agentv1.ServiceState) error {
	over := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format+"; the agent must report less (or this server takes no more)", append([]any{ErrTooLarge}, args...)...)
	}
	if n := len(m.GetServices()); n > MaxServices {
		return over("services has %d entries, at most %d", n, MaxServices)
	}
	if n := len(m.GetRemoved()); n > MaxRemovedKeys {
		return over("removed has %d entries, at most %d", n, MaxRemovedKeys)
	}
	for _, k := range m.GetRemoved() {
		if len(k) > 2*MaxNameBytes+1 {
			return over("removed has a %d-byte key, at most %d", len(k), 2*MaxNameBytes+1)
		}
	}
	if g := m.GetEastWestGateway(); g != nil {
		if err := names("eastWestGateway.", g.GetNamespace(), g.GetName(), g.GetAddress()); err != nil {
			return over("%s", err)
		}
	}
	added := 0
	for i, s := range m.GetServices() {
		if err := serviceBounds(s); err != nil {
			return over("services[%d] (%.64s/%.64s): %s", i, s.GetNamespace(), s.GetName(), err)
		}
		if _, ok := have[Key(s.GetNamespace(), s.GetName())]; !ok {
			added++
		}
	}
	if !m.GetFull() && len(have)+added > MaxServices {
		return over("the cluster would hold %d services, at most %d", len(have)+added, MaxServices)
	}
	return nil
}

func serviceBounds(s *agentv1.ServiceState) error {
	if err := names("", s.GetNamespace(), s.GetName(), s.GetExternalAddress()); err != nil {
		return err
	}
	if n := len(s.GetEndpoints()); n > MaxLocalities {
		return fmt.Errorf("endpoints has %d localities, at most %d", n, MaxLocalities)
	}
	for _, e := range s.GetEndpoints() {
		if len(e.GetRegion()) > MaxNameBytes || len(e.GetZone()) > MaxNameBytes {
			return fmt.Errorf("endpoints has a region or zone over %d bytes", MaxNameBytes)
		}
	}
	if n := len(s.GetPorts()); n > MaxPorts {
		return fmt.Errorf("ports has %d entries, at most %d", n, MaxPorts)
	}
	for _, p := range s.GetPorts() {
		if len(p.GetName()) > MaxNameBytes || len(p.GetProtocol()) > MaxNameBytes {
			return fmt.Errorf("ports has a name or protocol over %d bytes", MaxNameBytes)
		}
	}
	if err := labelBounds("labels", s.GetLabels()); err != nil {
		return err
	}
	return labelBounds("selector", s.GetSelector())
}

// names checks a namespace, a name and an address (prefix names their
// message) against MaxNameBytes; it allocates nothing when they fit.
func names(prefix, namespace, name, address string) error {
	switch {
	case len(namespace) > MaxNameBytes:
		return fmt.Errorf("%snamespace has %d bytes, at most %d", prefix, len(namespace), MaxNameBytes)
	case len(name) > MaxNameBytes:
		return fmt.Errorf("%sname has %d bytes, at most %d", prefix, len(name), MaxNameBytes)
	case len(address) > MaxNameBytes:
		return fmt.Errorf("%saddress has %d bytes, at most %d", prefix, len(address), MaxNameBytes)
	}
	return nil
}

func labelBounds(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%s has %d entries, at most %d", field, len(labels), MaxLabels)
	}
	for k, v := range labels {
		if len(k) > MaxLabelKey || len(v) > MaxLabelValue {
			return fmt.Errorf("%s has an entry over %d bytes of key or %d of value", field, MaxLabelKey, MaxLabelValue)
		}
	}
	return nil
}
