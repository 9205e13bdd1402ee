package fleetapi

import (
	"testing"

	"connectrpc.com/connect"
)

func TestAClusterIsPickedByFQNOrByItsOneVisibleNameAndAHiddenOneIsNotFound(t *testing.T) {
	const (
		acme  = "organizations/acme/clusters/c1"
		other = "organizations/other/clusters/c1"
		third = "organizations/third/clusters/c1"
	)
	all := func(string) bool { return true }
	only := func(fqns ...string) func(string) bool {
		return func(fqn string) bool {
			for _, f := range fqns {
				if f == fqn {
					return true
				}
			}
			return false
		}
	}
	for name, tc := range map[string]struct {
		name    string
		fqns    []string
		visible func(string) bool
		want    string
		code    connect.Code
		msg     string
	}{
		"by FQN":                            {name: acme, fqns: []string{acme}, visible: all, want: acme},
		"by name, one cluster":              {name: "c1", fqns: []string{acme}, visible: all, want: acme},
		"by name, one of two visible":       {name: "c1", fqns: []string{acme, other}, visible: only(other), want: other},
		"by name, two visible is ambiguous": {name: "c1", fqns: []string{third, acme, other}, visible: only(acme, third), code: connect.CodeInvalidArgument, msg: `invalid_argument: cluster "c1" is ambiguous ([` + acme + " " + third + `]): give its FQN`},
		"a hidden FQN is not found":         {name: acme, fqns: []string{acme}, visible: only(other), code: connect.CodeNotFound, msg: `not_found: no cluster named "` + acme + `"`},
		"a hidden name is not found":        {name: "c1", fqns: []string{acme}, visible: only(), code: connect.CodeNotFound, msg: `not_found: no cluster named "c1"`},
		"no such cluster":                   {name: "c9", visible: all, code: connect.CodeNotFound, msg: `not_found: no cluster named "c9"`},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := pick(tc.name, tc.fqns, tc.visible)
			if tc.code != 0 {
				if connect.CodeOf(err) != tc.code || err.Error() != tc.msg {
					t.Fatalf("pick = %q, %v; want %s: %s", got, err, tc.code, tc.msg)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("pick = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
