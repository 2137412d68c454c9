/** JSON-level mutations of a frame: keys dropped, duplicated, renamed or added, values retyped... */
import { BAD_NUMBERS, JUNK_KEYS, ODD_NUMBERS, ODD_STRINGS, TYPE_VARIANTS, deepNest, longString, randomValue } from './corpus.js';
import { Obj, Raw, brief, ser, type J } from './json.js';
import type { Rng } from './rng.js';
import { PROTO_KEYS } from './schema.js';

interface Container {
  node: Obj | J[];
  path: string;
}
function containers(v: J, path: string, out: Container[] = []): Container[] {
  if (v instanceof Obj) {
    out.push({ node: v, path });
    for (const [k, x] of v.entries) containers(x, `${path}.${k}`, out);
  } else if (Array.isArray(v)) {
    out.push({ node: v, path });
    v.forEach((x, i) => containers(x, `${path}[${i}]`, out));
  }
  return out;
}

const MUTATIONS = [
  [10, 'drop'],
  [8, 'dup'],
  [10, 'rename'],
  [10, 'add'],
  [14, 'proto'],
  [4, 'proto-all'],
  [12, 'retype'],
  [10, 'number'],
  [3, 'bad-number'],
  [8, 'string'],
  [4, 'long'],
  [4, 'deep'],
  [6, 'type'],
  [4, 'swap'],
  [5, 'stop'],
  [3, 'stop-ids'],
  [6, 'event_id'],
  [3, 'frame'],
] as const;

