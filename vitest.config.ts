import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // the engine's contexts run their own thread pools: one test file at a time keeps the
    // machine's cores for them (and timing-sensitive tests honest)
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
