// Live updates from the gateway's /v1/events (Server-Sent Events, resumed by the browser itself).
import { useEffect, useRef } from "preact/hooks";

const RUN = ["run.requested", "run.planned", "run.rejected", "run.started", "run.succeeded", "run.failed", "run.cancelled"];
const APPROVAL = ["approval.requested", "approval.granted", "approval.rejected", "approval.expired"];
const STEP = ["run.cancel_requested", "task.started", "task.succeeded", "task.failed", "node.failed"];

/** What a page listens for: a list of runs changes only with runs' own states (and approvals,
 * which make a run wait); one run's page with every step. */
export const EVENTS = { runs: [...RUN, ...APPROVAL], approvals: APPROVAL, run: [...RUN, ...APPROVAL, ...STEP] };

/** Call `onEvent` once per burst of the given events of the stream at `url` (at most every `wait`
 * ms, trailing): a busy stack must not make every open page refetch for every step of every run. */
export function useEvents(url: string | null, types: string[], wait: number, onEvent: () => void): void {
  const callback = useRef(onEvent);
  callback.current = onEvent;
  useEffect(() => {
    if (url === null) return;
    const source = new EventSource(url, { withCredentials: true });
    let timer: number | null = null;
    const fire = () => {
      if (timer !== null) return;
      timer = window.setTimeout(() => {
        timer = null;
        callback.current();
      }, wait);
    };
    for (const t of types) source.addEventListener(t, fire);
    return () => {
      source.close();
      if (timer !== null) window.clearTimeout(timer);
    };
  }, [url, types, wait]);
}

export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "";
  return span((now - Date.parse(iso)) / 1000) + " ago";
}

export function span(s: number): string {
  if (!isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function duration(start: string | null | undefined, end: string | null | undefined): string {
  if (!start) return "";
  return span(((end ? Date.parse(end) : Date.now()) - Date.parse(start)) / 1000);
}

export function json(value: unknown): string {
  return JSON.stringify(value, null, 2) ?? "";
}
