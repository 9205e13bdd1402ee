package apiserver_test

import (
	"context"
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
			t.Run(c.name, func(t *testing.T) {
				before := snapshot(t, st)
				_, err := s.client.Apply(context.Background(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{c.res}}))
				if connect.CodeOf(err) != connect.CodeInvalidArgument {
					t.Fatalf("apply: %v, want InvalidArgument", err)
				}
				found := false
				for _, v := range violationsOf(t, err) {
					if v.GetField() == c.field && strings.Contains(v.GetMessage(), c.want) {
						found = true
					}
				}
				if !found {
					t.Fatalf("no violation at %s saying %q: %v", c.field, c.want, violationsOf(t, err))
				}
				if after := snapshot(t, st); after != before {
					t.Fatal("a refused apply changed the store")
				}
			})
		}
	})
}
