// Package resource defines Flotilla's kinds, their place in the hierarchy,
// their names and FQNs, and every validation rule a write must pass.
//
//	pb.Resource ──Parse──▶ Object ──(ordered by depth)──▶ CheckRefs(store.Reader) ──▶ Record ──▶ store
//	   │                     │
//	   └ violations: field path + fix, per document index
//
// Parse checks one resource alone: apiVersion, kind, names, parents named in
// metadata, and the spec against its kind's proto schema (unknown fields and
// wrong types are reported with their path). CheckRefs checks it against the
// others: parents exist, namespaces are owned by one workspace, a group's
// selector stays inside its workspace's. A kind is one Kind value in a
// Registry; new kinds register without touching the store or the API.
package resource
