/**
 * The short table at the end of `scripts/gpu/gateway-pack.sh run`: from bench/gateway.ts' JSON
 * (one model's report, or `{models: [...]}`), per model and session count each mode's tokens/s,
 * its share of direct, TTFT and ITL, and the main thread's busy share and µs per token in the
 * profiled round; then the goals at 256 sessions (≥ 95% of direct, ≤ 1 ms added to p50 TTFT).
 *
 *   node dist/bench/gateway-summary.js FILE.json
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

interface Row { mode: string; sessions: number; tokens_per_s: number; vs_direct: number; ttft_p50_ms: number; ttft_p99_ms: number; itl_p50_ms: number; itl_p99_ms: number }
interface Profile { mode: string; sessions: number; tokens: number; busyMs: number; utilization: number }
interface Report { model: string; device: string; rows: Row[]; profiles: Profile[] }

const json = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as Report | { models: Report[] };
const reports = 'models' in json ? json.models : [json];
const lines = [
  '| model | sessions | mode | tokens/s | vs direct | TTFT p50 / p99 ms | ITL p50 / p99 ms | loop busy | loop µs/token |',
  '|---|---|---|---|---|---|---|---|---|',
];
const goals: string[] = [];
for (const r of reports) {
  const name = basename(r.model);
  for (const row of r.rows) {
    const p = r.profiles.find((x) => x.mode === row.mode && x.sessions === row.sessions);
    const loop = p ? `${(p.utilization * 100).toFixed(1)}% | ${((p.busyMs * 1000) / p.tokens).toFixed(1)}` : '— | —';
    lines.push(
      `| ${name} | ${row.sessions} | ${row.mode} | ${row.tokens_per_s.toFixed(0)} | ${(row.vs_direct * 100).toFixed(1)}% | ` +
        `${row.ttft_p50_ms.toFixed(2)} / ${row.ttft_p99_ms.toFixed(2)} | ${row.itl_p50_ms.toFixed(2)} / ${row.itl_p99_ms.toFixed(2)} | ${loop} |`,
    );
  }
  const direct = r.rows.find((x) => x.sessions === 256 && x.mode === 'direct');
  for (const row of r.rows.filter((x) => x.sessions === 256 && x.mode !== 'direct')) {
    const added = row.ttft_p50_ms - direct!.ttft_p50_ms;
    const met = row.vs_direct >= 0.95 && added <= 1;
    goals.push(`${name} ${row.mode}, 256 sessions: ${(row.vs_direct * 100).toFixed(1)}% of direct, p50 TTFT ${added >= 0 ? '+' : ''}${added.toFixed(2)} ms: ${met ? 'met' : 'NOT met'}`);
  }
}
process.stdout.write(`\n${reports.map((r) => r.device || 'CPU').filter((d, i, a) => a.indexOf(d) === i).join(', ')}\n\n${lines.join('\n')}\n\n${goals.join('\n')}\n`);
