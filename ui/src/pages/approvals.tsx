import { useEffect, useState } from "preact/hooks";
import { api, ApiError, may, type ApprovalView, type NodeView, type PlanView, type RunView, type Session } from "../api";
import { Dag } from "../dag";
import { ago, EVENTS, json, span, useEvents } from "../live";

function Countdown(props: { until: string }) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(t);
  }, []);
  const left = (Date.parse(props.until) - now) / 1000;
  return <span class={left < 300 ? "urgent" : ""}>{left > 0 ? `expires in ${span(left)}` : "expired"}</span>;
}

/** What the steps before the gated one produced: a dry run's preview, where the workflow has one. */
function Preview(props: { runId: string; node: string }) {
  const [run, setRun] = useState<RunView | null>(null);
  useEffect(() => {
    api<RunView>("GET", `/v1/runs/${encodeURIComponent(props.runId)}`).then(setRun).catch(() => setRun(null));
  }, [props.runId]);
  const upstream = (run?.nodes[props.node]?.needs ?? []).filter((id) => run?.nodes[id]?.output != null);
  if (!run || upstream.length === 0) return null;
  return (
    <details open>
      <summary>Preview: what the steps before it produced</summary>
      {upstream.map((id) => (
        <div key={id}>
          <h3>
            {id} ({run.nodes[id].agent})
          </h3>
          <pre tabIndex={0}>{json(run.nodes[id].output)}</pre>
        </div>
      ))}
    </details>
  );
}

/** A proposed workflow's steps as the run graph draws them, before anything ran. */
export function planNodes(document: Record<string, any> | null | undefined): Record<string, NodeView> {
  const nodes: Record<string, NodeView> = {};
  for (const n of document?.spec?.nodes ?? []) {
    if (typeof n?.id !== "string") continue;
    nodes[n.id] = {
      status: "pending",
      agent: n.agent ?? (n.capability ? `capability ${n.capability}` : null),
      needs: Array.isArray(n.needs) ? n.needs.map(String) : [],
      foreach: n.foreach != null,
      attempts: 0,
      input: n.with ?? null,
      output: null,
      error: null,
      errors: [],
      started_at: null,
      finished_at: null,
      approval_id: null,
      approval: null,
      items: null,
    };
  }
  return nodes;
}

