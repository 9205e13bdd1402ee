package compile

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
)

// The settings kinds and the scope groups they live in. The central control
// plane puts each organization, tenant and workspace of a cluster's
// organization into its bundle as a group of type GroupTypeOrganization,
// GroupTypeTenant or GroupTypeWorkspace (a workspace's with its namespace
// patterns), holding that scope's setting objects.
const (
	KindOrganizationSetting = "OrganizationSetting"
	KindTenantSetting       = "TenantSetting"
	KindWorkspaceSetting    = "WorkspaceSetting"
	KindTrafficSetting      = "TrafficSetting"
	KindSecuritySetting     = "SecuritySetting"
	KindServiceRoute        = "ServiceRoute"

	GroupTypeOrganization = "organization"
	GroupTypeTenant       = "tenant"
	GroupTypeWorkspace    = "workspace"
	// GroupTypeCluster is a cluster's own group, in its bundle alone: what
	// its spec says of it (bundle.ClusterFacts), and no objects.
	GroupTypeCluster = "cluster"
)

// Levels of the settings hierarchy, highest first.
const (
	LevelOrganization = "organization"
	LevelTenant       = "tenant"
	LevelWorkspace    = "workspace"
	LevelGroup        = "group"
)

// Propagation strategies.
const (
	StrategyReplace  = "REPLACE"
	StrategyStricter = "STRICTER"
)

// Modes.
var (
	MtlsModes          = []string{"STRICT", "PERMISSIVE", "DISABLE"}
	AuthorizationModes = []string{"NAMESPACE", "GROUP", "WORKSPACE", "CLUSTER", "RULES", "DISABLED"}
	ReachabilityModes  = []string{"NAMESPACE", "GROUP", "WORKSPACE", "CLUSTER", "CUSTOM"}
	strategies         = []string{StrategyReplace, StrategyStricter}
)

// Layer is one setting object's contribution to a namespace's settings.
type Layer struct {
	// FQN is the setting object's.
	FQN string
	// Level is LevelOrganization, LevelTenant, LevelWorkspace or LevelGroup.
	Level string
	// Scope is the FQN of the organization, tenant, workspace or group the
	// setting sits in.
	Scope    string
	Traffic  *pb.TrafficSettingSpec
	Security *pb.SecuritySettingSpec
	// TrafficPath and SecurityPath are where Traffic and Security sit in the
	// object ("spec" or "spec.defaultTrafficSetting").
	TrafficPath, SecurityPath string
}

// Setting is one field of a namespace's effective settings and where it
// came from.
type Setting struct {
	// Field is "security.mtlsMode", "traffic.resilience.retries", ...
	Field string
	// Value is a string or a proto message.
	Value any
	// Source is the FQN of the setting object that set it; Level its level.
	Source, Level string
	// LimitSource and LimitLevel name the STRICTER setting that bounds the
	// field, if any ("" otherwise).
	LimitSource, LimitLevel string
	limit                   any
	scope                   string // the group the source sits in
}

// ValueJSON renders the value as JSON.
func (s Setting) ValueJSON() string {
	switch v := s.Value.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case proto.Message:
		return compactJSON(v)
	case jwtRules:
		parts := make([]string, len(v))
		for i, r := range v {
			parts[i] = compactJSON(r)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return "null"
}

// compactJSON is m as JSON without spaces (protojson varies its spacing
// on purpose; this output is stable).
func compactJSON(m proto.Message) string {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Sprintf("%q", err.Error())
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return string(b)
	}
	return out.String()
}

// Problem is a setting that does not take effect, on the object and field
// at fault.
type Problem struct {
	FQN, Field, Message string
}

type jwtRules []*pb.JwtRule

// settingField is one mergeable field: how to read it from a layer and, when
// STRICTER applies to it, how to tell a looser value.
type settingField struct {
	name string
	// security says which half of a layer holds it; path is its path there.
	security bool
	path     string
	get      func(l Layer) any // nil when unset
	// looser says why v relaxes floor, or "" when it does not; nil when
	// STRICTER does not apply (the field is replaced).
	looser func(floor, v any) string
	equal  func(a, b any) bool
}

func protoEqual(a, b any) bool { return proto.Equal(a.(proto.Message), b.(proto.Message)) }

