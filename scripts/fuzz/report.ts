/** What a run found: failures (grouped by signature), statistics and notes, and how they are printed. */
import { isValidUtf8 } from './util.js';

export interface Failure {
  seed: number;
  transport: string;
  phase: 'ws' | 'http' | 'openai' | 'server';
  /** no-answer, closed, uncoded, accepted-invalid, rejected-valid, wrong-code, wrong-answer, no-echo, shape, stray, no-close, crash, health, ... */
  kind: string;
  /** Failures with the same signature are one distinct failure. */
  signature: string;
  detail: string;
  /** WebSocket frames: connection and index in that connection's stream (--print-frame transport:conn:index). */
  conn?: number;
  index?: number;
  /** The frame or request, printable (a JSON string literal, or hex). */
  input?: string;
  log?: string[];
}

export interface TransportStats {
  transport: string;
  frames: number;
  responses: number;
  http: number;
  /** Requests to the OpenAI-compatible routes. */
  openai: number;
  durationMs: number;
  restarts: number;
  stoppedByDeadline: boolean;
  /** How often each answer came (event types, error codes, closes): what the run reached. */
  answers: Record<string, number>;
}

export interface FuzzReport {
  seed: number;
  ok: boolean;
  stats: TransportStats[];
  /** Every failure, up to `maxPerSignature` kept per signature. */
  failures: Failure[];
  /** Distinct failures: signature, how many times, the first one. */
  distinct: { signature: string; count: number; first: Failure }[];
  /** Things that looked odd but are not failures. */
  notes: string[];
}

/** A frame as a pasteable JS string literal (hex when it is binary or not UTF-8). */
export function showFrame(data: Buffer, binary: boolean, max = 600): string {
  if (binary || !isValidUtf8(data)) {
    const hex = data.subarray(0, 200).toString('hex');
    return `${binary ? 'binary' : 'text (invalid UTF-8)'} hex:${hex}${data.length > 200 ? `... (${data.length} bytes)` : ''}`;
  }
  const text = data.toString('utf8');
  if (text.length <= max) return JSON.stringify(text);
  return `${JSON.stringify(text.slice(0, 300))} + ... (${data.length} bytes in all) ... + ${JSON.stringify(text.slice(-120))}`;
}

/** Raw bytes (an HTTP request) as a JS string literal of latin1 characters. */
export function showBytes(data: Buffer, max = 600): string {
  const s = data.toString('latin1');
  return s.length <= max ? JSON.stringify(s) : `${JSON.stringify(s.slice(0, 400))} + ... (${data.length} bytes in all)`;
}

export function formatReport(rep: FuzzReport): string {
  const lines: string[] = [];
  lines.push(`weft fuzz: seed ${rep.seed}: ${rep.ok ? 'OK' : `${rep.distinct.length} distinct failure(s), ${rep.distinct.reduce((a, d) => a + d.count, 0)} in all`}`);
  for (const s of rep.stats) {
    lines.push(`  ${s.transport}: ${s.frames} frames (${s.responses} responses), ${s.http} HTTP requests, ${s.openai} OpenAI requests, ${(s.durationMs / 1000).toFixed(1)} s, ${s.restarts} restart(s)${s.stoppedByDeadline ? ', stopped by the deadline' : ''}`);
    const a = Object.entries(s.answers).sort((x, y) => y[1] - x[1]);
    if (a.length) lines.push(`    answers: ${a.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  }
  for (const d of rep.distinct) {
    const f = d.first;
    lines.push('');
    lines.push(`[${d.count}x] ${d.signature}`);
    const where = f.conn !== undefined ? `, frame ${f.transport}:${f.conn}:${f.index} (--print-frame)` : f.index === undefined ? '' : f.phase === 'openai' ? `, OpenAI request ${f.transport}:${f.index} (--print-request)` : `, request #${f.index}`;
    lines.push(`  seed ${f.seed}, transport ${f.transport}${where}`);
    lines.push(`  ${f.detail.split('\n').join('\n  ')}`);
    if (f.input) lines.push(`  input: ${f.input}`);
    if (f.log?.length) lines.push(`  made by: ${f.log.join('; ')}`);
    const more = rep.failures.filter((x) => x.signature === d.signature && x !== f && x.input).slice(0, 2);
    for (const x of more) lines.push(`  also: ${x.input!.slice(0, 300)}${x.conn !== undefined ? ` (frame ${x.transport}:${x.conn}:${x.index})` : ''}`);
  }
  if (rep.notes.length) {
    lines.push('');
    lines.push('notes (not failures):');
    for (const n of rep.notes) lines.push(`  - ${n}`);
  }
  return lines.join('\n');
}
