import { useEffect, useState } from "react";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { fleet, resources, describe } from "../api";
import type { Resource } from "../gen/flotilla/v1alpha1/resource_pb.js";
import type { GetCompiledResponse, GetEffectiveResponse } from "../gen/flotilla/v1alpha1/fleet_pb.js";
import { Link } from "../router";
import { stateBadge } from "../clusterstate";
import { IstioSection, installationsOf } from "./ClusterIstio";

const refreshEvery = 2000;

type ResourceRow = { fqn: string; state: string; message?: string; objects?: string[] };
type DriftRow = { fqn?: string; object: string; change: string; restored: boolean; message?: string };

function str(o: JsonObject | undefined, k: string): string {
  const v = o?.[k];
  return typeof v === "string" ? v : v === undefined || v === null ? "" : String(v);
}

/** ClusterPage shows one cluster: facts, its Istio, namespaces, per-resource status, drift and compiled objects. */
export function ClusterPage({ fqn }: { fqn: string }) {
  const [res, setRes] = useState<Resource | null>(null);
  const [compiled, setCompiled] = useState<GetCompiledResponse | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let stop = false;
    const load = async () => {
      try {
        const [g, c] = await Promise.all([resources.get({ kind: "Cluster", fqn }), fleet.getCompiled({ cluster: fqn })]);
        if (stop) return;
        setRes(g.resource ?? null);
        setCompiled(c);
        setError("");
      } catch (e) {
        if (!stop) setError(describe(e));
      }
    };
    load();
    const t = setInterval(load, refreshEvery);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [fqn]);

  const status = (res?.status ?? {}) as JsonObject;
  const spec = (res?.spec ?? {}) as JsonObject;
  const istio = status["istio"] as JsonObject | undefined;
  const rows = ((status["resources"] as JsonValue[] | undefined) ?? []) as unknown as ResourceRow[];
  const drift = ((status["drift"] as JsonValue[] | undefined) ?? []) as unknown as DriftRow[];
  const namespaces = ((status["namespaces"] as JsonValue[] | undefined) ?? []) as string[];
  return (
    <section aria-labelledby="cluster-title">
      <p>
        <Link to="/">← Fleet</Link>
      </p>
      <h1 id="cluster-title">Cluster {res?.metadata?.name ?? fqn.split("/").pop()}</h1>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!res && !error && <p className="muted">Loading…</p>}
      {res && (
        <>
          <dl className="facts">
            <dt>FQN</dt>
            <dd>{fqn}</dd>
            <dt>Connection</dt>
            <dd>
              <span className={status["connected"] ? "badge ok" : "badge bad"}>{status["connected"] ? "connected" : "disconnected"}</span>
            </dd>
            <dt>Last seen</dt>
            <dd>{str(status, "lastSeen") ? <time title={str(status, "lastSeen") + " (UTC)"}>{new Date(str(status, "lastSeen")).toLocaleString()}</time> : "never"}</dd>
            <dt>Region / zone</dt>
            <dd>
              {str(spec, "region") || "—"} / {str(spec, "zone") || "—"}
            </dd>
            <dt>Bundle</dt>
            <dd>
              acknowledged {str(status, "bundleVersion") || "none"}, desired {str(status, "desiredBundleVersion") || "none"}
              {str(status, "bundleVersion") && str(status, "bundleVersion") === str(status, "desiredBundleVersion") ? (
                <span className="badge ok">in sync</span>
              ) : (
                <span className="badge warn">behind</span>
              )}
            </dd>
            <dt>Kubernetes</dt>
            <dd>{str(status, "kubernetesVersion") || "—"}</dd>
            <dt>Istio</dt>
            <dd>{istio?.["installed"] ? str(istio, "version") || "installed" : "not installed"}</dd>
            <dt>Agent</dt>
            <dd>{str(status, "agentVersion") || "—"}</dd>
            {spec["drained"] === true && (
              <>
                <dt>Drained</dt>
                <dd>
                  <span className="badge warn">drained</span>
                </dd>
              </>
            )}
          </dl>
          <h2>Istio</h2>
          <IstioSection istio={istio} installs={installationsOf(rows)} desiredBundle={str(status, "desiredBundleVersion")} />
          <h2>Namespaces</h2>
          {namespaces.length === 0 ? <p className="empty">None reported.</p> : <Namespaces cluster={fqn} namespaces={namespaces} />}
          <h2>Resources</h2>
          {rows.length === 0 ? (
            <p className="empty">No resource reaches this cluster.</p>
          ) : (
            <table className="grid" aria-label="Resources in this cluster">
              <thead>
                <tr>
                  <th>Resource</th>
                  <th>State</th>
                  <th>Message</th>
                </tr>
              </thead>
              <tbody>
                {rows.map((r) => (
                  <tr key={r.fqn} className={r.state === "Failed" ? "problem" : ""}>
                    <td>{r.fqn}</td>
                    <td>
                      <span className={stateBadge(r.state)}>{r.state}</span>
                    </td>
                    <td>{r.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <h2>Drift</h2>
          {drift.length === 0 ? (
            <p className="empty">No hand edits reported.</p>
          ) : (
            <ul>
              {drift.map((d, i) => (
                <li key={i}>
                  {d.object}: {d.change} {d.restored ? "(restored)" : ""} {d.message}
                </li>
              ))}
            </ul>
          )}
          <h2>Compiled Istio objects</h2>
          {compiled?.diagnostics.map((d, i) => (
            <p key={i} className="error">
              {d}
            </p>
          ))}
          {compiled?.objects ? <pre className="yaml" aria-label="Compiled objects (YAML)">{compiled.objects}</pre> : <p className="empty">Nothing compiled for this cluster.</p>}
        </>
      )}
    </section>
  );
}

/** Namespaces lists the cluster's namespaces; picking one shows what is in effect there. */
function Namespaces({ cluster, namespaces }: { cluster: string; namespaces: string[] }) {
  const [ns, setNS] = useState("");
  const [eff, setEff] = useState<GetEffectiveResponse | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    if (!ns) return;
    let stop = false;
    setEff(null);
    fleet.getEffective({ cluster, namespace: ns }).then(
      (r) => !stop && (setEff(r), setError("")),
      (e) => !stop && setError(describe(e)),
    );
    return () => {
      stop = true;
    };
  }, [cluster, ns]);
  return (
    <>
      <div className="toolbar" role="group" aria-label="Namespaces">
        {namespaces.map((n) => (
          <button key={n} type="button" aria-pressed={n === ns} onClick={() => setNS(n)}>
            {n}
          </button>
        ))}
      </div>
      {error && <p className="error">{error}</p>}
      {eff && (
        <div aria-label={`In effect in ${ns}`}>
          <h3>In effect in {ns}</h3>
          <p className="muted">{eff.workspace ? `workspace ${eff.workspace}` : "no workspace selects this namespace here"}</p>
          {eff.problems.map((p, i) => (
            <p key={i} className="error">
              {p}
            </p>
          ))}
          {eff.settings.length === 0 ? (
            <p className="empty">No traffic or security setting applies.</p>
          ) : (
            <table className="grid" aria-label="Settings in effect">
              <thead>
                <tr>
                  <th>Field</th>
                  <th>Value</th>
                  <th>From</th>
                  <th>Bounded by</th>
                </tr>
              </thead>
              <tbody>
                {eff.settings.map((s) => (
                  <tr key={s.field}>
                    <td>
                      <code>{s.field}</code>
                    </td>
                    <td>
                      <code>{s.value}</code>
                    </td>
                    <td>
                      {s.level} {s.source}
                    </td>
                    <td>{s.limitSource ? `${s.limitLevel} ${s.limitSource} (STRICTER)` : "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      )}
    </>
  );
}
