import { useEffect, useMemo, useState } from "react";
import { fleet, describe } from "../api";
import type { ClusterSummary } from "../gen/flotilla/v1alpha1/fleet_pb.js";
import { Link } from "../router";
import { Time } from "../time";

/** useFleet follows WatchFleet: every readable cluster, live. */
export function useFleet(): { clusters: Map<string, ClusterSummary> | null; error: string; live: boolean } {
  const [clusters, setClusters] = useState<Map<string, ClusterSummary> | null>(null);
  const [error, setError] = useState("");
  const [live, setLive] = useState(false);
  useEffect(() => {
    const ctl = new AbortController();
    (async () => {
      while (!ctl.signal.aborted) {
        try {
          for await (const msg of fleet.watchFleet({}, { signal: ctl.signal })) {
            setLive(true);
            setError("");
            setClusters((prev) => {
              const next = new Map(msg.full || !prev ? [] : prev);
              for (const c of msg.clusters) next.set(c.fqn, c);
              for (const fqn of msg.removed) next.delete(fqn);
              return next;
            });
          }
        } catch (e) {
          if (ctl.signal.aborted) return;
          setError(describe(e));
        }
        setLive(false);
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    return () => ctl.abort();
  }, []);
  return { clusters, error, live };
}

type SortKey = "problems" | "name" | "region" | "lastSeen" | "failed";

/** problemRank orders clusters worst first. */
function problemRank(c: ClusterSummary): number {
  if (!c.connected) return 0;
  if (c.failed > 0) return 1;
  if (!c.inSync) return 2;
  if (c.drifts > 0) return 3;
  return 4;
}

export function syncWord(c: ClusterSummary): string {
  if (!c.bundleVersion) return "never applied";
  return c.inSync ? "in sync" : "behind";
}

export function Overview() {
  const { clusters, error, live } = useFleet();
  const [filter, setFilter] = useState("");
  const [sort, setSort] = useState<SortKey>("problems");
  const rows = useMemo(() => {
    if (!clusters) return [];
    const f = filter.trim().toLowerCase();
    const list = [...clusters.values()].filter(
      (c) => !f || [c.name, c.organization, c.region, c.zone, c.istioVersion].some((v) => v.toLowerCase().includes(f)),
    );
    const byName = (a: ClusterSummary, b: ClusterSummary) => a.fqn.localeCompare(b.fqn);
    const cmp: Record<SortKey, (a: ClusterSummary, b: ClusterSummary) => number> = {
      problems: (a, b) => problemRank(a) - problemRank(b) || byName(a, b),
      name: byName,
      region: (a, b) => a.region.localeCompare(b.region) || byName(a, b),
      lastSeen: (a, b) => Number((a.lastSeen?.seconds ?? 0n) - (b.lastSeen?.seconds ?? 0n)) || byName(a, b),
      failed: (a, b) => b.failed - a.failed || byName(a, b),
    };
    return list.sort(cmp[sort]);
  }, [clusters, filter, sort]);

  const connected = clusters ? [...clusters.values()].filter((c) => c.connected).length : 0;
  const header = (key: SortKey, label: string) => (
    <th aria-sort={sort === key ? "ascending" : "none"}>
      <button type="button" className="sort" onClick={() => setSort(key)}>
        {label}
      </button>
    </th>
  );
  return (
    <section aria-labelledby="overview-title">
      <div className="titlebar">
        <h1 id="overview-title">Fleet</h1>
        <span className={live ? "badge ok" : "badge warn"} role="status">
          {live ? "live" : "reconnecting…"}
        </span>
        {clusters && (
          <span className="muted" data-testid="fleet-counts">
            {connected} of {clusters.size} connected
          </span>
        )}
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      <div className="toolbar">
        <label htmlFor="filter">Filter</label>
        <input id="filter" type="search" value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="name, region, Istio version…" />
        <button type="button" className="sort" onClick={() => setSort("problems")} aria-pressed={sort === "problems"}>
          Problems first
        </button>
      </div>
      {!clusters ? (
        <p className="muted">Loading the fleet…</p>
      ) : clusters.size === 0 ? (
        <p className="empty">No clusters yet. Add one with a Cluster resource, then `flotilla cluster onboard NAME`.</p>
      ) : (
        <table className="grid" aria-label="Clusters">
          <thead>
            <tr>
              {header("name", "Cluster")}
              <th>Organization</th>
              {header("region", "Region")}
              <th>Zone</th>
              <th>Connection</th>
              {header("lastSeen", "Last seen")}
              <th>Bundle</th>
              <th>Kubernetes</th>
              <th>Istio</th>
              <th>Applied</th>
              {header("failed", "Failed")}
            </tr>
          </thead>
          <tbody>
            {rows.map((c) => (
              <tr key={c.fqn} data-cluster={c.name} className={problemRank(c) < 4 ? "problem" : ""}>
                <td>
                  <Link to={"/clusters/" + c.fqn}>{c.name}</Link>
                  {c.drained && <span className="badge warn">drained</span>}
                </td>
                <td>{c.organization.replace("organizations/", "")}</td>
                <td>{c.region || "—"}</td>
                <td>{c.zone || "—"}</td>
                <td data-col="connection">
                  <span className={c.connected ? "badge ok" : "badge bad"}>{c.connected ? "connected" : "disconnected"}</span>
                </td>
                <td>
                  <Time ts={c.lastSeen} relative />
                </td>
                <td data-col="sync" title={`acknowledged ${c.bundleVersion || "none"}, desired ${c.desiredBundleVersion || "none"}`}>
                  <span className={c.inSync ? "badge ok" : "badge warn"}>{syncWord(c)}</span>
                </td>
                <td>{c.kubernetesVersion || "—"}</td>
                <td>{c.istioVersion || "—"}</td>
                <td data-col="applied">{c.applied}</td>
                <td data-col="failed" className={c.failed > 0 ? "bad" : ""}>
                  {c.failed}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
