// Package remotewrite speaks Prometheus remote write 1.0: the agent's client
// and queue drainer, and the decoder the management plane's receiver uses.
//
//	reduce.Snapshot ──Encode──▶ wal.Queue ──Sender──▶ Client.Send ──POST──▶ receiver
//	                 (protobuf + snappy)   oldest first,  retry 5xx, 429;      │
//	                                       ack on success  never other 4xx    ▼
//	                                                                        Decode
//
// Send retries what the specification allows to retry: responses 5xx and
// 429 (after Retry-After when the receiver gives one) and network errors,
// with capped exponential backoff and jitter, until the context ends. Any
// other refusal is permanent: resending the same bytes cannot succeed, so the
// error matches ErrPermanent and the Sender drops that batch, counted, rather
// than block the queue behind it.
package remotewrite
