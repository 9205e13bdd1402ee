package discovery

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/selector"
)

// agentSide is what an agent holds of its slice, and what its stream
// delivered.
type agentSide struct {
	mc   *bundle.Multicluster
	mark *Mark
}

// Under a random stream of runtime reports (deltas and full ones, lost and
// restored connections, moved gateways, removed clusters), the slices kept
// incrementally always equal those rebuilt from scratch, their digests
// equal what an agent computes from the slice it holds, and every agent
// that applies what Next sends it, patch after patch, holds exactly its
// current slice.
func TestIncrementalSlicesAlwaysEqualRebuiltOnesAndPatchesReproduceThem(t *testing.T) {
	const acme = "organizations/acme"
	r := rand.New(rand.NewPCG(7, 8))
	reg := registry.New()
	d := New(reg)
	shop, _ := selector.ParseSet([]string{"*/shop", "*/pay"})
	few, _ := selector.ParseSet([]string{"c0/shop", "c1/shop", "c2/shop", "c3/pay"})
	d.in.workspaces[acme+"/tenants/t/workspaces/all"] = shop
	d.in.workspaces[acme+"/tenants/t/workspaces/few"] = few
	d.in.settings["s-all"] = setting{fqn: acme + "/tenants/t/workspaces/all/workspacesettings/s", workspace: acme + "/tenants/t/workspaces/all", org: acme,
		ew: &pb.EastWestGatewaySettings{FailoverPriority: []string{"topology.kubernetes.io/region"}}}
	d.in.settings["s-few"] = setting{fqn: acme + "/tenants/t/workspaces/few/workspacesettings/s", workspace: acme + "/tenants/t/workspaces/few", org: acme,
		ew: &pb.EastWestGatewaySettings{
			WorkloadSelector: &pb.WorkloadSelector{Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}},
			ExposedServices:  []*pb.ExposedServices{{ServiceLabels: map[string]string{"expose": "yes"}}},
		}}
	var clusters []string
	for i := range 6 {
		fqn := fmt.Sprintf("%s/clusters/c%d", acme, i)
		d.in.clusters[fqn] = clusterRef{org: acme, name: fmt.Sprintf("c%d", i)}
		clusters = append(clusters, fqn)
	}
	other := "organizations/other/clusters/c0"
	d.in.clusters[other] = clusterRef{org: "organizations/other", name: "c0"}
	clusters = append(clusters, other)
	d.dirty = true

	seqs := map[string]uint64{}
	service := func() *agentv1.ServiceState {
		ns := []string{"shop", "pay", "istio-system"}[r.IntN(3)]
		if ns == "istio-system" && r.IntN(4) != 0 {
			ns = "shop"
		}
		s := &agentv1.ServiceState{Namespace: ns, Name: fmt.Sprint("svc", r.IntN(4)), Selector: map[string]string{"app": fmt.Sprint("a", r.IntN(2))},
			Ports: []*agentv1.ServicePort{{Name: "http", Port: uint32(8080 + r.IntN(2)), Protocol: "HTTP"}}}
		if r.IntN(2) == 0 {
			s.Labels = map[string]string{"expose": "yes"}
		}
		for range r.IntN(3) {
			s.Endpoints = append(s.Endpoints, &agentv1.LocalityEndpoints{Region: fmt.Sprint("r", r.IntN(2)), Zone: "z", Ready: uint32(r.IntN(3))})
		}
		return s
	}
	gateway := func() *agentv1.EastWestGateway {
		return &agentv1.EastWestGateway{Namespace: "istio-system", Name: "eastwest", Address: fmt.Sprint("10.0.0.", r.IntN(3)), Port: 15443}
	}
	agents := map[string]*agentSide{}
	now := time.Unix(0, 0)
	for step := range 400 {
		c := clusters[r.IntN(len(clusters))]
		switch op := r.IntN(10); {
		case op < 2 || seqs[c] == 0: // a full report
			m := &agentv1.Runtime{Full: true, Seq: seqs[c] + 1}
			for range r.IntN(5) {
				m.Services = append(m.Services, service())
			}
			if r.IntN(2) == 0 {
				m.EastWestGateway = gateway()
			}
			if err := reg.Apply(c, m, now); err != nil {
				t.Fatal(err)
			}
			seqs[c]++
		case op < 7: // a delta
			m := &agentv1.Runtime{Seq: seqs[c] + 1, Services: []*agentv1.ServiceState{service()}}
			if r.IntN(3) == 0 {
				m.Removed = []string{fmt.Sprintf("shop/svc%d", r.IntN(4))}
			}
			if r.IntN(10) == 0 {
				m.EastWestGateway = gateway()
			}
			if err := reg.Apply(c, m, now); err != nil {
				t.Fatal(err)
			}
			seqs[c]++
		case op < 8:
			reg.Disconnected(c, now)
		case op < 9:
			reg.SetLive(c, true, now)
		default:
			reg.Remove(c)
			seqs[c] = 0
		}
		changed := d.Update(nil)

		ref := &Discovery{reg: reg, in: d.in}
		ref.reset()
		ref.rebuild(nil)
		for _, fqn := range clusters {
			got, want := d.Slice(fqn), ref.slice(fqn)
			if !sameJSON(want, got) {
				diff := cmp.Diff(want, got, cmpopts.EquateEmpty())
				t.Fatalf("step %d: %s's incremental slice differs from the rebuilt one (-rebuilt +incremental):\n%s", step, fqn, diff)
			}
			dg, has := d.Digest(fqn)
			if has != (got != nil) || has && dg != got.Digest() {
				t.Fatalf("step %d: %s's kept digest is not its slice's", step, fqn)
			}
			a := agents[fqn]
			if a == nil {
				a = &agentSide{}
				agents[fqn] = a
			}
			before := a.mc
			send := d.Next(fqn, a.mark)
			switch {
			case send.SetWhole:
				a.mc = send.Whole
			case send.Patch != nil:
				a.mc = a.mc.Patch(send.Patch)
			}
			a.mark = send.Mark
			if (a.mc != nil) != has || has && a.mc.Digest() != dg {
				t.Fatalf("step %d: %s holds a slice whose digest is not the one sent (whole %v, patch %+v)", step, fqn, send.SetWhole, send.Patch)
			}
			if !sameJSON(got, a.mc) {
				diff := cmp.Diff(got, a.mc, cmpopts.EquateEmpty())
				t.Fatalf("step %d: %s's agent holds another slice (-server +agent):\n%s", step, fqn, diff)
			}
			if before != nil && a.mc != nil && !changed[fqn] && before.Digest() != a.mc.Digest() {
				t.Fatalf("step %d: %s's slice moved but Update did not say so", step, fqn)
			}
		}
	}
}

func sameJSON(a, b *bundle.Multicluster) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
