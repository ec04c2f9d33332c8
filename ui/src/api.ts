// The gateway's public API, and nothing else: what the UI needs, the API has (OpenAPI documents it).

export class ApiError extends Error {
  constructor(
    public status: number,
    public detail: string,
    public errors: string[],
  ) {
    super(detail);
  }
}

let csrf = "";

export function setCsrf(token: string): void {
  csrf = token;
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // A change made with the session cookie carries the session's CSRF token.
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    let problem: { detail?: string; errors?: string[] } = {};
    try {
      problem = await response.json();
    } catch {
      // not problem+json: the status says enough
    }
    throw new ApiError(response.status, problem.detail ?? response.statusText, problem.errors ?? []);
  }
  return (await response.json()) as T;
}

export interface Session {
  user: string;
  roles: string[];
  csrf_token: string;
  expires_at: string;
}

export interface NodeView {
  status: string;
  agent: string | null;
  needs: string[];
  foreach: boolean;
  attempts: number;
  input: unknown;
  output: unknown;
  error: string | null;
  errors: string[];
  started_at: string | null;
  finished_at: string | null;
  approval_id: string | null;
  approval: string | null;
  items: NodeView[] | null;
  capability?: string | null;
  candidates?: string[];
  routing?: RouteStep[];
  usage?: Usage | null;
}

export interface RouteStep {
  agent: string;
  outcome: "chosen" | "skipped" | "failed";
  reason: string;
}

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cost_usd: number | null;
}

export interface RunView {
  run_id: string;
  workflow: string;
  workflow_version: number | null;
  status: string;
  outputs: Record<string, unknown>;
  error: string | null;
  errors: string[];
  nodes: Record<string, NodeView>;
  requested_by: string;
  trigger: Record<string, unknown>;
  created_at: string;
  finished_at: string | null;
  retry_of: string | null;
}

export interface Decision {
  user: string;
  at: string;
  comment: string;
}

export interface ApprovalView {
  id: string;
  run_id: string;
  node: string;
  workflow: string;
  agent: string;
  status: string;
  reason: string;
  requested_by: string;
  requested_at: string;
  approvers: string[];
  min_approvals: number;
  approvals: Decision[];
  rejection: Decision | null;
  expires_at: string;
  inputs: unknown;
  summary: string;
  kind?: "step" | "plan";
}

export interface PlanRound {
  errors: string[];
  error: string | null;
  usage: Usage | null;
  seconds: number;
}

export interface PlanView {
  id: string;
  goal: string;
  status: string;
  workflow: { yaml: string; document: Record<string, any> | null } | null;
  explanation: string;
  rounds: PlanRound[];
  model: string;
  usage: Usage;
  fallback: string | null;
  error: string | null;
  requested_by: string;
  decided_by: string[];
  workflow_version: number | null;
  run_id: string | null;
}

export interface InputView {
  type: string;
  description: string;
  required: boolean;
  has_default: boolean;
  default: unknown;
}

export interface WorkflowSummary {
  name: string;
  version: number;
  description: string;
  inputs: Record<string, InputView>;
  applied_at: string;
  applied_by: string;
}

export interface WorkflowVersion {
  name: string;
  version: number;
  source: string;
  definition: Record<string, unknown>;
  applied_at: string;
  applied_by: string;
}

export interface AgentView {
  name: string;
  description: string;
  image: string | null;
  command: string[] | null;
  risk: string;
  network: string;
  secrets: string[];
  inputs: Record<string, unknown>;
  outputs: Record<string, unknown>;
  source: string;
}

export interface AuditEntry {
  time: string;
  user: string;
  action: string;
  target: string;
  outcome: string;
  status: number | null;
  detail: string;
  via: string;
}

export interface LogLine {
  node: string;
  item: number | null;
  attempt: number;
  line: string;
}

export const may = (session: Session, role: string): boolean =>
  session.roles.includes("admin") || session.roles.includes(role);
