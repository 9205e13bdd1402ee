import { useState } from "react";
import { ConnectError, Code } from "@connectrpc/connect";
import { fleet, resources, describe } from "./api";
import { ViolationsSchema, Outcome } from "./gen/flotilla/v1alpha1/service_pb.js";
import type { PlanResponse } from "./gen/flotilla/v1alpha1/fleet_pb.js";
import { parseResources } from "./yamldocs";

type Problem = { field: string; message: string };

/** problemsOf turns an API error into its violations, each with its field path. */
function problemsOf(e: unknown): Problem[] {
  if (e instanceof ConnectError) {
    const vs = e.findDetails(ViolationsSchema).flatMap((d) => d.violations);
    if (vs.length > 0) return vs.map((v) => ({ field: `${v.kind} ${v.name}: ${v.field}`, message: v.message }));
  }
  return [{ field: "", message: describe(e) }];
}

const outcomeWord: Record<number, string> = {
  [Outcome.CREATED]: "created",
  [Outcome.CONFIGURED]: "configured",
  [Outcome.UNCHANGED]: "unchanged",
  [Outcome.DELETED]: "deleted",
};

/**
 * Editor edits YAML and saves it the careful way: Plan first (the API's
 * dry run, then plan's per-cluster changes), and Apply only once that plan
 * is shown for the current text. A save carries the loaded etag: if
 * someone wrote since, the server refuses it and the conflict is shown.
 */
export function Editor({ initial, onSaved }: { initial: string; onSaved?: (revision: bigint) => void }) {
  const [text, setText] = useState(initial);
  const [plan, setPlan] = useState<PlanResponse | null>(null);
  const [problems, setProblems] = useState<Problem[]>([]);
  const [conflict, setConflict] = useState("");
  const [saved, setSaved] = useState("");
  const [busy, setBusy] = useState(false);

  const edit = (t: string) => {
    setText(t);
    setPlan(null); // the plan shown is for the text as planned
    setSaved("");
  };
  const doPlan = async () => {
    setBusy(true);
    setProblems([]);
    setConflict("");
    setSaved("");
    setPlan(null);
    try {
      const rs = parseResources(text);
      await resources.apply({ resources: rs, dryRun: true });
      setPlan(await fleet.plan({ resources: rs }));
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.Aborted) setConflict(describe(e));
      else setProblems(e instanceof ConnectError ? problemsOf(e) : [{ field: "", message: describe(e) }]);
    } finally {
      setBusy(false);
    }
  };
  const doApply = async () => {
    setBusy(true);
    setProblems([]);
    try {
      const res = await resources.apply({ resources: parseResources(text) });
      setSaved(`Saved at store revision ${res.revision}.`);
      setPlan(null);
      onSaved?.(res.revision);
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.Aborted) {
        setConflict(describe(e));
      } else {
        setProblems(problemsOf(e));
      }
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="editor">
      <label htmlFor="yaml-editor">YAML</label>
      <textarea id="yaml-editor" spellCheck={false} rows={Math.min(40, Math.max(12, text.split("\n").length + 2))} value={text} onChange={(e) => edit(e.target.value)} />
      <div className="toolbar">
        <button type="button" onClick={doPlan} disabled={busy}>
          Plan
        </button>
        <button type="button" onClick={doApply} disabled={busy || !plan} title={plan ? "" : "Plan first: the changes are shown before they are made"}>
          Apply
        </button>
        {busy && <span className="muted">Working…</span>}
      </div>
      {conflict && (
        <div role="alert" className="error conflict">
          <strong>Conflict:</strong> someone changed this since it was loaded, so nothing was saved. Reload to see their change, then edit again. ({conflict})
        </div>
      )}
      {problems.length > 0 && (
        <div role="alert" className="error" aria-label="Problems">
          <p>Nothing was saved:</p>
          <ul>
            {problems.map((p, i) => (
              <li key={i}>
                {p.field && <code>{p.field}</code>} {p.message}
              </li>
            ))}
          </ul>
        </div>
      )}
      {saved && (
        <p role="status" className="saved">
          {saved}
        </p>
      )}
      {plan && (
        <section aria-label="Plan">
          <h3>Plan</h3>
          <ul>
            {plan.results.map((r) => (
              <li key={r.index}>
                {r.resource?.kind} {r.resource?.metadata?.fqn}: {outcomeWord[r.outcome] ?? "?"}
              </li>
            ))}
          </ul>
          {plan.clusters.length === 0 ? (
            <p className="empty">No cluster's objects change.</p>
          ) : (
            plan.clusters.map((c) => (
              <div key={c.cluster} data-plan-cluster={c.cluster.split("/").pop()}>
                <h4>{c.cluster}</h4>
                <ul className="plan">
                  {c.changes.map((ch, i) => (
                    <li key={i} className={"plan-" + ch.action}>
                      {ch.action === "create" ? "+" : ch.action === "delete" ? "−" : "~"} {ch.action} {ch.kind} {ch.namespace}/{ch.name}
                    </li>
                  ))}
                  {c.diagnostics.map((d, i) => (
                    <li key={"d" + i} className="error">
                      {d}
                    </li>
                  ))}
                </ul>
              </div>
            ))
          )}
        </section>
      )}
    </div>
  );
}
