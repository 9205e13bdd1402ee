import { useEffect, useState } from "react";
import { fleet, resources, audit, describe } from "../api";
import type { Resource } from "../gen/flotilla/v1alpha1/resource_pb.js";
import type { GetStatusResponse } from "../gen/flotilla/v1alpha1/fleet_pb.js";
import { EventType, type AuditRecord, type KindInfo } from "../gen/flotilla/v1alpha1/service_pb.js";
import { Link } from "../router";
import { Editor } from "../Editor";
import { resourceYAML } from "../yamldocs";
import { Time } from "../time";
import { stateBadge } from "../clusterstate";
import { toJsonString } from "@bufbuild/protobuf";
import { parseAllDocuments, stringify } from "yaml";
import { ValueSchema } from "@bufbuild/protobuf/wkt";

/** objectPath is the UI's URL of a resource. */
export const objectPath = (kind: string, fqn: string) => `/config/${kind}/${fqn}`;

const containers = ["Organization", "Tenant", "Workspace", "Group", "Cluster"];

function parentOf(fqn: string): string {
  return fqn.split("/").slice(0, -2).join("/");
}

type Node = { r: Resource; children: Node[] };

/** ConfigBrowser shows the hierarchy organization → tenant → workspace → group as a tree. */
export function ConfigBrowser() {
  const [roots, setRoots] = useState<Node[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    Promise.all(containers.map((kind) => resources.list({ kind })))
      .then((lists) => {
        const nodes = new Map<string, Node>();
        for (const l of lists) for (const r of l.resources) nodes.set(r.metadata!.fqn, { r, children: [] });
        const top: Node[] = [];
        for (const n of nodes.values()) {
          const p = nodes.get(parentOf(n.r.metadata!.fqn));
          (p ? p.children : top).push(n);
        }
        const sort = (ns: Node[]) => {
          ns.sort((a, b) => a.r.kind.localeCompare(b.r.kind) || a.r.metadata!.name.localeCompare(b.r.metadata!.name));
          ns.forEach((n) => sort(n.children));
        };
        sort(top);
        setRoots(top);
      })
      .catch((e) => setError(describe(e)));
  }, []);
  const render = (ns: Node[]) => (
    <ul>
      {ns.map((n) => (
        <li key={n.r.metadata!.fqn}>
          <span className="muted">{n.r.kind}</span> <Link to={objectPath(n.r.kind, n.r.metadata!.fqn)}>{n.r.metadata!.name}</Link>
          {n.children.length > 0 && render(n.children)}
        </li>
      ))}
    </ul>
  );
  return (
    <section aria-labelledby="config-title">
      <div className="titlebar">
        <h1 id="config-title">Configuration</h1>
        <Link to="/apply">Apply YAML…</Link>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!roots ? <p className="muted">Loading…</p> : roots.length === 0 ? <p className="empty">Nothing yet: apply an Organization to start.</p> : <nav aria-label="Configuration tree">{render(roots)}</nav>}
    </section>
  );
}

/** ApplyPage takes YAML for new or changed resources. */
export function ApplyPage() {
  return (
    <section aria-labelledby="apply-title">
      <h1 id="apply-title">Apply YAML</h1>
      <p className="muted">Paste one or more resources, as for `flotilla apply -f`. Plan shows what would change in each cluster before anything is saved.</p>
      <Editor initial="" />
    </section>
  );
}

