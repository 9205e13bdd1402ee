import { useEffect, useState } from "react";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { resources, describe } from "../api";
import { stateBadge } from "../clusterstate";

/** Revision is one istiod revision as the cluster's agent reports it (the status's istio.revisions). */
type Revision = { name: string; version?: string; replicas?: number; readyReplicas?: number; tags?: string[]; webhooks?: string[]; proxies?: number };

/** Installation is an IstioInstallation's state in this cluster, as its agent acknowledged it (one of the status's resources). */
export type Installation = { fqn: string; state: string; message?: string };

/**
 * Row is one revision in the cluster: what the cluster runs beside the
 * installation that wants it there, as `flotilla get istio` joins them. A
 * revision wanted but not running has no `running`; one running that no
 * installation wants has no `installation`.
 */
type Row = { revision: string; running?: Revision; installation?: Installation };

const kindPath = "/istioinstallations/";

/** installationsOf picks the IstioInstallations among the resources that reach the cluster. */
export function installationsOf(rows: Installation[]): Installation[] {
  return rows.filter((r) => r.fqn.includes(kindPath));
}

const nameOf = (fqn: string) => fqn.slice(fqn.lastIndexOf("/") + 1);

/**
 * IstioSection shows the cluster's Istio control plane: whether Flotilla
 * manages its lifecycle (an IstioInstallation selects the cluster), the
 * last error, and per revision its version, tags, istiod's ready and
 * desired replicas, the proxies it injected and its webhooks.
 * desiredBundle changes with the cluster's intent: the installations'
 * specs (their revisions) are read again then.
 */
export function IstioSection({ istio, installs, desiredBundle }: { istio?: JsonObject; installs: Installation[]; desiredBundle: string }) {
  const [revisionOf, setRevisionOf] = useState<Map<string, string>>(new Map());
  const [error, setError] = useState("");
  const fqns = installs.map((i) => i.fqn).sort().join(",");
  useEffect(() => {
    let stop = false;
    const list = fqns ? fqns.split(",") : [];
    Promise.allSettled(list.map((fqn) => resources.get({ kind: "IstioInstallation", fqn }))).then((got) => {
      if (stop) return;
      const m = new Map<string, string>();
      const problems: string[] = [];
      got.forEach((g, i) => {
        if (g.status === "fulfilled") {
          const rev = (g.value.resource?.spec as JsonObject | undefined)?.["revision"];
          m.set(list[i], typeof rev === "string" && rev ? rev : "default");
        } else {
          problems.push(`${list[i]}: ${describe(g.reason)}`);
        }
      });
      setRevisionOf(m);
      setError(problems.length ? "Cannot read the revision of " + problems.join("; ") : "");
    });
    return () => {
      stop = true;
    };
  }, [fqns, desiredBundle]);

  const running = ((istio?.["revisions"] as JsonValue[] | undefined) ?? []) as unknown as Revision[];
  const byRevision = new Map<string, Row>();
  for (const r of running) byRevision.set(r.name, { revision: r.name, running: r });
  for (const i of installs) {
    const rev = revisionOf.get(i.fqn);
    if (rev === undefined) continue; // not read (yet): the installation shows in Lifecycle
    byRevision.set(rev, { ...(byRevision.get(rev) ?? { revision: rev }), installation: i });
  }
  const rows = [...byRevision.values()].sort((a, b) => a.revision.localeCompare(b.revision));
  const failed = installs.filter((i) => i.state === "Failed");
  const waiting = installs.filter((i) => i.state === "Pending" && i.message);
  const noWebhooks = running.length > 0 && running.every((r) => !r.webhooks?.length);

  return (
    <>
      <dl className="facts" aria-label="Istio lifecycle">
        <dt>Lifecycle</dt>
        <dd data-testid="istio-lifecycle">
          {installs.length === 0 ? (
            <span className="muted">not managed by Flotilla: no IstioInstallation selects this cluster</span>
          ) : (
            <>
              managed by Flotilla:{" "}
              {installs.map((i) => (
                <span key={i.fqn}>
                  IstioInstallation {nameOf(i.fqn)}
                  <StateBadge state={i.state} />{" "}
                </span>
              ))}
            </>
          )}
        </dd>
        <Messages label="Last error" testid="istio-last-error" className="error" installs={failed} />
        <Messages label="Waiting for" testid="istio-waiting" className="" installs={waiting} />
      </dl>
      {error && <p className="error">{error}</p>}
      {rows.length === 0 ? (
        <p className="empty">No istiod revision reported{istio?.["installed"] === false ? ": Istio is not installed" : ""}.</p>
      ) : (
        <table className="grid" aria-label="Istio revisions">
          <thead>
            <tr>
              <th>Revision</th>
              <th>Version</th>
              <th>Tags</th>
              <th>istiod</th>
              <th title="Pods this revision injected: what a restart would move">Proxies</th>
              <th>Webhooks</th>
              <th>Installation</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => {
              const ready = r.running?.readyReplicas ?? 0;
              const desired = r.running?.replicas ?? 0;
              const healthy = !!r.running && ready >= desired && desired > 0;
              const problem = r.installation?.state === "Failed" || (r.installation && !r.running) || (r.running && !healthy);
              return (
                <tr key={r.revision} data-revision={r.revision} className={problem ? "problem" : ""}>
                  <td>
                    <code>{r.revision}</code>
                  </td>
                  <td data-col="version">{r.running?.version || "—"}</td>
                  <td data-col="tags">{r.running?.tags?.length ? r.running.tags.join(", ") : "—"}</td>
                  <td data-col="istiod">
                    {r.running ? (
                      <span className={healthy ? "badge ok" : "badge warn"} title="ready / desired replicas">
                        {ready}/{desired} ready
                      </span>
                    ) : (
                      <span className="badge bad">not running</span>
                    )}
                  </td>
                  <td data-col="proxies">{r.running ? (r.running.proxies ?? 0) : "—"}</td>
                  <td data-col="webhooks">
                    {r.running?.webhooks?.length ? (
                      <ul className="bare">
                        {r.running.webhooks.map((w) => (
                          <li key={w}>
                            <code>{w}</code>
                          </li>
                        ))}
                      </ul>
                    ) : (
                      "—"
                    )}
                  </td>
                  <td data-col="installation">
                    {r.installation ? (
                      <>
                        {nameOf(r.installation.fqn)}
                        <StateBadge state={r.installation.state} />
                      </>
                    ) : (
                      <span className="muted">not Flotilla's</span>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {noWebhooks && <p className="muted">No webhook reported: an agent reads the webhooks and revision tags only when it manages Istio's lifecycle (--istio-lifecycle).</p>}
    </>
  );
}

/** Messages lists the messages of installations, named when there are several; nothing when there are none. */
function Messages({ label, testid, className, installs }: { label: string; testid: string; className: string; installs: Installation[] }) {
  if (installs.length === 0) return null;
  return (
    <>
      <dt>{label}</dt>
      <dd className={className} data-testid={testid}>
        {installs.map((i) => (
          <div key={i.fqn}>
            {installs.length > 1 && nameOf(i.fqn) + ": "}
            {i.message || i.state}
          </div>
        ))}
      </dd>
    </>
  );
}

function StateBadge({ state }: { state: string }) {
  return <span className={stateBadge(state)}>{state}</span>;
}
