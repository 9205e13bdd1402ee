// Package central is the central control plane. It turns the store's intent
// into one bundle per cluster, keeps every agent's stream fed with its
// cluster's latest bundle, and hands what agents report (inventory, acks,
// drift) to the status store.
//
//	store ──Changed/Events──▶ intent.Index (under mu) ──version per cluster──┐
//	registry ──TakeChanges──▶ discovery.Discovery (its own lock) ──digest───┴▶ version ─wake (cap 1)─▶ stream
//	agent ◀──Bundle, or a delta: changed objects and slice patches (only when its version differs)── stream
//	agent ──Runtime/Digest──▶ registry (its own lock)
//	agent ──Hello/Inventory/Ack/Drift──▶ statusstore.Store (its own lock) ──(≤1/s, fenced per session)──▶ status table
//	                      version ──SetDesired──┘   └──fenced by another replica's session──▶ LetGo: the stream ends
//
//	FleetView (copies: under mu only while copying, then the status store's) ──▶ fleetapi (FleetService)
//
// Each cluster has its own wake channel and stream goroutine, so a slow or
// disconnected cluster never delays another; a disconnected cluster's latest
// bundle waits for it and is sent when it reconnects.
//
// The intent index (package intent) and the multicluster slices (package
// discovery) are pure and do no I/O but their loads; discovery keeps its
// own lock, so a registry change becomes slices without mu, which is taken
// only to move the changed clusters' versions. What the agents report is
// package statusstore's, under its own lock: a stream's reports never take
// mu, and neither does writing status, leases or runtime snapshots to the
// store, nor mirroring other replicas' (mu, when held, is taken first).
// This package keeps the streams and the versions, tells the status store
// of each session (Claim, Open, Close) and of each version that moved, and
// ends a stream when the status store lets go of its session. The
// FleetService's handlers (status, compiled preview, plan, onboarding,
// ...) are in package fleetapi, which does not import this one: they read
// the control plane only through FleetView (fleetview.go), whose calls
// take and release the lock themselves, and compile, filter and diff what
// it returned outside it. Agents' credentials (join, the assertion at
// stream open, extension, recheck) are package agentauth's; this package
// keeps the streams they open.
package central
