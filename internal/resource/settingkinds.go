package resource

import (
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/compile"
)

// The settings kinds. WorkspaceSetting configures a workspace as a whole:
// exposure of its services to other clusters through east-west gateways,
// and its namespaces' default traffic and security settings, as
// OrganizationSetting and TenantSetting do for theirs. TrafficSetting,
// SecuritySetting and ServiceRoute live in BRIDGED groups.
const (
	KindOrganizationSetting = compile.KindOrganizationSetting
	KindTenantSetting       = compile.KindTenantSetting
	KindWorkspaceSetting    = compile.KindWorkspaceSetting
	KindTrafficSetting      = compile.KindTrafficSetting
	KindSecuritySetting     = compile.KindSecuritySetting
	KindServiceRoute        = compile.KindServiceRoute
)

func settingKinds() []*Kind {
	return []*Kind{{
		Name: KindOrganizationSetting, Plural: "organizationsettings", Short: []string{"orgsetting", "os"}, Parent: KindOrganization,
		NewSpec: func() proto.Message { return &pb.OrganizationSettingSpec{} },
		Validate: func(spec proto.Message) []FieldError {
			s := spec.(*pb.OrganizationSettingSpec)
			return validateDefaults(s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting(), true)
		},
		CheckRefs: checkSetting,
	}, {
		Name: KindTenantSetting, Plural: "tenantsettings", Short: []string{"tenantsetting", "tns"}, Parent: KindTenant,
		NewSpec: func() proto.Message { return &pb.TenantSettingSpec{} },
		Validate: func(spec proto.Message) []FieldError {
			s := spec.(*pb.TenantSettingSpec)
			return validateDefaults(s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting(), true)
		},
		CheckRefs: checkSetting,
	}, {
		Name: KindWorkspaceSetting, Plural: "workspacesettings", Short: []string{"wss"}, Parent: KindWorkspace,
		NewSpec:   func() proto.Message { return &pb.WorkspaceSettingSpec{} },
		Validate:  validateWorkspaceSetting,
		CheckRefs: checkSetting,
	}, {
		Name: KindTrafficSetting, Plural: "trafficsettings", Short: []string{"ts"}, Parent: KindGroup,
		NewSpec: func() proto.Message { return &pb.TrafficSettingSpec{} },
		Validate: func(spec proto.Message) []FieldError {
			return fieldErrors(compile.ValidateTrafficSetting("spec", spec.(*pb.TrafficSettingSpec), true))
		},
		CheckRefs: checkSetting,
	}, {
		Name: KindSecuritySetting, Plural: "securitysettings", Short: []string{"ss"}, Parent: KindGroup,
		NewSpec: func() proto.Message { return &pb.SecuritySettingSpec{} },
		Validate: func(spec proto.Message) []FieldError {
			return fieldErrors(compile.ValidateSecuritySetting("spec", spec.(*pb.SecuritySettingSpec), true))
		},
		CheckRefs: checkSetting,
	}, {
		Name: KindServiceRoute, Plural: "serviceroutes", Short: []string{"sr"}, Parent: KindGroup,
		NewSpec: func() proto.Message { return &pb.ServiceRouteSpec{} },
		Validate: func(spec proto.Message) []FieldError {
			return fieldErrors(compile.ValidateServiceRoute(spec.(*pb.ServiceRouteSpec)))
		},
		CheckRefs: checkServiceRoute,
	}}
}

func fieldErrors(ps []compile.FieldProblem) []FieldError {
	out := make([]FieldError, 0, len(ps))
	for _, p := range ps {
		out = append(out, FieldError{Field: p.Field, Message: p.Message})
	}
	return out
}

// validateDefaults checks an organization's, tenant's or workspace's
// defaults; required says at least one must be set.
func validateDefaults(t *pb.TrafficSettingSpec, s *pb.SecuritySettingSpec, required bool) []FieldError {
	var out []FieldError
	if required && t == nil && s == nil {
		return []FieldError{{Field: "spec", Message: "is empty: set defaultTrafficSetting, defaultSecuritySetting or both"}}
	}
	if t != nil {
		out = append(out, fieldErrors(compile.ValidateTrafficSetting("spec.defaultTrafficSetting", t, false))...)
	}
	if s != nil {
		out = append(out, fieldErrors(compile.ValidateSecuritySetting("spec.defaultSecuritySetting", s, false))...)
	}
	return out
}

func validateWorkspaceSetting(spec proto.Message) []FieldError {
	s := spec.(*pb.WorkspaceSettingSpec)
	ew := s.GetEastWestGateway()
	if ew == nil {
		if s.GetDefaultTrafficSetting() == nil && s.GetDefaultSecuritySetting() == nil {
			return []FieldError{{Field: "spec", Message: "is empty: set eastWestGateway (the east-west gateway's workloadSelector and, optionally, which services to expose), defaultTrafficSetting or defaultSecuritySetting"}}
		}
		return validateDefaults(s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting(), false)
	}
	out := validateDefaults(s.GetDefaultTrafficSetting(), s.GetDefaultSecuritySetting(), false)
	sel := ew.GetWorkloadSelector()
	switch {
	case sel == nil:
		out = append(out, FieldError{Field: "spec.eastWestGateway.workloadSelector", Message: "is required: the namespace and labels of the east-west gateway pods, e.g. {namespace: istio-system, labels: {istio: eastwestgateway}}"})
	default:
		if sel.GetNamespace() == "" {
			out = append(out, FieldError{Field: "spec.eastWestGateway.workloadSelector.namespace", Message: "is required: the namespace of the east-west gateway pods, e.g. istio-system"})
		} else {
			for _, m := range validation.IsDNS1123Label(sel.GetNamespace()) {
				out = append(out, FieldError{Field: "spec.eastWestGateway.workloadSelector.namespace", Message: fmt.Sprintf("%q: %s", sel.GetNamespace(), m)})
			}
		}
		if len(sel.GetLabels()) == 0 {
			out = append(out, FieldError{Field: "spec.eastWestGateway.workloadSelector.labels", Message: "is required: the labels of the east-west gateway pods, e.g. {istio: eastwestgateway}"})
		}
		out = append(out, validateLabels("spec.eastWestGateway.workloadSelector.labels", sel.GetLabels())...)
	}
	for i, e := range ew.GetExposedServices() {
		path := "spec.eastWestGateway.exposedServices[" + strconv.Itoa(i) + "].serviceLabels"
		if len(e.GetServiceLabels()) == 0 {
			out = append(out, FieldError{Field: path, Message: "is empty and would match every service: to expose them all, leave exposedServices empty"})
		}
		out = append(out, validateLabels(path, e.GetServiceLabels())...)
	}
	for i, key := range ew.GetFailoverPriority() {
		for _, m := range validation.IsQualifiedName(key) {
			out = append(out, FieldError{Field: "spec.eastWestGateway.failoverPriority[" + strconv.Itoa(i) + "]", Message: fmt.Sprintf("%q is not a label key: %s", key, m)})
		}
	}
	return out
}

// validateLabels checks a label map, in key order.
func validateLabels(path string, labels map[string]string) []FieldError {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []FieldError
	for _, k := range keys {
		for _, m := range validation.IsQualifiedName(k) {
			out = append(out, FieldError{Field: path + "." + k, Message: "invalid key: " + m})
		}
		for _, m := range validation.IsValidLabelValue(labels[k]) {
			out = append(out, FieldError{Field: path + "." + k, Message: fmt.Sprintf("invalid value %q: %s", labels[k], m)})
		}
	}
	return out
}
