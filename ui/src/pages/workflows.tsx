import { useEffect, useState } from "preact/hooks";
import { stringify } from "yaml";
import { api, ApiError, may, type InputView, type RunView, type Session, type WorkflowSummary, type WorkflowVersion } from "../api";
import { ago } from "../live";

export function Workflows() {
  const [items, setItems] = useState<WorkflowSummary[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api<WorkflowSummary[]>("GET", "/v1/workflows").then(setItems).catch((e: ApiError) => setError(e.detail));
  }, []);
  return (
    <section>
      <h1>Workflows</h1>
      {error && <p class="error" role="alert">{error}</p>}
      {items === null ? (
        <p>Loading…</p>
      ) : items.length === 0 ? (
        <p>No workflow is registered; apply one with `flowyard workflows apply FILE`.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Workflow</th>
              <th>Version</th>
              <th>Description</th>
              <th>Applied</th>
            </tr>
          </thead>
          <tbody>
            {items.map((w) => (
              <tr key={w.name}>
                <td>
                  <a href={`#/workflows/${encodeURIComponent(w.name)}`}>{w.name}</a>
                </td>
                <td>{w.version}</td>
                <td>{w.description}</td>
                <td>
                  {ago(w.applied_at)} by {w.applied_by}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** A typed value from a form field: JSON for numbers, booleans, lists and objects. */
function parseField(input: InputView, raw: string): { value?: unknown; problem?: string } {
  if (raw === "") return input.required && !input.has_default ? { problem: "required" } : {};
  switch (input.type) {
    case "string":
      return { value: raw };
    case "integer":
      return /^-?\d+$/.test(raw.trim()) ? { value: Number(raw) } : { problem: "a whole number" };
    case "number":
      return isFinite(Number(raw)) ? { value: Number(raw) } : { problem: "a number" };
    case "boolean":
      return raw === "true" || raw === "false" ? { value: raw === "true" } : { problem: "true or false" };
    default:
      try {
        return { value: JSON.parse(raw) };
      } catch {
        return { problem: `JSON (${input.type})` };
      }
  }
}

function RunForm(props: { name: string; inputs: Record<string, InputView> }) {
  const [values, setValues] = useState<Record<string, string>>({});
  const [problems, setProblems] = useState<Record<string, string>>({});
  const [general, setGeneral] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = (e: Event) => {
    e.preventDefault();
    const inputs: Record<string, unknown> = {};
    const found: Record<string, string> = {};
    for (const [name, spec] of Object.entries(props.inputs)) {
      const parsed = parseField(spec, values[name] ?? "");
      if (parsed.problem) found[name] = `must be ${parsed.problem}`;
      else if ("value" in parsed) inputs[name] = parsed.value;
    }
    setProblems(found);
    setGeneral("");
    if (Object.keys(found).length) return;
    setBusy(true);
    api<RunView>("POST", "/v1/runs", { workflow: props.name, inputs })
      .then((r) => {
        location.hash = `#/runs/${encodeURIComponent(r.run_id)}`;
      })
      .catch((err: ApiError) => {
        // The API names the field in each error ("inputs: who: …"): show it beside that field.
        const byField: Record<string, string> = {};
        for (const line of err.errors.length ? err.errors : [err.detail]) {
          const field = Object.keys(props.inputs).find((n) => line.includes(`${n}:`) || line.includes(`'${n}'`));
          if (field) byField[field] = line;
          else setGeneral(line);
        }
        setProblems(byField);
      })
      .finally(() => setBusy(false));
  };
  const entries = Object.entries(props.inputs);
  return (
    <form class="run-form" onSubmit={submit} noValidate>
      <h2>Run it</h2>
      {entries.length === 0 && <p class="muted">This workflow takes no inputs.</p>}
      {entries.map(([name, spec]) => (
        <div class="field" key={name}>
          <label for={`in-${name}`}>
            {name} <span class="muted">({spec.type}{spec.required && !spec.has_default ? ", required" : ""})</span>
          </label>
          <input
            id={`in-${name}`}
            name={name}
            placeholder={spec.has_default ? `default: ${JSON.stringify(spec.default)}` : ""}
            aria-invalid={problems[name] ? "true" : "false"}
            aria-describedby={`in-${name}-help`}
            value={values[name] ?? ""}
            onInput={(e) => setValues({ ...values, [name]: (e.target as HTMLInputElement).value })}
          />
          <small id={`in-${name}-help`} class={problems[name] ? "error" : "muted"}>
            {problems[name] ?? spec.description}
          </small>
        </div>
      ))}
      {general && <p class="error" role="alert">{general}</p>}
      <button type="submit" disabled={busy}>
        Start run
      </button>
    </form>
  );
}

export function Workflow(props: { name: string; session: Session }) {
  const [version, setVersion] = useState<WorkflowVersion | null>(null);
  const [summary, setSummary] = useState<WorkflowSummary | null>(null);
  const [shown, setShown] = useState<number | null>(null); // null: the latest
  const [error, setError] = useState("");
  useEffect(() => {
    api<WorkflowSummary[]>("GET", "/v1/workflows")
      .then((all) => setSummary(all.find((w) => w.name === props.name) ?? null))
      .catch((e: ApiError) => setError(e.detail));
  }, [props.name]);
  useEffect(() => {
    const q = shown === null ? "" : `?version=${shown}`;
    api<WorkflowVersion>("GET", `/v1/workflows/${encodeURIComponent(props.name)}${q}`).then(setVersion).catch((e: ApiError) => setError(e.detail));
  }, [props.name, shown]);
  const versions = summary ? Array.from({ length: summary.version }, (_, i) => summary.version - i) : [];
  return (
    <section>
      <h1>{props.name}</h1>
      {error && <p class="error" role="alert">{error}</p>}
      {version && (
        <p class="muted">
          <label>
            Version{" "}
            <select value={String(version.version)} onChange={(e) => setShown(Number((e.target as HTMLSelectElement).value))}>
              {versions.map((v) => (
                <option key={v} value={String(v)}>
                  {v}
                  {v === summary?.version ? " (latest)" : ""}
                </option>
              ))}
            </select>
          </label>{" "}
          applied {ago(version.applied_at)} by {version.applied_by}
        </p>
      )}
      {summary && may(props.session, "operator") && <RunForm name={props.name} inputs={summary.inputs} />}
      {version && (
        <details open>
          <summary>Definition (YAML)</summary>
          <pre tabIndex={0}>{stringify(version.definition)}</pre>
        </details>
      )}
    </section>
  );
}
