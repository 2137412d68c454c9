/** The reference for a cached turn: the same prompt tokens prefilled into a fresh sequence. */
import type { SamplingOptions } from '../../src/engine/engine.js';
import type { Scheduler } from '../../src/scheduler/scheduler.js';
import type { ChatFormat } from '../../src/session/chat-format.js';

export async function replayPrompt(sched: Scheduler, format: ChatFormat, prompt: readonly number[], sampling: SamplingOptions, maxTokens: number): Promise<{ text: string; tokens: number[] }> {
  const req = sched.submit({ tokens: [...prompt], sampling, maxTokens, decoder: format.tokenizer.createDecoder(), stopStrings: format.stopStrings });
  let text = '';
  for await (const ev of req) text += ev.text ?? '';
  return { text, tokens: req.generated };
}
