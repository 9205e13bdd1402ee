package fleetapi

import (
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/registry"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/selector"
)

// View is the central control plane as the fleet API sees it. The central
// package implements it (central.Central.FleetView); the handlers reach the
// control plane through nothing else.
//
// Ownership and locking: every method takes the control plane's lock
// itself, copies what it answers and releases the lock before it returns;
// no method calls back into the handler under the lock, except the
// visibility predicate of Services, which the service registry (its own
// lock, not the control loop's) asks per cluster. Values returned are the
// caller's, except bundles' objects and the workspaces' selector sets,
// which the control plane shares and never changes in place (it replaces
// them): callers must not change them either.
//
// Every method only reads, except EndStream, the one thing the fleet API
// does to the agent streams (revoking a cluster's credentials ends its
// stream at once).
type View interface {
	// Ready is closed once the bundles reflect the store.
	Ready() <-chan struct{}
	// Revision is the store revision the bundles reflect.
	Revision() int64
	// Workspaces are every workspace's namespace selector, by FQN (what
	// access.NewView needs).
	Workspaces() map[string]selector.Set
	// Summaries are every cluster's summary, by FQN.
	Summaries() map[string]*pb.ClusterSummary
	// ClusterFQNs are the FQNs of the clusters whose FQN or name is name.
	ClusterFQNs(name string) []string
	// Cluster is the cluster fqn's current bundle and what its agent
	// reported; false when there is no such cluster.
	Cluster(fqn string) (Cluster, bool)
	// ObjectStatus is the status of one record, judged at q.Need.
	ObjectStatus(q StatusQuery) Status
	// ClusterStatus is the status of the cluster fqn itself, judged at
	// need: one row once the cluster is known.
	ClusterStatus(fqn string, need int64) Status
	// Services are the registry's services that f matches, with the
	// instances of clusters visible accepts (registry.Registry.Services:
	// visible must not block).
	Services(visible func(cluster string) bool, f registry.Filter) []registry.Service
	// ExposedBy are, for each service (with the instances given), the
	// WorkspaceSettings whose east-west gateway exposes it, sorted.
	ExposedBy(services []registry.Service) [][]string
	// Plan applies the would-be writes to a copy of the intent index and
	// returns, for every cluster whose bundle they change, its bundle before
	// and after; the multicluster slice (runtime state) is the current one
	// in both. A cluster the writes remove is left out.
	Plan(written []resource.Written) ([]PlannedCluster, error)
	// AgentConnected reports whether an agent of the cluster fqn has a live
	// stream, to this replica or, as far as the store says, to another.
	AgentConnected(fqn string) bool
	// EndStream ends the stream of the cluster fqn's agent to this replica,
	// for the reason why; false when it has none.
	EndStream(fqn, why string) bool
}

// Cluster is a cluster's current bundle and what its agent reported of it.
type Cluster struct {
	FQN, Name string
	// Bundle is the cluster's current bundle with its multicluster slice.
	Bundle   *bundle.Bundle
	Version  string // Bundle's version
	Revision int64  // the store revision Bundle reflects
	// In is what the cluster's agent last reported that compiling needs
	// (namespaces, the cluster's own DestinationRules, ...).
	In compile.Cluster
}

// StatusQuery asks for the status of the record FQN at store revision Need.
type StatusQuery struct {
	FQN string
	// Group is the group the record lives in, whose bundles carry it; ""
	// for a container (a workspace, ...), which has no rows of its own.
	Group string
	Need  int64
}

// Status is the control plane's judgement of a record at a store revision.
type Status struct {
	// Clusters are the record's state in every cluster whose bundle
	// carries it, by cluster name: Applied only once the cluster applied
	// the revision needed.
	Clusters []*pb.ClusterState
	// Revision is the store revision the bundles reflect.
	Revision int64
	// Error, when set, is why the answer cannot be trusted: the bundles
	// cannot be computed up to the revision needed, or a record the answer
	// depends on cannot be used.
	Error string
}

// PlannedCluster is one cluster's bundle before and after a plan.
type PlannedCluster struct {
	Name          string
	Current, Next *bundle.Bundle // Current is nil for a cluster the plan adds
	In            compile.Cluster
}

// States of a resource in one cluster, as agents report them.
const (
	StatePending = "Pending"
	StateApplied = "Applied"
	StateFailed  = "Failed"
)