var settingFields = []settingField{
	{name: "security.mtlsMode", security: true, path: "mtlsMode",
		get: func(l Layer) any {
			if v := l.Security.GetMtlsMode(); v != "" {
				return v
			}
			return nil
		},
		looser: func(floor, v any) string {
			if rank(MtlsModes, v.(string)) > rank(MtlsModes, floor.(string)) {
				return fmt.Sprintf("%s is weaker than %s", v, floor)
			}
			return ""
		},
		equal: func(a, b any) bool { return a == b }},
	{name: "security.authorization", security: true, path: "authorization",
		get: func(l Layer) any {
			if v := l.Security.GetAuthorization(); v != nil {
				return v
			}
			return nil
		},
		looser: func(floor, v any) string {
			return authorizationLooser(floor.(*pb.Authorization), v.(*pb.Authorization))
		},
		equal: protoEqual},
	{name: "security.jwt", security: true, path: "jwt",
		get: func(l Layer) any {
			if v := l.Security.GetJwt(); len(v) > 0 {
				return jwtRules(v)
			}
			return nil
		},
		looser: func(floor, v any) string {
			for _, r := range v.(jwtRules) {
				if !slices.ContainsFunc(floor.(jwtRules), func(f *pb.JwtRule) bool { return proto.Equal(f, r) }) {
					return fmt.Sprintf("it accepts issuer %q, which the limit does not", r.GetIssuer())
				}
			}
			return ""
		},
		equal: func(a, b any) bool {
			return slices.EqualFunc(a.(jwtRules), b.(jwtRules), func(x, y *pb.JwtRule) bool { return proto.Equal(x, y) })
		}},
	{name: "traffic.reachability", path: "reachability",
		get: func(l Layer) any {
			if v := l.Traffic.GetReachability(); v != nil {
				return v
			}
			return nil
		},
		looser: func(floor, v any) string { return reachabilityLooser(floor.(*pb.Reachability), v.(*pb.Reachability)) },
		equal:  protoEqual},
	{name: "traffic.egress", path: "egress",
		get: func(l Layer) any {
			if v := l.Traffic.GetEgress(); v != nil {
				return v
			}
			return nil
		}, equal: protoEqual},
	{name: "traffic.resilience.timeout", path: "resilience.timeout",
		get: func(l Layer) any {
			if v := l.Traffic.GetResilience().GetTimeout(); v != "" {
				return v
			}
			return nil
		}, equal: func(a, b any) bool { return a == b }},
	{name: "traffic.resilience.retries", path: "resilience.retries",
		get: func(l Layer) any {
			if v := l.Traffic.GetResilience().GetRetries(); v != nil {
				return v
			}
			return nil
		}, equal: protoEqual},
	{name: "traffic.resilience.connectionPool", path: "resilience.connectionPool",
		get: func(l Layer) any {
			if v := l.Traffic.GetResilience().GetConnectionPool(); v != nil {
				return v
			}
			return nil
		}, equal: protoEqual},
	{name: "traffic.resilience.outlierDetection", path: "resilience.outlierDetection",
		get: func(l Layer) any {
			if v := l.Traffic.GetResilience().GetOutlierDetection(); v != nil {
				return v
			}
			return nil
		}, equal: protoEqual},
}

// rank is v's position in modes, listed strictest first.
func rank(modes []string, v string) int { return slices.Index(modes, v) }

// authorizationRank orders the modes by how much they allow: higher allows
// more. RULES is not ranked.
var authorizationRank = map[string]int{"NAMESPACE": 0, "GROUP": 1, "WORKSPACE": 2, "CLUSTER": 3, "DISABLED": 4}

func authorizationLooser(floor, v *pb.Authorization) string {
	fm, vm := floor.GetMode(), v.GetMode()
	switch {
	case fm == "DISABLED":
		return ""
	case fm == "RULES" && vm != "RULES":
		return fmt.Sprintf("mode %s cannot be shown to allow only what the limit's rules allow: keep mode RULES with some of its allow rules", vm)
	case fm == "RULES":
		for _, r := range v.GetRules().GetAllow() {
			if !slices.ContainsFunc(floor.GetRules().GetAllow(), func(f *pb.AuthorizationRule) bool { return proto.Equal(f, r) }) {
				return fmt.Sprintf("it allows %s → %s, which the limit's rules do not", r.GetFrom(), r.GetTo())
			}
		}
		for _, r := range floor.GetRules().GetDeny() {
			if !slices.ContainsFunc(v.GetRules().GetDeny(), func(f *pb.AuthorizationRule) bool { return proto.Equal(f, r) }) {
				return fmt.Sprintf("it drops the limit's deny rule %s → %s", r.GetFrom(), r.GetTo())
			}
		}
		return ""
	case vm == "RULES":
		return fmt.Sprintf("rules cannot be shown to allow no more than mode %s: use mode %s or a stricter one", fm, fm)
	case authorizationRank[vm] > authorizationRank[fm]:
		return fmt.Sprintf("mode %s allows more callers than %s", vm, fm)
	}
	return ""
}

