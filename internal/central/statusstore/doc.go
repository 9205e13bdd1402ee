// Package statusstore keeps what the fleet reports back, per cluster, and
// shares it with the other server replicas through the store's status
// table: each cluster's status (built from its agent's Hello, inventory,
// acknowledgements and drift) and its runtime snapshot (the registry's
// state of it), both written under the cluster's status session, which
// fences the writes of a replica the agent left.
//
//	central: Track/Forget, SetDesired (versions) ─┐
//	agent stream: Claim, Open ─Report…─ Close ────┴▶ Store (its own lock) ─Flush (≤500 bodies; leases every 10 s)─▶ PutStatus
//	                                                   │                     ─FlushRuntime─────────────────────────▶ PutRuntime
//	                                                   │◀─Refresh (status feed), RefreshRuntime (runtime feed)─ other replicas' rows
//	                                                   ├─fenced by a newer session──▶ Streams.LetGo (the stream ends)
//	                                                   └─Get/All/Reported/Behind (copies)──▶ fleet view, metrics
//
// A cluster is served when a stream of this replica holds its session;
// otherwise its status is a mirror of the stored one, which only the
// serving replica writes (but for marking a dead writer's cluster
// disconnected). A restarted server restores every cluster's stored status
// and runtime snapshot before any agent is served.
//
// Package central owns the streams and the desired versions and calls the
// Store, at times under its own lock; the Store never calls central under
// its lock: lock order is central's, then the Store's.
package statusstore
