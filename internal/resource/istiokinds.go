package resource

import (
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istioinstall"
)

// KindIstioInstallation is one revision of Istio's control plane on the
// clusters it selects. It lives in an organization: the mesh's control
// plane is the organization's, and no workspace may own it.
const KindIstioInstallation = compile.KindIstioInstallation

func istioKinds() []*Kind {
	return []*Kind{{
		Name: KindIstioInstallation, Plural: "istioinstallations", Short: []string{"istioinstall", "ii"}, Parent: KindOrganization,
		NewSpec:  func() proto.Message { return &pb.IstioInstallationSpec{} },
		Validate: validateIstioInstallation,
	}}
}

func validateIstioInstallation(spec proto.Message) []FieldError {
	var out []FieldError
	for _, p := range istioinstall.Check(spec.(*pb.IstioInstallationSpec)) {
		out = append(out, FieldError{Field: p.Field, Message: p.Message})
	}
	return out
}
