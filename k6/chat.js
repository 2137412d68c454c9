// k6 run k6/chat.js — VUS virtual users each hold multi-turn chat sessions against weft for
// DURATION: connect, TURNS message.create turns, session.close, again. See k6/README.md.
//
//   k6 run -e URL=ws://127.0.0.1:8080/v1/ws -e VUS=8 -e DURATION=30s -e MAX_TOKENS=64 k6/chat.js
import { chat, env, envNumber, settings } from './lib/weft.js';

const s = settings();

/** @type {import('k6/options').Options} */
export const options = {
  scenarios: {
    chat: {
      executor: 'constant-vus',
      vus: envNumber('VUS', 4, { integer: true, min: 1 }),
      duration: env('DURATION', '30s'),
      gracefulStop: env('GRACEFUL_STOP', '30s'),
    },
  },
  thresholds: {
    weft_ttft: [`p(99)<${envNumber('TTFT_P99_MS', 1000)}`],
    weft_itl: [`p(99)<${envNumber('ITL_P99_MS', 250)}`],
    weft_errors: [`count<=${envNumber('MAX_ERRORS', 0, { integer: true })}`],
    checks: ['rate==1'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max', 'count'],
};

export default async function () {
  await chat(s, __VU, __ITER);
}