/** Applies one JSON-level mutation to the frame; returns the new root (a 'frame' mutation replaces it). */
export function mutate(r: Rng, root: Obj, log: string[]): J {
  const op = r.weighted(MUTATIONS);
  const all = containers(root, '$');
  const objs = all.filter((c): c is { node: Obj; path: string } => c.node instanceof Obj);
  const c = r.pick(objs);
  const o = c.node;
  const entryAt = (): [string, J] | undefined => (o.entries.length ? r.pick(o.entries) : undefined);
  switch (op) {
    case 'drop': {
      if (!o.entries.length) break;
      const i = r.int(0, o.entries.length - 1);
      log.push(`drop ${c.path}.${o.entries[i]![0]}`);
      o.entries.splice(i, 1);
      return root;
    }
    case 'dup': {
      const e = entryAt();
      if (!e) break;
      const v = r.chance(0.5) ? e[1] : randomValue(r, log);
      log.push(`duplicate key ${c.path}.${e[0]}`);
      o.entries.splice(r.int(0, o.entries.length), 0, [e[0], v]);
      return root;
    }
    case 'rename': {
      const e = entryAt();
      if (!e) break;
      const to = r.chance(0.5) ? r.pick(PROTO_KEYS) : r.pick(JUNK_KEYS);
      log.push(`rename ${c.path}.${e[0]} -> ${JSON.stringify(to)}`);
      e[0] = to;
      return root;
    }
    case 'add': {
      const k = r.pick(JUNK_KEYS);
      log.push(`add key ${c.path}.${JSON.stringify(k)}`);
      o.entries.splice(r.int(0, o.entries.length), 0, [k, randomValue(r, log)]);
      return root;
    }
    case 'proto': {
      const k = r.pick(PROTO_KEYS);
      const v = r.chance(0.5) ? r.pick<J>([1, 0, 'x', true, null, 0.5]) : randomValue(r, log);
      log.push(`add prototype key ${c.path}.${k}`);
      o.entries.splice(r.int(0, o.entries.length), 0, [k, v]);
      return root;
    }
    case 'proto-all': {
      const k = r.pick(PROTO_KEYS);
      log.push(`add prototype key ${k} at every level`);
      for (const x of objs) x.node.entries.push([k, r.pick<J>([1, 'x', new Obj(), []])]);
      return root;
    }
    case 'retype': {
      const e = entryAt();
      if (!e) break;
      const v = randomValue(r, log);
      log.push(`${c.path}.${e[0]} := ${brief(v)}`);
      e[1] = v;
      return root;
    }
    case 'number':
    case 'bad-number': {
      const e = entryAt();
      if (!e) break;
      const text = op === 'number' ? r.pick(ODD_NUMBERS) : r.pick(BAD_NUMBERS);
      log.push(`${c.path}.${e[0]} := ${text.length > 40 ? text.slice(0, 20) + `...(${text.length} chars)` : text}`);
      e[1] = new Raw(text);
      return root;
    }
    case 'string':
    case 'long': {
      const e = entryAt();
      if (!e) break;
      const s = op === 'string' ? r.pick(ODD_STRINGS) : longString(r);
      log.push(`${c.path}.${e[0]} := ${brief(s)}`);
      e[1] = s;
      return root;
    }
    case 'deep': {
      const e = entryAt();
      if (!e) break;
      log.push(`at ${c.path}.${e[0]}:`);
      e[1] = deepNest(r, log);
      return root;
    }
    case 'type': {
      const t = r.chance(0.7) ? r.pick<J>(TYPE_VARIANTS) : randomValue(r, log);
      log.push(`type := ${brief(t)}`);
      root.set('type', t);
      return root;
    }
    case 'swap': {
      const pairs: [string, J][] = [
        ['session', new Obj([['system', 'x']])],
        ['content', 'hi'],
        ['sampling', new Obj([['max_tokens', 1]])],
        ['system', 'x'],
        ['max_tokens', 1],
        ['response_id', 'resp_1'],
        ['text', 'hi'],
        ['commit', true],
      ];
      const [k, v] = r.pick(pairs);
      log.push(`add field of another frame: $.${k}`);
      root.entries.push([k, v]);
      return root;
    }
    case 'stop': {
      const target = objs.find((x) => x.path.endsWith('sampling'))?.node ?? root;
      const v = r.pick<J>([Array.from({ length: 17 }, () => 'a'), [''], [1, 2], [['x']], ['\ud800'], [longString(r)], 'stop', [null], Array.from({ length: 16 }, () => 'x'.repeat(4096))]);
      log.push(`stop := ${brief(v)}`);
      target.set('stop', v);
      return root;
    }
    case 'stop-ids': {
      const target = objs.find((x) => x.path.endsWith('sampling'))?.node ?? root;
      const v = r.pick<J>([Array.from({ length: 17 }, (_, i) => i), [-1], [1.5], ['1'], [null], 1, [], [2 ** 31], [new Raw('1e300')], [new Raw('-0')], [[1]]]);
      log.push(`stop_token_ids := ${brief(v)}`);
      target.set('stop_token_ids', v);
      return root;
    }
    case 'event_id': {
      const v = r.pick<J>([1, null, true, '', 'x'.repeat(256), 'x'.repeat(257), '\ud800', '__proto__', new Obj(), ['e'], new Raw('1e400'), '\u{1f4a5}'.repeat(128), '\u{1f4a5}'.repeat(129)]);
      log.push(`event_id := ${brief(v)}`);
      root.set('event_id', v);
      return root;
    }
    case 'frame': {
      const v = r.pick<J>([null, true, 0, 'session.close', [], [root], new Raw(''), new Raw(' '), new Raw('{'), new Raw('}'), new Raw('{}'), new Raw(ser(root) + ser(root)), new Raw(ser(root) + ' x'), new Raw('\ufeff' + ser(root)), new Raw('/*c*/' + ser(root)), new Raw(ser(root).replace(/"/g, "'")), new Raw('{"type":"session.close",}')]);
      log.push(`whole frame := ${brief(v)}`);
      return v;
    }
  }
  // the picked container had no entries: add a prototype key instead
  log.push(`add prototype key ${c.path}.constructor`);
  o.entries.push(['constructor', 1]);
  return root;
}
