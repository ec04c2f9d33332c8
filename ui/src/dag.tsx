// A run's graph, laid out by dagre (nodes by their `needs`), drawn as SVG: coloured by status,
// fan-outs showing done/total items, the critical path (the chain that took longest) in bold.
import dagre from "@dagrejs/dagre";
import type { NodeView } from "./api";

const W = 168;
const H = 48;

function seconds(n: NodeView, now: number): number {
  if (!n.started_at) return 0;
  const end = n.finished_at ? Date.parse(n.finished_at) : now;
  return Math.max(0, (end - Date.parse(n.started_at)) / 1000);
}

/** The chain of nodes whose durations add up to the most: what the run waited on. */
export function criticalPath(nodes: Record<string, NodeView>, now = Date.now()): Set<string> {
  const best = new Map<string, { total: number; via: string | null }>();
  const visit = (id: string, seen: Set<string>): number => {
    const known = best.get(id);
    if (known) return known.total;
    if (seen.has(id)) return 0; // a cycle cannot be planned; never loop on one
    seen.add(id);
    let via: string | null = null;
    let longest = 0;
    for (const need of nodes[id]?.needs ?? []) {
      if (!(need in nodes)) continue;
      const t = visit(need, seen);
      if (t > longest || via === null) {
        longest = t;
        via = need;
      }
    }
    const total = longest + seconds(nodes[id], now);
    best.set(id, { total, via });
    return total;
  };
  let end: string | null = null;
  for (const id of Object.keys(nodes)) {
    const t = visit(id, new Set());
    if (end === null || t > (best.get(end)?.total ?? 0)) end = id;
  }
  const path = new Set<string>();
  for (let at = end; at !== null && !path.has(at); at = best.get(at)?.via ?? null) path.add(at);
  return path;
}

export function itemsDone(n: NodeView): string | null {
  if (!n.foreach) return null;
  if (!n.items) return "items: …";
  const done = n.items.filter((i) => ["succeeded", "failed", "skipped", "cancelled", "rejected"].includes(i.status)).length;
  return `${done}/${n.items.length} items`;
}

export function Dag(props: { nodes: Record<string, NodeView>; selected: string | null; onSelect: (id: string) => void }) {
  const { nodes } = props;
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 42, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const id of Object.keys(nodes)) g.setNode(id, { width: W, height: H });
  for (const [id, n] of Object.entries(nodes)) for (const need of n.needs) if (need in nodes) g.setEdge(need, id);
  dagre.layout(g);
  const critical = criticalPath(nodes);
  const graph = g.graph();
  const width = Math.max(graph.width ?? 0, W + 16);
  const height = Math.max(graph.height ?? 0, H + 16);
  return (
    <svg class="dag" viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="group" aria-label="The run's steps and what each waits for">
      {g.edges().map((e) => {
        const points = g.edge(e).points ?? [];
        const d = points.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" ");
        const hot = critical.has(e.v) && critical.has(e.w);
        return <path key={`${e.v}-${e.w}`} d={d} class={hot ? "edge critical" : "edge"} />;
      })}
      {Object.entries(nodes).map(([id, n]) => {
        const p = g.node(id);
        const x = p.x - W / 2;
        const y = p.y - H / 2;
        const extra = itemsDone(n) ?? (n.attempts > 1 ? `attempt ${n.attempts}` : n.agent ?? "");
        return (
          <g
            key={id}
            class={`node s-${n.status}${critical.has(id) ? " critical" : ""}${props.selected === id ? " selected" : ""}`}
            transform={`translate(${x},${y})`}
            tabIndex={0}
            role="button"
            aria-label={`${id}: ${n.status}`}
            data-node={id}
            onClick={() => props.onSelect(id)}
            onKeyDown={(e) => {
              if (e.key === "Enter" || e.key === " ") {
                e.preventDefault();
                props.onSelect(id);
              }
            }}
          >
            <rect width={W} height={H} rx={6} />
            <text x={10} y={19} class="id">
              {id.length > 22 ? `${id.slice(0, 21)}…` : id}
            </text>
            <text x={10} y={37} class="sub">
              {`${n.status}${extra ? ` · ${extra}` : ""}`.slice(0, 30)}
            </text>
          </g>
        );
      })}
    </svg>
  );
}
