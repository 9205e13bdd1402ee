package apiserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/store"
)

// Each bad IstioInstallation is refused at apply time with its field and the
// fix, and the store is left as it was: no version without charts, no
// revision with dots, no value the chart does not have.
func TestBadIstioInstallationsAreRefusedWithTheirFieldAndNothingChanges(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		apply(t, s.client, res("Organization", md("acme"), nil))
		install := func(name string, spec map[string]any) *pb.Resource {
			base := map[string]any{"clusters": map[string]any{"names": []any{"*"}}, "version": "1.31"}
			for k, v := range spec {
				base[k] = v
			}
			return res("IstioInstallation", md(name, "acme"), base)
		}
		apply(t, s.client, install("stable", nil))
		for _, c := range []struct {
			name        string
			res         *pb.Resource
			field, want string
		}{
			{"a version this binary has no charts for", install("old", map[string]any{"version": "1.20"}), "spec.version", `"1.20" is not a version this binary has charts for: use one of 1.31`},
			{"a revision with dots", install("dots", map[string]any{"revision": "1.31.0"}), "spec.revision", `write "1-31-0"`},
			{"a mistyped value", install("typo", map[string]any{"values": map[string]any{"istiod": map[string]any{"replicaCont": 2}}}), "spec.values.istiod.replicaCont", "did you mean replicaCount?"},
			{"a value of the wrong type", install("type", map[string]any{"values": map[string]any{"global": map[string]any{"logAsJson": "yes"}}}), "spec.values.global.logAsJson", "but the chart's value is a boolean"},
			{"a value Flotilla sets", install("mesh", map[string]any{"values": map[string]any{"global": map[string]any{"network": "n"}}}), "spec.values.global.network", "is set by Flotilla from the Cluster's spec.network"},
			{"an unknown field", install("field", map[string]any{"revison": "x"}), "spec.revison", ""},
			{"a change of the stored one", install("stable", map[string]any{"profile": "tiny"}), "spec.profile", `"tiny" is not a profile`},
		} {
			t.Run(c.name, func(t *testing.T) { refusedWith(t, s.client, st, c.res, c.field, c.want) })
		}
	})
}

// A change or a delete that takes an installation's revision from a cluster
// whose pods still run proxies it injected (as its agent reported) is
// refused with the clusters and counts, unless forced; where no pod uses
// it, it goes through.
func TestTakingARevisionFromPodsThatUseItNeedsForce(t *testing.T) {
	eachBackend(t, func(t *testing.T, st store.Store) {
		s := serve(t, st)
		ctx := context.Background()
		install := func(spec map[string]any) *pb.Resource {
			base := map[string]any{"clusters": map[string]any{"labels": map[string]any{"env": "lab"}}, "version": "1.31"}
			for k, v := range spec {
				base[k] = v
			}
			return res("IstioInstallation", md("stable", "acme"), base)
		}
		apply(t, s.client, res("Organization", md("acme"), nil),
			res("Cluster", md("c1", "acme"), map[string]any{"labels": map[string]any{"env": "lab"}}),
			res("Cluster", md("c2", "acme"), map[string]any{"labels": map[string]any{"env": "lab"}}),
			install(nil))
		report := func(cluster string, proxies int) {
			fqn := "organizations/acme/clusters/" + cluster
			epoch, err := st.ClaimStatus(ctx, fqn)
			if err != nil {
				t.Fatal(err)
			}
			body := fmt.Sprintf(`{"istio":{"installed":true,"revisions":[{"name":"default","replicas":1,"readyReplicas":1,"proxies":%d}]}}`, proxies)
			if _, err := st.PutStatus(ctx, []store.StatusWrite{{FQN: fqn, Epoch: epoch, Status: json.RawMessage(body)}}); err != nil {
				t.Fatal(err)
			}
		}
		report("c1", 3)
		report("c2", 0)
		refused := func(r *pb.Resource, field string) {
			t.Helper()
			before := snapshot(t, st)
			_, err := s.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("apply: %v, want InvalidArgument", err)
			}
			found := false
			for _, v := range violationsOf(t, err) {
				found = found || v.GetField() == field && strings.Contains(v.GetMessage(), "c1 (3)") && !strings.Contains(v.GetMessage(), "c2") && strings.Contains(v.GetMessage(), "--force")
			}
			if !found {
				t.Fatalf("no violation at %s naming c1 (3) alone: %v", field, violationsOf(t, err))
			}
			if after := snapshot(t, st); after != before {
				t.Fatal("a refused apply changed the store")
			}
		}
		refused(install(map[string]any{"clusters": map[string]any{"names": []any{"c2"}}}), "spec.clusters")
		refused(install(map[string]any{"revision": "canary"}), "spec.revision")
		before := snapshot(t, st)
		_, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "IstioInstallation", Metadata: md("stable", "acme")}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "c1 (3)") || !strings.Contains(err.Error(), "--force") {
			t.Fatalf("delete: %v, want FailedPrecondition naming c1 (3)", err)
		}
		_, err = s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "Organization", Metadata: md("acme"), Cascade: true}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "c1 (3)") {
			t.Fatalf("cascading delete of the organization: %v, want FailedPrecondition naming c1 (3)", err)
		}
		if after := snapshot(t, st); after != before {
			t.Fatal("a refused delete changed the store")
		}
		// Where no pod uses it, it may go: c2 alone leaves the selection.
		apply(t, s.client, res("Cluster", md("c2", "acme"), map[string]any{"labels": map[string]any{"env": "dev"}}))
		// Forced, it goes everywhere.
		if _, err := s.client.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Force: true, Resources: []*pb.Resource{install(map[string]any{"revision": "canary"})}})); err != nil {
			t.Fatalf("forced apply: %v", err)
		}
		// The pods still run the old revision, which no installation wants
		// now: the canary revision itself is used by none, so it may go.
		report("c1", 2)
		if _, err := s.client.Delete(ctx, connect.NewRequest(&pb.DeleteRequest{Kind: "IstioInstallation", Metadata: md("stable", "acme")})); err != nil {
			t.Fatalf("delete of the canary revision, which no pod uses: %v", err)
		}
	})
}