/** A proposed plan: how it was made, its graph, its YAML and the validator's rounds. */
function PlanPreview(props: { planId: string }) {
  const [plan, setPlan] = useState<PlanView | null>(null);
  const [picked, setPicked] = useState<string | null>(null);
  useEffect(() => {
    api<PlanView>("GET", `/v1/plans/${encodeURIComponent(props.planId)}`).then(setPlan).catch(() => setPlan(null));
  }, [props.planId]);
  if (!plan) return null;
  const nodes = planNodes(plan.workflow?.document);
  const tokens = plan.usage.input_tokens + plan.usage.output_tokens;
  return (
    <div class="plan" data-plan={plan.id}>
      <p>
        Goal: <b>{plan.goal}</b>
      </p>
      <p>
        {plan.fallback
          ? `The model gave no valid plan, so this is the template ${plan.fallback}.`
          : `Drafted by ${plan.model} in ${plan.rounds.length} round(s) (${tokens} tokens).`}{" "}
        Nothing runs until it is approved.
      </p>
      {plan.explanation && <p>The model's explanation: {plan.explanation}</p>}
      {Object.keys(nodes).length > 0 && <Dag nodes={nodes} selected={picked} onSelect={setPicked} />}
      {picked && nodes[picked] && (
        <p>
          {picked}: {nodes[picked].agent} with <code>{json(nodes[picked].input)}</code>
        </p>
      )}
      {plan.workflow && (
        <details open>
          <summary>Workflow (YAML)</summary>
          <pre tabIndex={0}>{plan.workflow.yaml}</pre>
        </details>
      )}
      {plan.rounds.length > 0 && (
        <details open>
          <summary>The validator's rounds</summary>
          <ol class="rounds">
            {plan.rounds.map((r, i) => (
              <li key={i}>
                {r.error ? r.error : r.errors.length === 0 ? "valid" : `${r.errors.length} error(s): ${r.errors.join("; ")}`}
              </li>
            ))}
          </ol>
        </details>
      )}
    </div>
  );
}

function Card(props: { a: ApprovalView; session: Session; onDone: () => void }) {
  const { a } = props;
  const [comment, setComment] = useState("");
  const [reason, setReason] = useState("");
  const [refusal, setRefusal] = useState("");
  const [busy, setBusy] = useState(false);
  const decide = (what: "approve" | "reject") => {
    if (what === "reject" && !reason.trim()) {
      setRefusal("A rejection needs a reason: say why, for the run's record.");
      return;
    }
    setBusy(true);
    const body = what === "approve" ? (comment ? { comment } : {}) : { reason };
    api<{ ok: boolean; message: string }>("POST", `/v1/approvals/${encodeURIComponent(a.id)}/${what}`, body)
      .then((r) => {
        if (!r.ok) setRefusal(r.message);
        props.onDone();
      })
      .catch((e: ApiError) => setRefusal(e.detail))
      .finally(() => setBusy(false));
  };
  const approver = may(props.session, "approver");
  const who = a.approvers.length ? a.approvers.join(", ") : "anyone but the requester";
  const plan = a.kind === "plan";
  return (
    <article class="card" data-approval={a.id} aria-label={plan ? `plan ${a.workflow}` : `approval for ${a.workflow} / ${a.node}`}>
      <h2>
        {plan ? `Plan: ${a.workflow}` : `${a.workflow} / ${a.node}`} <span class={`badge s-${a.status}`}>{a.status}</span>
      </h2>
      <p>
        {plan ? (
          <>Plan {a.run_id}, asked for by </>
        ) : (
          <>
            Agent <b>{a.agent}</b> in run <a href={`#/runs/${encodeURIComponent(a.run_id)}`}>{a.run_id}</a>, asked by{" "}
          </>
        )}
        {a.requested_by || "—"} {ago(a.requested_at)}
        {a.status === "pending" && (
          <>
            {" "}· <Countdown until={a.expires_at} />
          </>
        )}
      </p>
      {a.reason && <p>Why it needs approval: {a.reason}</p>}
      <p>
        For: {who} · approved {a.approvals.length} of {a.min_approvals}
        {a.approvals.length > 0 && ` (${a.approvals.map((d) => d.user).join(", ")})`}
      </p>
      {a.summary && <p class="muted">{a.summary}</p>}
      {plan ? (
        <PlanPreview planId={a.run_id} />
      ) : (
        <details open={a.status === "pending"}>
          <summary>Inputs (secrets masked)</summary>
          <pre tabIndex={0}>{json(a.inputs)}</pre>
        </details>
      )}
      {a.status === "pending" && !plan && <Preview runId={a.run_id} node={a.node} />}
      {a.rejection && (
        <p>
          Rejected by {a.rejection.user}: {a.rejection.comment}
        </p>
      )}
      {refusal && <p class="error" role="alert">{refusal}</p>}
      {a.status === "pending" && approver && (
        <div class="decide">
          <label>
            Comment (optional)
            <input value={comment} onInput={(e) => setComment((e.target as HTMLInputElement).value)} />
          </label>
          <button type="button" disabled={busy} onClick={() => decide("approve")}>
            Approve
          </button>
          <label>
            Reason (required to reject)
            <input value={reason} onInput={(e) => setReason((e.target as HTMLInputElement).value)} />
          </label>
          <button type="button" class="danger" disabled={busy} onClick={() => decide("reject")}>
            Reject
          </button>
        </div>
      )}
    </article>
  );
}

export function Approvals(props: { session: Session }) {
  const [items, setItems] = useState<ApprovalView[] | null>(null);
  const [error, setError] = useState("");
  const [all, setAll] = useState(false);
  const load = () =>
    api<ApprovalView[]>("GET", all ? "/v1/approvals" : "/v1/approvals?status=pending")
      .then((r) => {
        setItems(r);
        setError("");
      })
      .catch((e: ApiError) => setError(e.detail));
  useEffect(() => {
    load();
  }, [all]);
  useEvents("/v1/events", EVENTS.approvals, 250, load);
  return (
    <section>
      <h1>Approvals</h1>
      <label class="filters">
        <input type="checkbox" checked={all} onChange={(e) => setAll((e.target as HTMLInputElement).checked)} /> show decided ones
        too
      </label>
      {error && <p class="error" role="alert">{error}</p>}
      {items === null ? (
        <p>Loading…</p>
      ) : items.length === 0 ? (
        <p>Nothing is waiting for a decision.</p>
      ) : (
        items.map((a) => <Card key={a.id} a={a} session={props.session} onDone={load} />)
      )}
    </section>
  );
}
