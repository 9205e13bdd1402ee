package resource

import (
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// KindWorkspaceSetting configures a workspace as a whole: today, exposure of
// its services to other clusters through east-west gateways.
const KindWorkspaceSetting = "WorkspaceSetting"

func settingKinds() []*Kind {
	return []*Kind{{
		Name: KindWorkspaceSetting, Plural: "workspacesettings", Short: []string{"wss"}, Parent: KindWorkspace,
		NewSpec:  func() proto.Message { return &pb.WorkspaceSettingSpec{} },
		Validate: validateWorkspaceSetting,
	}}
}

func validateWorkspaceSetting(spec proto.Message) []FieldError {
	s := spec.(*pb.WorkspaceSettingSpec)
	ew := s.GetEastWestGateway()
	if ew == nil {
		return []FieldError{{Field: "spec.eastWestGateway", Message: "is required: name the east-west gateway (workloadSelector) and, optionally, which services to expose"}}
	}
	var out []FieldError
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