/** ObjectPage shows one resource: its YAML editor, per-cluster status (live), children and history. */
export function ObjectPage({ kind, fqn }: { kind: string; fqn: string }) {
  const [res, setRes] = useState<Resource | null>(null);
  const [status, setStatus] = useState<GetStatusResponse | null>(null);
  const [history, setHistory] = useState<AuditRecord[]>([]);
  const [children, setChildren] = useState<Resource[]>([]);
  const [error, setError] = useState("");
  const [loadedAt, setLoadedAt] = useState(0);
  useEffect(() => {
    let stop = false;
    setRes(null);
    resources
      .get({ kind, fqn })
      .then((g) => !stop && (setRes(g.resource ?? null), setError("")))
      .catch((e) => !stop && setError(describe(e)));
    resources.kinds({}).then(async (k) => {
      const kids: KindInfo[] = k.kinds.filter((x) => x.parent === kind);
      const lists = await Promise.all(kids.map((x) => resources.list({ kind: x.kind, parent: fqn }).catch(() => null)));
      if (!stop) setChildren(lists.flatMap((l) => l?.resources.filter((r) => parentOf(r.metadata!.fqn) === fqn) ?? []));
    }, () => {});
    return () => {
      stop = true;
    };
  }, [kind, fqn, loadedAt]);
  // Live: a write by anyone after the loaded revision shows at once
  // (ResourceService.Watch), before an edit could conflict with it.
  const [changedAt, setChangedAt] = useState<bigint | null>(null);
  const loadedRevision = res?.metadata?.revision;
  useEffect(() => {
    setChangedAt(null);
    if (loadedRevision === undefined) return;
    const ctl = new AbortController();
    (async () => {
      try {
        for await (const ev of resources.watch({ fromRevision: loadedRevision, kinds: [kind] }, { signal: ctl.signal })) {
          if (ev.type !== EventType.BOOKMARK && ev.resource?.metadata?.fqn === fqn) setChangedAt(ev.revision);
        }
      } catch {
        // The page still works without it: a save is checked by its etag.
      }
    })();
    return () => ctl.abort();
  }, [kind, fqn, loadedRevision]);
  useEffect(() => {
    let stop = false;
    audit.listAudit({ fqn, limit: 50 }).then((a) => !stop && setHistory([...a.records].reverse()), () => {});
    return () => {
      stop = true;
    };
  }, [fqn, loadedAt, changedAt]);
  useEffect(() => {
    let stop = false;
    const load = () =>
      fleet.getStatus({ kind, fqn }).then(
        (s) => !stop && setStatus(s),
        () => {},
      );
    load();
    const t = setInterval(load, 1000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [kind, fqn]);
  return (
    <section aria-labelledby="object-title">
      <p>
        <Link to="/config">← Configuration</Link>
      </p>
      <h1 id="object-title">
        {kind} {fqn.split("/").pop()}
      </h1>
      <p className="muted">{fqn}</p>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {status && status.clusters.length > 0 && (
        <>
          <h2>
            Status <span className="badge">{status.aggregate}</span>
          </h2>
          <table className="grid" aria-label="Status per cluster">
            <thead>
              <tr>
                <th>Cluster</th>
                <th>State</th>
                <th>Revision</th>
                <th>Message</th>
              </tr>
            </thead>
            <tbody>
              {status.clusters.map((c) => (
                <tr key={c.cluster} data-status-cluster={c.cluster}>
                  <td>
                    <Link to={"/clusters/" + fqn.split("/").slice(0, 2).join("/") + "/clusters/" + c.cluster}>{c.cluster}</Link>
                  </td>
                  <td data-col="state">
                    <span className={stateBadge(c.state)}>{c.state}</span>
                    {!c.connected && <span className="badge bad">disconnected</span>}
                  </td>
                  <td>{String(c.revision)}</td>
                  <td>{c.message}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {status && status.clusters.length > 0 && <CompiledFor fqn={fqn} clusters={status.clusters.map((c) => c.cluster)} />}
      {children.length > 0 && (
        <>
          <h2>Contents</h2>
          <ul>
            {children.map((r) => (
              <li key={r.metadata!.fqn}>
                <span className="muted">{r.kind}</span> <Link to={objectPath(r.kind, r.metadata!.fqn)}>{r.metadata!.name}</Link>
              </li>
            ))}
          </ul>
        </>
      )}
      {changedAt !== null && (
        <div role="alert" className="changed">
          Someone changed this resource (store revision {String(changedAt)}) after this page loaded it: a save of this text would be refused.{" "}
          <button type="button" onClick={() => setLoadedAt(Date.now())}>
            Load their version
          </button>
        </div>
      )}
      {res && (
        <>
          <h2>Edit</h2>
          <Editor key={res.metadata?.etag} initial={resourceYAML(res)} onSaved={() => setLoadedAt(Date.now())} />
        </>
      )}
      <h2>History</h2>
      {history.length === 0 ? (
        <p className="empty">No audit record.</p>
      ) : (
        <ul aria-label="History">
          {history.map((h) => (
            <li key={String(h.revision) + h.fqn}>
              <Time ts={h.time} /> {h.actor} {h.operation} (revision {String(h.revision)})
              {h.changes.length > 0 && (
                <ul>
                  {h.changes.map((c) => (
                    <li key={c.path}>
                      <code>{c.path}</code>: {c.old ? toJsonString(ValueSchema, c.old) : "—"} → {c.new ? toJsonString(ValueSchema, c.new) : "—"}
                    </li>
                  ))}
                </ul>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** CompiledFor shows, per cluster, the native objects a resource compiles into there. */
function CompiledFor({ fqn, clusters }: { fqn: string; clusters: string[] }) {
  const [cluster, setCluster] = useState("");
  const [yaml, setYAML] = useState<string | null>(null);
  const [error, setError] = useState("");
  const org = fqn.split("/").slice(0, 2).join("/");
  useEffect(() => {
    if (!cluster) return;
    let stop = false;
    setYAML(null);
    fleet.getCompiled({ cluster: org + "/clusters/" + cluster }).then(
      (c) => {
        if (stop) return;
        const mine = parseAllDocuments(c.objects)
          .map((d) => d.toJS() as { metadata?: { annotations?: Record<string, string> } } | null)
          .filter((o) => o?.metadata?.annotations?.["flotilla.io/owner"] === fqn);
        setYAML(mine.map((o) => stringify(o)).join("---\n"));
        setError("");
      },
      (e) => !stop && setError(describe(e)),
    );
    return () => {
      stop = true;
    };
  }, [cluster, fqn, org]);
  return (
    <>
      <h2>Compiled output</h2>
      <div className="toolbar" role="group" aria-label="Compiled output for cluster">
        {clusters.map((c) => (
          <button key={c} type="button" aria-pressed={c === cluster} onClick={() => setCluster(c)}>
            {c}
          </button>
        ))}
      </div>
      {error && <p className="error">{error}</p>}
      {cluster && yaml === null && !error && <p className="muted">Loading…</p>}
      {yaml !== null && (yaml ? <pre className="yaml" aria-label={`Compiled for ${cluster}`}>{yaml}</pre> : <p className="empty">Nothing is written for it in {cluster}.</p>)}
    </>
  );
}
