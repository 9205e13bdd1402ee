// Package agent is the edge control plane that runs in each cluster. It
// dials out to the central control plane, stores every bundle it receives
// in its own cluster, compiles it into native Istio objects and applies
// them, and reports inventory, acknowledgements and drift.
//
//	central ──Bundle──▶ session ──▶ cache (Bundle CR in flotilla-system)
//	                                   │
//	namespaces changed ─┐              ▼
//	resync ─────────────┴──▶ reconcile: compile(bundle, namespaces) ──▶ apply (SSA, prune)
//	                                   │
//	central ◀──Ack/Inventory/Drift── session ◀┘
//
// The cluster is an island: with the central control plane unreachable, a
// restarted agent loads the stored bundle and reconciles from it, and a new
// namespace still gets its policy, because the agent compiles.
package agent
