/**
 * The context pool: FIFO leases, and a context set aside after a device timeout (its late GPU work
 * may still run) that returns only once it has drained, to a waiter first; a lease the pool did not
 * issue sets nothing aside; close() fails waiters and stops polling.
 */
import { describe, expect, test } from 'vitest';
import { ContextPool } from '../src/engine/contextPool.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ContextPool', () => {
  test('a context set aside is not leased until ready(), then goes to the waiter first', async () => {
    const pool = new ContextPool(2);
    const a = pool.tryAcquire()!;
    const b = pool.tryAcquire()!;
    expect([a.index, b.index].sort()).toEqual([0, 1]);
    let drained = false;
    pool.setAside(a, () => drained);
    a.release();
    expect(pool.numSetAside).toBe(1);
    expect(pool.numFree).toBe(0);
    const waiting = pool.acquire();
    let got: number | undefined;
    void waiting.then((l) => (got = l.index));
    b.release(); // the waiter takes b
    await tick(0);
    expect(got).toBe(b.index);
    const second = pool.acquire();
    let got2: number | undefined;
    void second.then((l) => (got2 = l.index));
    await tick(120);
    expect(got2).toBeUndefined(); // a is still draining
    drained = true;
    await tick(120); // polled every 50 ms
    expect(got2).toBe(a.index);
    expect(pool.numSetAside).toBe(0);
  });

  test('a lease the pool did not issue sets nothing aside; close() fails waiters', async () => {
    const pool = new ContextPool(1);
    pool.setAside({ index: 0, release: () => {} }, () => false);
    expect(pool.numSetAside).toBe(0);
    const l = pool.tryAcquire()!;
    expect(pool.owns(l)).toBe(true);
    const waiting = pool.acquire();
    pool.close();
    await expect(waiting).rejects.toMatchObject({ code: 'WEFT_DISPOSED' });
    l.release();
  });
});
