import { useEffect, useMemo, useState } from "react";
import { fleet, describe } from "../api";
import type { FleetServiceInfo } from "../gen/flotilla/v1alpha1/fleet_pb.js";
import { Link } from "../router";
import { Time } from "../time";

const refreshEvery = 2000;

/** ServicesPage is the fleet service registry: where each service runs, how ready, and who exposes it for failover. */
export function ServicesPage() {
  const [services, setServices] = useState<FleetServiceInfo[] | null>(null);
  const [error, setError] = useState("");
  const [filter, setFilter] = useState("");
  useEffect(() => {
    let stop = false;
    const load = () =>
      fleet.listServices({}).then(
        (r) => !stop && (setServices(r.services), setError("")),
        (e) => !stop && setError(describe(e)),
      );
    load();
    const t = setInterval(load, refreshEvery);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, []);
  const rows = useMemo(() => {
    const f = filter.trim().toLowerCase();
    return (services ?? []).filter((s) => !f || `${s.namespace}/${s.name}`.toLowerCase().includes(f));
  }, [services, filter]);
  return (
    <section aria-labelledby="services-title">
      <h1 id="services-title">Services</h1>
      <div className="toolbar">
        <label htmlFor="svc-filter">Filter</label>
        <input id="svc-filter" type="search" value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="namespace/name" />
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!services ? (
        <p className="muted">Loading…</p>
      ) : rows.length === 0 ? (
        <p className="empty">No service reported by the clusters you may read.</p>
      ) : (
        <table className="grid" aria-label="Fleet services">
          <thead>
            <tr>
              <th>Service</th>
              <th>Ports</th>
              <th>Runs in (ready endpoints by locality)</th>
              <th>Failover across clusters</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((s) => (
              <tr key={s.namespace + "/" + s.name} data-service={s.namespace + "/" + s.name} className={s.conflicts.length ? "problem" : ""}>
                <td>
                  {s.namespace}/{s.name}
                  {s.conflicts.map((c, i) => (
                    <div key={i} className="error">
                      {c}
                    </div>
                  ))}
                </td>
                <td>{s.ports.map((p) => `${p.name || "-"} ${p.number}/${p.protocol}`).join(", ")}</td>
                <td>
                  <ul className="bare">
                    {s.instances.map((i) => (
                      <li key={i.cluster}>
                        <Link to={"/clusters/" + i.cluster}>{i.cluster.split("/").pop()}</Link>: {i.ready} ready
                        {i.endpoints.length > 0 && <span className="muted"> ({i.endpoints.map((e) => `${e.region || "?"}/${e.zone || "?"}: ${e.ready}`).join(", ")})</span>}
                        {i.stale && (
                          <span className="badge warn" title="its agent is disconnected: the last report stands">
                            stale since <Time ts={i.lastSeen} />
                          </span>
                        )}
                      </li>
                    ))}
                  </ul>
                </td>
                <td>
                  {s.exposedBy.length === 0 ? (
                    <span className="muted">not exposed</span>
                  ) : (
                    s.exposedBy.map((f) => (
                      <div key={f}>
                        exposed by <Link to={"/config/WorkspaceSetting/" + f}>{f.split("/").pop()}</Link>: clients fail over to the other {s.instances.length - 1} cluster(s)
                      </div>
                    ))
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
