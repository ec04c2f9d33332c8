import { useEffect, useState } from "preact/hooks";
import { api, ApiError, type AgentView, type AuditEntry } from "../api";
import { ago, json } from "../live";

export function Agents() {
  const [items, setItems] = useState<AgentView[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api<AgentView[]>("GET", "/v1/agents").then(setItems).catch((e: ApiError) => setError(e.detail));
  }, []);
  return (
    <section>
      <h1>Agents</h1>
      {error && <p class="error" role="alert">{error}</p>}
      {items?.map((a) => (
        <details key={a.name} class="card">
          <summary>
            <b>{a.name}</b> · {a.image ?? "(no image)"} · risk {a.risk} · network {a.network}
            {a.source === "builtin" ? " · built-in" : ""}
          </summary>
          <p>{a.description}</p>
          <p>Command: {a.command ? a.command.join(" ") : "the image's"}</p>
          <p>Secrets: {a.secrets.length ? a.secrets.join(", ") : "none"}</p>
          <h3>Input schema</h3>
          <pre tabIndex={0}>{json(a.inputs)}</pre>
          <h3>Output schema</h3>
          <pre tabIndex={0}>{json(a.outputs)}</pre>
        </details>
      ))}
    </section>
  );
}

export function Audit() {
  const [items, setItems] = useState<AuditEntry[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api<AuditEntry[]>("GET", "/v1/audit?limit=300").then(setItems).catch((e: ApiError) => setError(e.detail));
  }, []);
  return (
    <section>
      <h1>Audit log</h1>
      {error && <p class="error" role="alert">{error}</p>}
      {items && (
        <table>
          <thead>
            <tr>
              <th>When</th>
              <th>Who</th>
              <th>Did</th>
              <th>To</th>
              <th>Outcome</th>
              <th>Detail</th>
            </tr>
          </thead>
          <tbody>
            {items.map((e, i) => (
              <tr key={i}>
                <td title={e.time}>{ago(e.time)}</td>
                <td>{e.user}</td>
                <td>{e.action}</td>
                <td>{e.target}</td>
                <td>
                  {e.outcome}
                  {e.status ? ` (${e.status})` : ""}
                </td>
                <td>{e.detail}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
