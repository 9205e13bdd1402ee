// Package fleetapi serves the FleetService: status, the compiled preview,
// effective settings, the fleet's services and summaries, plan, onboarding
// and revoking a cluster's credentials. It reads the central control plane
// only through View, which package central implements (Central.FleetView):
// every call copies what it answers under the control plane's lock and
// returns, so the handlers compile, filter by the caller's access and diff
// outside it.
//
//	request ──authorize (access, authz; store reads)──▶ View call (copies, under central's lock)
//	        ──▶ filter by the caller's view, compile (internal/compile), diff ──▶ response
//
// The package does not import central: it cannot reach the control loop's
// mutex or its clusters, only the View's methods.
package fleetapi
