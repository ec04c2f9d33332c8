import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, may, type LogLine, type NodeView, type RunView, type Session, type Usage } from "../api";
import { criticalPath, Dag, itemsDone } from "../dag";
import { ago, duration, EVENTS, json, useEvents } from "../live";
import { startedBy } from "./runs";

/** The node's agent's stderr: what it wrote so far, then followed live until the run ends. */
function Logs(props: { runId: string; node: string }) {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [error, setError] = useState("");
  const box = useRef<HTMLPreElement>(null);
  useEffect(() => {
    setLines([]);
    const url = `/v1/runs/${encodeURIComponent(props.runId)}/logs?follow=true&node=${encodeURIComponent(props.node)}`;
    const source = new EventSource(url, { withCredentials: true });
    source.addEventListener("log", (e) => {
      const batch = JSON.parse((e as MessageEvent).data) as { node: string; item: number | null; attempt: number; lines: string[] };
      setLines((old) => [...old, ...batch.lines.map((line) => ({ node: batch.node, item: batch.item, attempt: batch.attempt, line }))]);
    });
    source.addEventListener("end", () => source.close());
    source.onerror = () => setError(source.readyState === EventSource.CLOSED ? "the log stream closed" : "");
    return () => source.close();
  }, [props.runId, props.node]);
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines]);
  return (
    <div>
      <h3>Agent log (stderr)</h3>
      {error && <p class="muted">{error}</p>}
      <pre class="log" ref={box} tabIndex={0} aria-label="agent log">
        {lines.length === 0
          ? "(nothing written yet)"
          : lines.map((l) => `[${l.item === null ? "" : `#${l.item} `}attempt ${l.attempt}] ${l.line}`).join("\n")}
      </pre>
    </div>
  );
}

function usageText(u: Usage): string {
  const cost = u.cost_usd === null ? "cost unknown" : `$${u.cost_usd.toFixed(4)}`;
  return `${u.input_tokens.toLocaleString()} tokens in, ${u.output_tokens.toLocaleString()} out, ${cost}`;
}

function NodePanel(props: { run: RunView; id: string; node: NodeView }) {
  const { node, id } = props;
  return (
    <aside class="panel" aria-label={`step ${id}`}>
      <h2>
        {id} <span class={`badge s-${node.status}`}>{node.status}</span>
      </h2>
      <dl>
        <dt>Agent</dt>
        <dd>{node.agent ?? "—"}</dd>
        {node.capability && (
          <>
            <dt>Capability</dt>
            <dd>
              {node.capability} ({(node.candidates ?? []).join(", ")})
            </dd>
          </>
        )}
        {node.usage && (
          <>
            <dt>Usage</dt>
            <dd>{usageText(node.usage)}</dd>
          </>
        )}
        <dt>Attempts</dt>
        <dd>{node.attempts}</dd>
        <dt>Took</dt>
        <dd>{duration(node.started_at, node.finished_at) || "—"}</dd>
        {node.foreach && (
          <>
            <dt>Items</dt>
            <dd>{itemsDone(node)}</dd>
          </>
        )}
        {node.approval && (
          <>
            <dt>Approval</dt>
            <dd>
              {node.approval} {node.approval === "pending" && <a href="#/approvals">open the inbox</a>}
            </dd>
          </>
        )}
      </dl>
      {node.routing && node.routing.length > 0 && (
        <div class="routing">
          <h3>Routing</h3>
          <ol aria-label="candidates tried">
            {node.routing.map((r, i) => (
              <li key={i}>
                <strong>{r.agent}</strong> <span class={`badge r-${r.outcome}`}>{r.outcome}</span>
                {r.reason && <span class="muted"> {r.reason}</span>}
              </li>
            ))}
          </ol>
        </div>
      )}
      {node.error && (
        <div class="error" role="alert">
          <h3>Why it failed</h3>
          <p>{node.error}</p>
        </div>
      )}
      {node.errors.length > 1 && (
        <details>
          <summary>Every failed attempt ({node.errors.length})</summary>
          <ol>
            {node.errors.map((e, i) => (
              <li key={i}>{e}</li>
            ))}
          </ol>
        </details>
      )}
      {node.input !== null && node.input !== undefined && (
        <details>
          <summary>Input (secrets masked)</summary>
          <pre tabIndex={0}>{json(node.input)}</pre>
        </details>
      )}
      {node.output !== null && node.output !== undefined && (
        <details open>
          <summary>Output</summary>
          <pre tabIndex={0}>{json(node.output)}</pre>
        </details>
      )}
      <Logs runId={props.run.run_id} node={id} />
    </aside>
  );
}

export function Run(props: { id: string; session: Session }) {
  const [run, setRun] = useState<RunView | null>(null);
  const [error, setError] = useState("");
  const [selected, setSelected] = useState<string | null>(null);
  const [busy, setBusy] = useState("");
  const load = () =>
    api<RunView>("GET", `/v1/runs/${encodeURIComponent(props.id)}`)
      .then((r) => {
        setRun(r);
        setError("");
      })
      .catch((e: ApiError) => setError(e.detail));
  useEffect(() => {
    setRun(null);
    setSelected(null);
    load();
  }, [props.id]);
  useEvents(`/v1/events?run_id=${encodeURIComponent(props.id)}`, EVENTS.run, 100, load);
  const act = (what: "cancel" | "retry") => {
    setBusy(what);
    api<RunView>("POST", `/v1/runs/${encodeURIComponent(props.id)}/${what}`)
      .then((r) => {
        if (what === "retry") location.hash = `#/runs/${encodeURIComponent(r.run_id)}`;
        else load();
      })
      .catch((e: ApiError) => setError(e.detail))
      .finally(() => setBusy(""));
  };
  if (run === null) return <section>{error ? <p class="error" role="alert">{error}</p> : <p>Loading…</p>}</section>;
  const ended = ["succeeded", "failed", "cancelled"].includes(run.status);
  const operator = may(props.session, "operator");
  const failedNodes = Object.entries(run.nodes).filter(([, n]) => n.status === "failed");
  const critical = criticalPath(run.nodes);
  return (
    <section>
      <h1>
        {run.workflow} <span class={`badge s-${run.status}`} data-testid="run-status">{run.status}</span>
      </h1>
      <p class="muted">
        {run.run_id} · started by {startedBy(run)} {ago(run.created_at)} · took {duration(run.created_at, run.finished_at)}
        {run.workflow_version !== null && ` · version ${run.workflow_version}`}
        {run.retry_of && (
          <>
            {" "}· retry of <a href={`#/runs/${encodeURIComponent(run.retry_of)}`}>{run.retry_of}</a>
          </>
        )}
      </p>
      {operator && (
        <p class="actions">
          {!ended && (
            <button type="button" disabled={busy !== ""} onClick={() => act("cancel")}>
              Cancel run
            </button>
          )}
          {(run.status === "failed" || run.status === "cancelled") && (
            <button type="button" disabled={busy !== ""} onClick={() => act("retry")}>
              Retry run
            </button>
          )}
        </p>
      )}
      {error && <p class="error" role="alert">{error}</p>}
      {run.error && (
        <p class="error" role="alert">
          {run.error}
        </p>
      )}
      {run.errors.length > 0 && (
        <ul class="error" role="alert">
          {run.errors.map((e, i) => (
            <li key={i}>{e}</li>
          ))}
        </ul>
      )}
      {failedNodes.length > 0 && !selected && (
        <p>
          Failed:{" "}
          {failedNodes.map(([id]) => (
            <button type="button" class="link" key={id} onClick={() => setSelected(id)}>
              {id}
            </button>
          ))}
        </p>
      )}
      <div class="dag-wrap">
        <Dag nodes={run.nodes} selected={selected} onSelect={setSelected} />
      </div>
      <p class="muted small">Bold: the critical path ({[...critical].reverse().join(" → ")}).</p>
      {selected && run.nodes[selected] && <NodePanel run={run} id={selected} node={run.nodes[selected]} />}
      {ended && Object.keys(run.outputs).length > 0 && (
        <details open>
          <summary>Outputs</summary>
          <pre tabIndex={0}>{json(run.outputs)}</pre>
        </details>
      )}
    </section>
  );
}
