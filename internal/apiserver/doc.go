// Package apiserver serves the management plane's API: the resource and
// audit services over Connect (gRPC, gRPC-Web and JSON on one port), plus
// /healthz, /readyz and /metrics.
//
//	client ──Apply──▶ parse all (resource.Registry) ──▶ store.Update{ check refs, etag, put } ──▶ results
//	client ◀─Watch── store.Events(after) ◀── store.Changed() wakes the loop
//
// Every write is one store transaction: a request either applies whole or
// changes nothing.
package apiserver
