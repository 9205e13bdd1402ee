package access

import (
	"strings"

	"flotilla.io/flotilla/internal/authz"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
)

// View decides what of the fleet's runtime state (services and their
// endpoints, compiled output, status counts) a caller sees. It is the
// tenancy model applied to what clusters report:
//
//   - a namespace belongs to the workspace whose selector matches it in
//     that cluster (at most one: workspaces of an organization never
//     overlap), or to no workspace (system namespaces, and the ones nobody
//     claimed);
//   - a workspace's namespaces are seen by whoever may read the workspace;
//   - a namespace of no workspace is seen by whoever may read the cluster;
//   - a cluster itself (its connection, versions, facts) is seen by whoever
//     may read it, or may read a workspace that reaches it.
//
// A View reads nothing after it is made, so it may be asked under any lock.
// It is for one request.
type View struct {
	chk        *authz.Checker
	workspaces map[string][]workspace // by organization FQN
	readable   map[string]bool        // workspace or cluster FQN → may read (cached)
}

type workspace struct {
	fqn string
	sel selector.Set
}

// NewView returns the view of the checker's principal. workspaces are every
// workspace's selector, by FQN (the caller's copy is not kept).
func NewView(chk *authz.Checker, workspaces map[string]selector.Set) *View {
	v := &View{chk: chk, workspaces: map[string][]workspace{}, readable: map[string]bool{}}
	for fqn, sel := range workspaces {
		org := authz.OrgOf(fqn)
		v.workspaces[org] = append(v.workspaces[org], workspace{fqn: fqn, sel: sel})
	}
	return v
}

// Checker is the view's checker.
func (v *View) Checker() *authz.Checker { return v.chk }

func (v *View) can(kind, fqn string) bool {
	if ok, seen := v.readable[fqn]; seen {
		return ok
	}
	ok, _ := v.chk.Can(authz.Read, kind, fqn)
	v.readable[fqn] = ok
	return ok
}

// ReadsCluster reports whether the caller may read the cluster itself.
func (v *View) ReadsCluster(cluster string) bool { return v.can(resource.KindCluster, cluster) }

// Owner is the FQN of the workspace that owns namespace ns of cluster, or
// "" for none.
func (v *View) Owner(cluster, ns string) string {
	name := cluster[strings.LastIndex(cluster, "/")+1:]
	for _, w := range v.workspaces[authz.OrgOf(cluster)] {
		if w.sel.Match(name, ns) {
			return w.fqn
		}
	}
	return ""
}

// Sees reports whether the caller sees namespace ns of cluster.
func (v *View) Sees(cluster, ns string) bool {
	if ws := v.Owner(cluster, ns); ws != "" {
		return v.can(resource.KindWorkspace, ws)
	}
	return v.ReadsCluster(cluster)
}

// SeesCluster reports whether the caller sees the cluster at all: it may
// read it, or a workspace of its that reaches it.
func (v *View) SeesCluster(cluster string) bool {
	if v.ReadsCluster(cluster) {
		return true
	}
	name := cluster[strings.LastIndex(cluster, "/")+1:]
	for _, w := range v.workspaces[authz.OrgOf(cluster)] {
		if w.sel.MatchCluster(name) && v.can(resource.KindWorkspace, w.fqn) {
			return true
		}
	}
	return false
}

// SeesObject reports whether the caller may read the intent object fqn of
// kind (settings, gateways) that owns some runtime output.
func (v *View) SeesObject(kind, fqn string) bool { return v.can(kind, fqn) }
