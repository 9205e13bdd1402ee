package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istioinstall"
	"flotilla.io/flotilla/internal/store"
)

// KindIstioInstallation is one revision of Istio's control plane on the
// clusters it selects. It lives in an organization: the mesh's control
// plane is the organization's, and no workspace may own it.
const KindIstioInstallation = compile.KindIstioInstallation

func istioKinds() []*Kind {
	return []*Kind{{
		Name: KindIstioInstallation, Plural: "istioinstallations", Short: []string{"istioinstall", "ii"}, Parent: KindOrganization,
		NewSpec:     func() proto.Message { return &pb.IstioInstallationSpec{} },
		Validate:    validateIstioInstallation,
		CheckRefs:   checkIstioInstallation,
		CheckDelete: checkIstioInstallationDelete,
	}}
}

func validateIstioInstallation(spec proto.Message) []FieldError {
	var out []FieldError
	for _, p := range istioinstall.Check(spec.(*pb.IstioInstallationSpec)) {
		out = append(out, FieldError{Field: p.Field, Message: p.Message})
	}
	return out
}

// checkIstioInstallation refuses, unless forced, a change that takes the
// installation's revision from clusters where pods still run proxies it
// injected: they would lose their control plane.
func checkIstioInstallation(ctx context.Context, r store.Reader, obj *Object) ([]FieldError, error) {
	if obj.Force {
		return nil, nil
	}
	old, err := r.Get(ctx, obj.FQN())
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	next := obj.Spec.(*pb.IstioInstallationSpec)
	inUse, err := revisionInUse(ctx, r, old, next)
	if err != nil || inUse == "" {
		return nil, err
	}
	field := "spec.clusters"
	if oldSpec, err := storedInstallation(old); err == nil && istioinstall.Revision(oldSpec) != istioinstall.Revision(next) {
		field = "spec.revision"
	}
	return []FieldError{{Field: field, Message: inUse + ": move those workloads to another revision first (label their namespaces with its tag and restart them; `flotilla get istio` counts them), or apply with --force"}}, nil
}

func checkIstioInstallationDelete(ctx context.Context, r store.Reader, rec store.Record) (string, error) {
	inUse, err := revisionInUse(ctx, r, rec, nil)
	if err != nil || inUse == "" {
		return "", err
	}
	return inUse + ": move those workloads to another revision first (`flotilla get istio` counts them), or delete with --force", nil
}

func storedInstallation(rec store.Record) (*pb.IstioInstallationSpec, error) {
	spec := &pb.IstioInstallationSpec{}
	if err := protojson.Unmarshal(rec.Spec, spec); err != nil {
		return nil, fmt.Errorf("stored %s: %w", rec.FQN, err)
	}
	return spec, nil
}

// revisionInUse says where the stored installation's revision would leave
// clusters whose pods still run proxies it injected (as their agents last
// reported), if its spec became next (nil: it is deleted); empty when
// nowhere.
func revisionInUse(ctx context.Context, r store.Reader, old store.Record, next *pb.IstioInstallationSpec) (string, error) {
	oldSpec, err := storedInstallation(old)
	if err != nil {
		return "", err
	}
	rev := istioinstall.Revision(oldSpec)
	clusters, err := r.List(ctx, store.Query{Kind: KindCluster, Ancestor: OrganizationOf(old.FQN)})
	if err != nil {
		return "", err
	}
	var where []string
	for _, c := range clusters {
		var facts bundle.ClusterFacts
		_ = json.Unmarshal(c.Spec, &facts) // the store holds validated specs
		if !compile.SelectsCluster(oldSpec.GetClusters(), c.Name, &facts) {
			continue
		}
		if next != nil && istioinstall.Revision(next) == rev && compile.SelectsCluster(next.GetClusters(), c.Name, &facts) {
			continue
		}
		if n := proxiesOf(c.Status, rev); n > 0 {
			where = append(where, fmt.Sprintf("%s (%d)", c.Name, n))
		}
	}
	if len(where) == 0 {
		return "", nil
	}
	return fmt.Sprintf("revision %q would leave cluster(s) where pods still run proxies it injected: %s", rev, strings.Join(where, ", ")), nil
}

// proxiesOf reads, from a Cluster's status as its agent last reported it,
// how many pods revision injected.
func proxiesOf(status json.RawMessage, revision string) int {
	var st struct {
		Istio struct {
			Revisions []struct {
				Name    string `json:"name"`
				Proxies int    `json:"proxies"`
			} `json:"revisions"`
		} `json:"istio"`
	}
	if len(status) == 0 || json.Unmarshal(status, &st) != nil {
		return 0
	}
	for _, r := range st.Istio.Revisions {
		if r.Name == revision {
			return r.Proxies
		}
	}
	return 0
}
