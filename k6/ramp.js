// k6 run k6/ramp.js — adds virtual users (each holding chat sessions as in k6/chat.js) until
// the p99 inter-token latency passes ITL_SLO_MS: the weft_itl threshold has abortOnFail, so the
// run stops where the SLO breaks, and the summary says how many VUs ran then. See k6/README.md.
//
//   k6 run -e URL=ws://127.0.0.1:8080/v1/ws -e ITL_SLO_MS=100 k6/ramp.js
//   k6 run -e ITL_SLO_MS=100 -e STAGES=10s:4,20s:4,10s:8,20s:8 k6/ramp.js
import exec from 'k6/execution';
import { chat, env, envNumber, settings } from './lib/weft.js';

const s = settings();
const slo = envNumber('ITL_SLO_MS', 100);
const startVUs = envNumber('START_VUS', 1, { integer: true });

/**
 * The stages: STAGES (`duration:target,...`, k6 durations), or steps to each of LEVELS
 * (default 1,2,4,8,16,32,64): RAMP (5s) to reach the level, then HOLD (25s) at it.
 * @returns {import('k6/options').Stage[]}
 */
function stages() {
  const given = env('STAGES', '');
  if (given) {
    return given.split(',').map((part) => {
      const [duration, target] = part.trim().split(':');
      const n = Number(target);
      if (!duration || !Number.isInteger(n) || n < 0) throw new Error(`STAGES: "${part}" is not duration:target (30s:8)`);
      ms(duration);
      return { duration, target: n };
    });
  }
  const ramp = env('RAMP', '5s');
  const hold = env('HOLD', '25s');
  /** @type {import('k6/options').Stage[]} */
  const out = [];
  for (const level of env('LEVELS', '1,2,4,8,16,32,64').split(',')) {
    const n = Number(level);
    if (!Number.isInteger(n) || n < 1) throw new Error(`LEVELS: "${level}" is not a VU count`);
    out.push({ duration: ramp, target: n }, { duration: hold, target: n });
  }
  return out;
}

/**
 * A k6 duration (`1m30s`, `500ms`, `2h`, `10s`) in ms.
 * @param {string} d
 */
function ms(d) {
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let used = 0;
  /** @type {RegExpExecArray | null} */
  let m;
  while ((m = re.exec(d)) !== null) {
    total += Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[/** @type {'ms' | 's' | 'm' | 'h'} */ (m[2])];
    used += m[0].length;
  }
  if (used === 0 || used !== d.length) throw new Error(`"${d}" is not a duration (30s, 1m30s, 500ms)`);
  return total;
}

const plan = stages();
/** @type {number[]} */
const ends = []; // when each stage ends, in ms from the start
for (const st of plan) ends.push((ends.length ? ends[ends.length - 1] || 0 : 0) + ms(st.duration));
const maxVUs = Math.max(...plan.map((st) => st.target));

/** The tags of a turn starting now: the index of the stage it runs in. */
function stageTag() {
  const elapsed = Date.now() - exec.scenario.startTime;
  let i = ends.findIndex((end) => elapsed < end);
  if (i < 0) i = plan.length - 1; // ramp-down, graceful stop
  return { stage: String(i) };
}

/** @type {Record<string, import('k6/options').Threshold[]>} */
const thresholds = {
  // the SLO: checked every few seconds over all samples so far; the run stops when it fails
  weft_itl: [{ threshold: `p(99)<${slo}`, abortOnFail: true, delayAbortEval: env('DELAY_ABORT_EVAL', '10s') }],
};
// a sub-metric per stage, so that the summary has each stage's own latencies (these never fail)
for (let i = 0; i < plan.length; i++) {
  thresholds[`weft_itl{stage:${i}}`] = ['max>=0'];
  thresholds[`weft_ttft{stage:${i}}`] = ['max>=0'];
}

/** @type {import('k6/options').Options} */
export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs,
      stages: plan,
      gracefulRampDown: '10s',
      gracefulStop: '10s',
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max', 'count'],
};

export default async function () {
  await chat(s, __VU, __ITER, stageTag);
}

/**
 * The parts of k6's summary data that handleSummary reads.
 * @typedef {{type: string, values: Record<string, number>, thresholds?: Record<string, {ok: boolean}>}} SummaryMetric
 * @typedef {{metrics: Record<string, SummaryMetric | undefined>, state: {testRunDurationMs: number}}} SummaryData
 */

/** @param {number | undefined} v */
const fmt = (v) => (v === undefined ? '-' : v.toFixed(1));

/**
 * The summary: the VU count the run reached, whether the SLO broke, and each stage's p99.
 * @param {SummaryData} data
 */
export function handleSummary(data) {
  const m = data.metrics;
  const itl = m.weft_itl;
  const vus = m.vus;
  const reached = vus ? vus.values.max : 0;
  const broke = itl !== undefined && itl.thresholds !== undefined && Object.values(itl.thresholds).some((t) => !t.ok);
  const lines = [
    '',
    `weft ramp: ITL SLO p(99) < ${slo} ms`,
    broke
      ? `  the SLO broke at ${reached} VUs (p99 ITL ${fmt(itl && itl.values['p(99)'])} ms over the run): the run stopped there`
      : `  the SLO held up to ${reached} VUs, the most the stages asked for (${maxVUs}): p99 ITL ${fmt(itl && itl.values['p(99)'])} ms`,
    '',
    '| stage | VUs | ITL p50 ms | ITL p99 ms | TTFT p99 ms | deltas | within SLO |',
    '|---|---|---|---|---|---|---|',
  ];
  plan.forEach((st, i) => {
    const sub = m[`weft_itl{stage:${i}}`];
    const first = m[`weft_ttft{stage:${i}}`];
    if (!sub || !sub.values.count) return;
    const before = plan[i - 1];
    const from = before ? before.target : startVUs;
    const p99 = sub.values['p(99)'];
    const ok = p99 !== undefined && p99 < slo;
    lines.push(`| ${i} (${st.duration}) | ${from === st.target ? st.target : `${from}→${st.target}`} | ${fmt(sub.values.med)} | ${fmt(p99)} | ${fmt(first && first.values['p(99)'])} | ${sub.values.count} | ${ok ? 'yes' : 'no'} |`);
  });
  const tokens = m.weft_tokens;
  const errs = m.weft_errors;
  lines.push(
    '',
    `  tokens: ${tokens ? tokens.values.count : 0} (${fmt(tokens && tokens.values.rate)}/s); errors: ${errs ? errs.values.count : 0}; run: ${(data.state.testRunDurationMs / 1000).toFixed(1)} s`,
    '',
  );
  /** @type {Record<string, string>} */
  const out = { stdout: lines.join('\n') };
  const json = env('SUMMARY_JSON', '');
  if (json) out[json] = JSON.stringify(data, null, 2);
  return out;
}
