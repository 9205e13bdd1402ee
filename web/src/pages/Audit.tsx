import { useEffect, useMemo, useState } from "react";
import { toJsonString } from "@bufbuild/protobuf";
import { ValueSchema, timestampFromDate, type Value } from "@bufbuild/protobuf/wkt";
import { audit, describe } from "../api";
import type { AuditRecord } from "../gen/flotilla/v1alpha1/service_pb.js";
import { navigate, useLocation } from "../router";
import { Time } from "../time";

const value = (v?: Value) => (v ? toJsonString(ValueSchema, v) : "—");

/** recordId names a record in either of the audit's logs: changes by revision; refusals and operations outside the store by number. */
const recordId = (r: AuditRecord) => (r.refusal ? "s" + String(r.refusal) : "r" + String(r.revision));

/** pageSize is how many records one request asks for. */
const pageSize = 500;

/**
 * AuditPage lists who changed what, newest first, with field diffs. Filters live in the URL; kind and
 * since are applied by the server, the others to the records loaded. "Load older records" follows the
 * server's page token.
 */
export function AuditPage() {
  const { query } = useLocation();
  const [records, setRecords] = useState<AuditRecord[] | null>(null);
  const [next, setNext] = useState("");
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState("");
  const kind = query.get("kind") ?? "";
  const actor = query.get("actor") ?? "";
  const op = query.get("operation") ?? "";
  const text = query.get("text") ?? "";
  const open = query.get("open") ?? "";
  const since = query.get("since") ?? ""; // a datetime-local value, in local time
  const set = (k: string, v: string) => {
    const q = new URLSearchParams(location.search);
    if (v) q.set(k, v);
    else q.delete(k);
    navigate("/audit" + (q.size ? "?" + q.toString() : ""), true);
  };
  const request = (pageToken: string) => {
    const from = since ? new Date(since) : null;
    return audit.listAudit({ kind, limit: pageSize, pageToken, since: from && !isNaN(from.getTime()) ? timestampFromDate(from) : undefined });
  };
  useEffect(() => {
    let stop = false;
    setNext("");
    request("")
      .then((r) => !stop && (setRecords(r.records), setNext(r.nextPageToken), setError("")))
      .catch((e) => !stop && setError(describe(e)));
    return () => {
      stop = true;
    };
  }, [kind, since]);
  const loadMore = () => {
    setLoading(true);
    request(next)
      .then((r) => (setRecords((have) => [...(have ?? []), ...r.records]), setNext(r.nextPageToken), setError("")))
      .catch((e) => setError(describe(e)))
      .finally(() => setLoading(false));
  };
  const rows = useMemo(
    () => (records ?? []).filter((r) => (!actor || r.actor.includes(actor)) && (!op || r.operation === op) && (!text || (r.fqn + " " + r.reason).includes(text))),
    [records, actor, op, text],
  );
  return (
    <section aria-labelledby="audit-title">
      <h1 id="audit-title">Audit log</h1>
      <div className="toolbar">
        <label>
          Principal <input value={actor} onChange={(e) => set("actor", e.target.value)} placeholder="user:admin" />
        </label>
        <label>
          Kind <input value={kind} onChange={(e) => set("kind", e.target.value)} placeholder="IngressGateway" />
        </label>
        <label>
          Operation{" "}
          <select value={op} onChange={(e) => set("operation", e.target.value)}>
            <option value="">any</option>
            <option value="create">create</option>
            <option value="update">update</option>
            <option value="delete">delete</option>
          </select>
        </label>
        <label>
          Since <input type="datetime-local" value={since} onChange={(e) => set("since", e.target.value)} />
        </label>
        <label>
          Text <input value={text} onChange={(e) => set("text", e.target.value)} placeholder="part of a name" />
        </label>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!records ? (
        <p className="muted">Loading…</p>
      ) : rows.length === 0 ? (
        <p className="empty">No audit record matches.</p>
      ) : (
        <table className="grid" aria-label="Audit records">
          <thead>
            <tr>
              <th>Time</th>
              <th>Principal</th>
              <th>Operation</th>
              <th>Kind</th>
              <th>Resource</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => {
              const id = recordId(r);
              const isOpen = open === id;
              return [
                <tr key={id} className={r.refused ? "problem" : ""}>
                  <td>
                    <Time ts={r.time} />
                  </td>
                  <td>{r.actor}</td>
                  <td>{r.refused ? "refused " + r.operation : r.operation}</td>
                  <td>{r.kind}</td>
                  <td>
                    <button type="button" className="link" aria-expanded={isOpen} onClick={() => set("open", isOpen ? "" : id)}>
                      {r.fqn || "(none)"}
                    </button>
                  </td>
                </tr>,
                isOpen && (
                  <tr key={id + "-diff"}>
                    <td colSpan={5}>
                      {r.reason && <p className={r.refused ? "error" : ""}>{r.reason}</p>}
                      {r.changes.length === 0 ? (
                        <p className="empty">No field changes.</p>
                      ) : (
                        <table className="diff" aria-label="Field changes">
                          <thead>
                            <tr>
                              <th>Field</th>
                              <th>Old</th>
                              <th>New</th>
                            </tr>
                          </thead>
                          <tbody>
                            {r.changes.map((c) => (
                              <tr key={c.path}>
                                <td>{c.path}</td>
                                <td className="old">{value(c.old)}</td>
                                <td className="new">{value(c.new)}</td>
                              </tr>
                            ))}
                          </tbody>
                        </table>
                      )}
                    </td>
                  </tr>
                ),
              ];
            })}
          </tbody>
        </table>
      )}
      {records && (
        <p className="muted" aria-live="polite">
          {records.length} record{records.length === 1 ? "" : "s"} loaded{next ? "; older ones exist." : " (all there are)."}{" "}
          {next && (
            <button type="button" onClick={loadMore} disabled={loading}>
              {loading ? "Loading…" : "Load older records"}
            </button>
          )}
        </p>
      )}
    </section>
  );
}
