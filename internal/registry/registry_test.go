package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
)

const (
	c1 = "organizations/acme/clusters/c1"
	c2 = "organizations/acme/clusters/c2"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func svc(ns, name string, ready uint32, ports ...*agentv1.ServicePort) *agentv1.ServiceState {
	s := &agentv1.ServiceState{Namespace: ns, Name: name, Ports: ports}
	if ready > 0 {
		s.Endpoints = []*agentv1.LocalityEndpoints{{Region: "region-1", Zone: "zone-1a", Ready: ready}}
	}
	return s
}

func port(name string, n uint32, proto string) *agentv1.ServicePort {
	return &agentv1.ServicePort{Name: name, Port: n, Protocol: proto}
}

func TestTheSameNamespaceAndNameInTwoClustersIsOneService(t *testing.T) {
	r := New()
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{
		svc("shop", "reviews", 2, port("http", 9080, "TCP")), svc("shop", "ratings", 0, port("http", 9080, "TCP"))}}, t0))
	must(t, r.Apply(c2, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{
		svc("shop", "reviews", 3, port("http", 9080, "TCP")), svc("other", "reviews", 1)}}, t0))
	got := r.Services(nil, Filter{})
	var names []string
	for _, s := range got {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	if diff := cmp.Diff([]string{"other/reviews", "shop/ratings", "shop/reviews"}, names); diff != "" {
		t.Fatalf("services (-want +got):\n%s", diff)
	}
	reviews := got[2]
	if len(reviews.Instances) != 2 || reviews.Instances[0].Cluster != c1 || reviews.Instances[0].Ready != 2 || reviews.Instances[1].Ready != 3 {
		t.Fatalf("reviews instances: %+v", reviews.Instances)
	}
	if len(reviews.Conflicts) != 0 || len(reviews.Ports) != 1 {
		t.Fatalf("reviews ports %v, conflicts %v", reviews.Ports, reviews.Conflicts)
	}
	// Only the clusters the caller may see.
	only := r.Services(func(fqn string) bool { return fqn == c2 }, Filter{})
	if len(only) != 2 || len(only[1].Instances) != 1 || only[1].Instances[0].Cluster != c2 {
		t.Fatalf("services visible in c2 only: %+v", only)
	}
	if one := r.Services(nil, Filter{Namespace: "shop", Name: "reviews"}); len(one) != 1 || len(one[0].Instances) != 2 {
		t.Fatalf("shop/reviews alone: %+v", one)
	}
	if ns := r.Services(nil, Filter{Namespace: "shop"}); len(ns) != 2 {
		t.Fatalf("namespace shop: %+v", ns)
	}
}

func TestPortsThatDisagreeAreConflictsNotMerged(t *testing.T) {
	r := New()
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{
		svc("shop", "reviews", 1, port("http", 9080, "TCP"), port("grpc", 9090, "TCP"))}}, t0))
	must(t, r.Apply(c2, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{
		svc("shop", "reviews", 1, port("grpc", 9080, "TCP"), port("grpc", 9091, "TCP"))}}, t0))
	s := r.Services(nil, Filter{})[0]
	want := []string{
		`port 9080 is http/TCP in c1 but grpc/TCP in c2`,
		`port "grpc" is 9090 in c1 but 9091 in c2`,
	}
	if diff := cmp.Diff(want, s.Conflicts); diff != "" {
		t.Fatalf("conflicts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Port{{"http", 9080, "TCP"}, {"grpc", 9090, "TCP"}}, s.Ports); diff != "" {
		t.Fatalf("ports (-want +got):\n%s", diff)
	}
}

func TestADeltaOutOfSequenceIsRefusedAndChangesNothing(t *testing.T) {
	r := New()
	if err := r.Apply(c1, &agentv1.Runtime{Seq: 5, Services: []*agentv1.ServiceState{svc("a", "b", 1)}}, t0); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("a delta before any full report: %v", err)
	}
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{svc("a", "b", 1)}}, t0))
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 2, Services: []*agentv1.ServiceState{svc("a", "b", 4)}}, t0))
	if err := r.Apply(c1, &agentv1.Runtime{Seq: 4, Removed: []string{"a/b"}}, t0); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("a skipped seq: %v", err)
	}
	if s := r.Services(nil, Filter{}); len(s) != 1 || s[0].Instances[0].Ready != 4 {
		t.Fatalf("the refused delta changed the state: %+v", s)
	}
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 3, Removed: []string{"a/b"}}, t0))
	if s := r.Services(nil, Filter{}); len(s) != 0 {
		t.Fatalf("removed service still listed: %+v", s)
	}
}

