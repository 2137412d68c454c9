// Globals the k6 runtime has that @types/k6 does not declare (only these: no DOM types, so a
// browser API that k6 lacks fails the type-check). https://grafana.com/docs/k6/latest/javascript-api/#console
declare global {
  var console: {
    log(...args: unknown[]): void;
    info(...args: unknown[]): void;
    warn(...args: unknown[]): void;
    error(...args: unknown[]): void;
    debug(...args: unknown[]): void;
  };
}
export {};