// reachabilityRank orders the modes by how much they reach.
var reachabilityRank = map[string]int{"NAMESPACE": 0, "GROUP": 1, "WORKSPACE": 2, "CLUSTER": 4}

func reachabilityLooser(floor, v *pb.Reachability) string {
	fm, vm := floor.GetMode(), v.GetMode()
	switch {
	case fm == "CLUSTER":
		return ""
	case fm == "CUSTOM" && vm != "CUSTOM":
		return fmt.Sprintf("mode %s cannot be shown to reach only the limit's hosts: keep mode CUSTOM with some of its hosts", vm)
	case fm == "CUSTOM":
		for _, h := range v.GetHosts() {
			if !slices.Contains(floor.GetHosts(), h) {
				return fmt.Sprintf("it reaches %q, which the limit does not", h)
			}
		}
		return ""
	case vm == "CUSTOM":
		return fmt.Sprintf("custom hosts cannot be shown to reach no more than mode %s: use mode %s or a narrower one", fm, fm)
	case reachabilityRank[vm] > reachabilityRank[fm]:
		return fmt.Sprintf("mode %s reaches more than %s", vm, fm)
	}
	return ""
}

func (l Layer) strategy(f settingField) string {
	if f.security {
		return l.Security.GetPropagationStrategy()
	}
	return l.Traffic.GetPropagationStrategy()
}

func (l Layer) fieldPath(f settingField) string {
	if f.security {
		return l.SecurityPath + "." + f.path
	}
	return l.TrafficPath + "." + f.path
}

// Merge merges layers, highest level first, into the effective settings,
// by field name. A lower level replaces a field unless a higher level set
// it STRICTER and the lower value is looser: the higher value then stays,
// and the lower setting's field is a Problem. Two layers of one level that
// set a field differently conflict: the first stays.
func Merge(layers []Layer) (map[string]Setting, []Problem) {
	out := map[string]Setting{}
	var problems []Problem
	for _, f := range settingFields {
		var cur *Setting
		for _, l := range layers {
			v := f.get(l)
			if v == nil {
				continue
			}
			if cur != nil && cur.Level == l.Level && !f.equal(cur.Value, v) {
				problems = append(problems, Problem{FQN: l.FQN, Field: l.fieldPath(f), Message: fmt.Sprintf(
					"conflicts with %s, which sets %s differently at the same level (%s): %s is kept; set it in one place",
					cur.Source, f.name, l.Level, cur.Source)})
				continue
			}
			next := Setting{Field: f.name, Value: v, Source: l.FQN, Level: l.Level, scope: l.Scope}
			if cur != nil && cur.limit != nil {
				if why := f.looser(cur.limit, v); why != "" {
					problems = append(problems, Problem{FQN: l.FQN, Field: l.fieldPath(f), Message: fmt.Sprintf(
						"relaxes %s, which %s (%s level) set STRICTER: %s; keep it at least as strict as %s",
						f.name, cur.LimitSource, cur.LimitLevel, why, Setting{Value: cur.limit}.ValueJSON())})
					continue
				}
				next.limit, next.LimitSource, next.LimitLevel = cur.limit, cur.LimitSource, cur.LimitLevel
			}
			if f.looser != nil && l.strategy(f) == StrategyStricter {
				next.limit, next.LimitSource, next.LimitLevel = v, l.FQN, l.Level
			}
			cur = &next
		}
		if cur != nil {
			out[f.name] = *cur
		}
	}
	slices.SortFunc(problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.FQN, b.FQN), cmp.Compare(a.Field, b.Field))
	})
	return out, problems
}