func TestTheDigestMatchesOnlyTheSameState(t *testing.T) {
	r := New()
	state := map[string]*agentv1.ServiceState{"a/b": svc("a", "b", 1, port("http", 80, "TCP")), "a/c": svc("a", "c", 2)}
	gw := &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: "127.0.0.2", Port: 15443}
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{state["a/c"], state["a/b"]}, EastWestGateway: gw}, t0))
	must(t, r.Check(c1, &agentv1.RuntimeDigest{Seq: 1, Sha256: Digest(state, gw)}))
	if err := r.Check(c1, &agentv1.RuntimeDigest{Seq: 1, Sha256: Digest(state, nil)}); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("a digest without the gateway matched: %v", err)
	}
	other := map[string]*agentv1.ServiceState{"a/b": svc("a", "b", 2, port("http", 80, "TCP")), "a/c": state["a/c"]}
	if err := r.Check(c1, &agentv1.RuntimeDigest{Seq: 1, Sha256: Digest(other, gw)}); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("a digest of another endpoint count matched: %v", err)
	}
	if err := r.Check(c1, &agentv1.RuntimeDigest{Seq: 2, Sha256: Digest(state, gw)}); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("a digest at another seq matched: %v", err)
	}
}

func TestADisconnectedClusterKeepsItsStateMarkedStaleAndADeletedOneLosesIt(t *testing.T) {
	r := New()
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{svc("a", "b", 1)}}, t0))
	r.Disconnected(c1, t0.Add(time.Minute))
	in := r.Services(nil, Filter{})[0].Instances[0]
	if !in.Stale || !in.LastSeen.Equal(t0.Add(time.Minute)) || in.Ready != 1 {
		t.Fatalf("after the disconnect: %+v", in)
	}
	r.Remove(c1)
	if s := r.Services(nil, Filter{}); len(s) != 0 {
		t.Fatalf("a deleted cluster's services remain: %+v", s)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A snapshot restored in another registry is the same state (the digests
// agree) with the liveness given; the generation moves with content only,
// and liveness signals only when it changes.
func TestASnapshotRestoresTheSameStateElsewhere(t *testing.T) {
	r := New()
	gw := &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: "10.0.0.1", Port: 15443}
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, EastWestGateway: gw, Services: []*agentv1.ServiceState{
		svc("shop", "reviews", 2, port("http", 9080, "TCP")), svc("shop", "ratings", 1)}}, t0))
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 2, Removed: []string{"shop/ratings"}}, t0))
	snap, gen := r.Snapshot(c1)
	if snap == nil || gen == 0 || gen != r.Generation(c1) {
		t.Fatalf("snapshot %v at generation %d (registry says %d)", snap, gen, r.Generation(c1))
	}
	if s, g := r.Snapshot(c2); s != nil || g != 0 {
		t.Fatalf("a snapshot of a cluster never reported: %v, %d", s, g)
	}
	r.Disconnected(c1, t0.Add(time.Minute))
	if r.Generation(c1) != gen {
		t.Fatal("a disconnect changed the generation")
	}

	other := New()
	<-r.Changed()
	other.Restore(c1, snap, false, t0.Add(time.Minute))
	select {
	case <-other.Changed():
	default:
		t.Fatal("a restore did not signal")
	}
	if got, want := other.digest(c1), r.digest(c1); got != want {
		t.Fatalf("restored state differs: digest %s, want %s", got, want)
	}
	ins := other.Services(nil, Filter{})[0].Instances[0]
	if !ins.Stale || !ins.LastSeen.Equal(t0.Add(time.Minute)) || ins.Gateway.GetAddress() != "10.0.0.1" {
		t.Fatalf("restored instance: %+v", ins)
	}
	// The cluster's own agent then continues with a full report.
	must(t, other.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true}, t0))

	other.Restore(c2, snap, true, t0)
	<-other.Changed()
	other.SetLive(c2, true, t0.Add(time.Second))
	select {
	case <-other.Changed():
		t.Fatal("a new last-seen time without a change of liveness signalled")
	default:
	}
	other.SetLive(c2, false, t0.Add(2*time.Second))
	select {
	case <-other.Changed():
	default:
		t.Fatal("a change of liveness did not signal")
	}
	if ins := other.Services(nil, Filter{Name: "reviews"})[0].Instances; len(ins) != 1 || ins[0].Cluster != c2 || !ins[0].Stale {
		t.Fatalf("SetLive(false) left c2's instance live: %+v", ins)
	}
}

