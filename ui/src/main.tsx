import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, setCsrf, type Session } from "./api";
import { Approvals } from "./pages/approvals";
import { Agents, Audit } from "./pages/catalog";
import { Run } from "./pages/run";
import { Runs } from "./pages/runs";
import { Workflow, Workflows } from "./pages/workflows";
import "./style.css";

function SignIn(props: { onIn: (s: Session) => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = (e: Event) => {
    e.preventDefault();
    setBusy(true);
    // The token goes once, in the body; the gateway answers with an HttpOnly cookie. It is
    // never put in a URL or in the page's storage.
    api<Session>("POST", "/v1/session", { token })
      .then((s) => {
        setToken("");
        props.onIn(s);
      })
      .catch((err: ApiError) => setError(err.detail))
      .finally(() => setBusy(false));
  };
  return (
    <main class="signin">
      <h1>flowyard</h1>
      <form onSubmit={submit}>
        <label for="token">API token</label>
        <input id="token" type="password" autocomplete="off" value={token} onInput={(e) => setToken((e.target as HTMLInputElement).value)} />
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit" disabled={busy || !token}>
          Sign in
        </button>
      </form>
    </main>
  );
}

function route(): string[] {
  return location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent).filter(Boolean);
}

function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [path, setPath] = useState(route());
  useEffect(() => {
    const onHash = () => setPath(route());
    window.addEventListener("hashchange", onHash);
    api<Session>("GET", "/v1/session")
      .then((s) => {
        setCsrf(s.csrf_token);
        setSession(s);
      })
      .catch(() => setSession(null));
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  if (session === undefined) return <p>Loading…</p>;
  if (session === null)
    return (
      <SignIn
        onIn={(s) => {
          setCsrf(s.csrf_token);
          setSession(s);
        }}
      />
    );
  const signOut = () =>
    api("DELETE", "/v1/session")
      .catch(() => undefined)
      .finally(() => {
        setCsrf("");
        setSession(null);
        location.hash = "";
      });
  const [page, arg] = path;
  let body;
  if (page === "runs" && arg) body = <Run id={arg} session={session} />;
  else if (page === "approvals") body = <Approvals session={session} />;
  else if (page === "workflows" && arg) body = <Workflow name={arg} session={session} />;
  else if (page === "workflows") body = <Workflows />;
  else if (page === "agents") body = <Agents />;
  else if (page === "audit") body = <Audit />;
  else body = <Runs />;
  const here = page ?? "runs";
  const link = (to: string, label: string) => (
    <a href={`#/${to}`} aria-current={here === to ? "page" : undefined}>
      {label}
    </a>
  );
  return (
    <>
      <header>
        <nav aria-label="main">
          <b class="brand">flowyard</b>
          {link("runs", "Runs")}
          {link("approvals", "Approvals")}
          {link("workflows", "Workflows")}
          {link("agents", "Agents")}
          {link("audit", "Audit")}
        </nav>
        <span class="who">
          {session.user} ({session.roles.join(", ")}){" "}
          <button type="button" onClick={signOut}>
            Sign out
          </button>
        </span>
      </header>
      <main>{body}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
