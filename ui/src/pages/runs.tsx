import { useEffect, useState } from "preact/hooks";
import { api, ApiError, type RunView } from "../api";
import { ago, duration, EVENTS, useEvents } from "../live";

const STATUSES = ["", "pending", "running", "waiting", "succeeded", "failed", "cancelled"];

export function startedBy(run: RunView): string {
  const type = String(run.trigger?.type ?? "manual");
  if (type === "manual" || type === "api") return run.requested_by || type;
  const name = run.trigger?.name ? ` ${String(run.trigger.name)}` : "";
  return `${type}${name}`;
}

export function Runs() {
  const [runs, setRuns] = useState<RunView[] | null>(null);
  const [error, setError] = useState("");
  const [workflow, setWorkflow] = useState("");
  const [status, setStatus] = useState("");
  const load = () => {
    const q = new URLSearchParams({ limit: "200" });
    if (workflow) q.set("workflow", workflow);
    if (status) q.set("status", status);
    api<RunView[]>("GET", `/v1/runs?${q}`)
      .then((r) => {
        setRuns(r);
        setError("");
      })
      .catch((e: ApiError) => setError(e.detail));
  };
  useEffect(load, [workflow, status]);
  useEvents("/v1/events", EVENTS.runs, 500, load);
  const workflows = [...new Set((runs ?? []).map((r) => r.workflow))].sort();
  return (
    <section>
      <h1>Runs</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Workflow{" "}
          <input list="wf-names" value={workflow} onInput={(e) => setWorkflow((e.target as HTMLInputElement).value)} />
          <datalist id="wf-names">
            {workflows.map((w) => (
              <option key={w} value={w} />
            ))}
          </datalist>
        </label>
        <label>
          Status{" "}
          <select value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s || "any"}
              </option>
            ))}
          </select>
        </label>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
      {runs === null ? (
        <p>Loading…</p>
      ) : runs.length === 0 ? (
        <p>No runs{workflow || status ? " match" : " yet"}.</p>
      ) : (
        <table class="runs">
          <thead>
            <tr>
              <th>Status</th>
              <th>Workflow</th>
              <th>Started by</th>
              <th>Started</th>
              <th>Took</th>
              <th>Run</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.run_id} data-run={r.run_id}>
                <td>
                  <span class={`badge s-${r.status}`}>{r.status}</span>
                </td>
                <td>{r.workflow}</td>
                <td>{startedBy(r)}</td>
                <td title={r.created_at}>{ago(r.created_at)}</td>
                <td>{duration(r.created_at, r.finished_at)}</td>
                <td>
                  <a href={`#/runs/${encodeURIComponent(r.run_id)}`}>{r.run_id}</a>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