// digest is the Digest of cluster's state.
func (r *Registry) digest(cluster string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[cluster]
	return Digest(c.services, c.gateway)
}

func TestAReportOverTheBoundsIsRefusedWholeNamingWhatIsOverAndChangesNothing(t *testing.T) {
	long := strings.Repeat("x", MaxNameBytes+1)
	many := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	withSvc := func(f func(s *agentv1.ServiceState)) *agentv1.Runtime {
		s := svc("shop", "web", 1, port("http", 80, "TCP"))
		f(s)
		return &agentv1.Runtime{Seq: 2, Services: []*agentv1.ServiceState{s}}
	}
	services := func(n int) []*agentv1.ServiceState {
		out := make([]*agentv1.ServiceState, n)
		for i := range out {
			out[i] = svc("ns", fmt.Sprintf("s%d", i), 0)
		}
		return out
	}
	for name, c := range map[string]struct {
		report *agentv1.Runtime
		want   string
	}{
		"too many services":       {&agentv1.Runtime{Seq: 1, Full: true, Services: services(MaxServices + 1)}, "services has 50001 entries"},
		"a delta past the bound":  {&agentv1.Runtime{Seq: 2, Services: services(MaxServices)}, "would hold 50001 services"},
		"a long name":             {withSvc(func(s *agentv1.ServiceState) { s.Name = long }), "name has 254 bytes"},
		"a long namespace":        {withSvc(func(s *agentv1.ServiceState) { s.Namespace = long }), "namespace has 254 bytes"},
		"a long address":          {withSvc(func(s *agentv1.ServiceState) { s.ExternalAddress = long }), "address has 254 bytes"},
		"too many labels":         {withSvc(func(s *agentv1.ServiceState) { s.Labels = many(MaxLabels + 1) }), "labels has 65 entries"},
		"too many selector terms": {withSvc(func(s *agentv1.ServiceState) { s.Selector = many(MaxLabels + 1) }), "selector has 65 entries"},
		"a long label value":      {withSvc(func(s *agentv1.ServiceState) { s.Labels = map[string]string{"app": long} }), "labels has an entry over"},
		"too many localities": {withSvc(func(s *agentv1.ServiceState) {
			s.Endpoints = make([]*agentv1.LocalityEndpoints, MaxLocalities+1)
			for i := range s.Endpoints {
				s.Endpoints[i] = &agentv1.LocalityEndpoints{Region: "r", Zone: fmt.Sprint(i), Ready: 1}
			}
		}), "endpoints has 65 localities"},
		"too many ports": {withSvc(func(s *agentv1.ServiceState) {
			for i := range MaxPorts {
				s.Ports = append(s.Ports, port(fmt.Sprint(i), uint32(i+1), "TCP"))
			}
		}), "ports has 257 entries"},
		"a long gateway address": {&agentv1.Runtime{Seq: 2, EastWestGateway: &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: long}}, "eastWestGateway.address"},
		"a long removed key":     {&agentv1.Runtime{Seq: 2, Removed: []string{long + "/" + long}}, "removed has a 509-byte key"},
	} {
		r := New()
		must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: []*agentv1.ServiceState{svc("shop", "web", 1, port("http", 80, "TCP"))}}, t0))
		before, gen := r.Snapshot(c1)
		err := r.Apply(c1, c.report, t0)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c1) {
			t.Errorf("%s: %v; want ErrTooLarge for %s saying %q", name, err, c1, c.want)
			continue
		}
		after, again := r.Snapshot(c1)
		if gen != again || !proto.Equal(before, after) {
			t.Errorf("%s: the refused report changed the registry", name)
		}
	}
	// At the bounds, a report is taken.
	r := New()
	must(t, r.Apply(c1, &agentv1.Runtime{Seq: 1, Full: true, Services: services(MaxServices)}, t0))
}
