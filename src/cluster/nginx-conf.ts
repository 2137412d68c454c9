/**
 * NGINX in front of several weft instances (`weft nginx-conf`, deploy/nginx/weft.conf), issue 15.
 *
 * The rule: a request whose `resume` query parameter is a token of instance X (`X.` + 32
 * characters) goes to X, and to the other instances when X is down; everything else (new
 * sessions, /v1/realtime, HTTP) is balanced by least connections. NGINX's way to say "X first,
 * the others when X is down" is an upstream with X and the others as `backup`, so there is one
 * such upstream per instance, one least_conn upstream for the rest, and a `map` from the token's
 * prefix to the upstream's name.
 *
 * Choices (see the directives' comments in the output, and test/nginx.test.ts):
 * - `proxy_next_upstream error timeout http_503`, without `non_idempotent`: a GET (a WebSocket
 *   upgrade, a resume) goes to the next instance when one is draining (it answers 503 before the
 *   upgrade when it has peers); a POST completion is passed to
 *   another instance only when it was never sent (connection refused or connect timeout), which
 *   is what failover needs; once sent, a second try could generate (and charge the key) twice.
 * - `proxy_connect_timeout` short (2 s) so that a dead host fails over fast; read and send
 *   timeouts long (1 h) for long-lived WebSockets and streams (weft pings every 30 s anyway).
 * - `proxy_buffering off` for SSE, request buffering left on so that a body can be sent again
 *   to the next instance, `client_max_body_size` equal to weft's `--max-body-bytes`.
 * - No upstream keepalive: each request has its own connection (`Connection: close` unless it
 *   upgrades), which keeps least_conn's counts meaningful and avoids reusing a connection weft
 *   has just closed.
 * - The access log leaves out the query string: resume tokens are credentials.
 */
import { WeftError } from '../errors.js';
import { parseFlags, parseSize } from '../cli/args.js';

export interface NginxInstance {
  /** The instance's id (`weft serve --instance-id`): letters, digits, `_` and `-`, at most 64. */
  id: string;
  /** Where NGINX reaches it: `host:port` or `[ipv6]:port`. */
  address: string;
}

export interface NginxConfOptions {
  instances: NginxInstance[];
  /** `listen`'s address: a port, `ADDRESS:PORT` or `[IPV6]:PORT`. Default 80 (443 with TLS). */
  listen?: string | number;
  /** Default `_` (any name). */
  serverName?: string;
  /** client_max_body_size: weft's --max-body-bytes. Default 4 MiB, as weft's. */
  maxBodyBytes?: number;
  /** TLS at NGINX: PEM files of the certificate chain and its key. */
  tls?: { cert: string; key: string };
  /** Seconds to connect to an instance before trying the next. Default 2. */
  connectTimeoutS?: number;
  /** Seconds a stream or WebSocket may stay silent in either direction. Default 3600. */
  streamTimeoutS?: number;
  /** Seconds an instance that failed is left out before it is tried again. Default 10. */
  failTimeoutS?: number;
  /** The access log's path, or false for none. Default /var/log/nginx/access.log (Debian's and the nginx image's). */
  accessLog?: string | false;
}

/** The same rule as src/gateway/server.ts's instance ids. */
const INSTANCE_ID = /^[A-Za-z0-9_-]{1,64}$/;
const ADDRESS = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?):(\d{1,5})$/;
const LISTEN = /^(?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):)?(\d{1,5})$/;
const SERVER_NAME = /^[A-Za-z0-9.*_-]+(?: [A-Za-z0-9.*_-]+)*$/;
/** A file path NGINX reads as one word: nothing it would parse (spaces, quotes, `;`, braces, `$` variables, `#`). */
const PATH = /^[^\s;{}'"$\\#]+$/;

const bad = (msg: string) => new WeftError('WEFT_BAD_ARGUMENT', msg);

function port(p: string, what: string): void {
  const n = Number(p);
  if (n < 1 || n > 65535) throw bad(`${what}: port ${p} is not between 1 and 65535`);
}

function seconds(v: number | undefined, name: string, def: number): number {
  if (v === undefined) return def;
  if (!Number.isInteger(v) || v < 1) throw bad(`${name} must be a positive whole number of seconds (got ${v})`);
  return v;
}

function filePath(p: string, name: string): string {
  if (!PATH.test(p)) throw bad(`${name} ${JSON.stringify(p)} is not a path NGINX can read as one word (no spaces, quotes, ;, {, }, $, # or \\)`);
  return p;
}

/** A byte count as NGINX writes sizes: 4m, 64k, or bytes. */
function size(n: number): string {
  if (n % (1 << 20) === 0) return `${n >> 20}m`;
  if (n % 1024 === 0) return `${n / 1024}k`;
  return String(n);
}

function checkInstances(instances: NginxInstance[]): void {
  if (!Array.isArray(instances) || instances.length === 0) throw bad('at least one instance is needed (--instance ID=HOST:PORT)');
  const ids = new Set<string>();
  const addresses = new Set<string>();
  for (const { id, address } of instances) {
    if (typeof id !== 'string' || !INSTANCE_ID.test(id)) throw bad(`instance id ${JSON.stringify(id)} must be 1-64 letters, digits, _ or - (weft serve --instance-id)`);
    const m = typeof address === 'string' ? ADDRESS.exec(address) : null;
    if (!m) throw bad(`instance ${id}: address ${JSON.stringify(address)} must be HOST:PORT or [IPV6]:PORT`);
    port(m[1]!, `instance ${id}`);
    if (ids.has(id)) throw bad(`instance id ${id} is given twice`);
    if (addresses.has(address.toLowerCase())) throw bad(`address ${address} is given twice`);
    ids.add(id);
    addresses.add(address.toLowerCase());
  }
}

/** The `weft nginx-conf` command that prints this configuration, one option a line. */
function commandLine(o: NginxConfOptions): string[] {
  const opts = o.instances.map((i) => `--instance ${i.id}=${i.address}`);
  if (o.listen !== undefined) opts.push(`--listen ${o.listen}`);
  if (o.serverName !== undefined) opts.push(`--server-name '${o.serverName}'`);
  if (o.maxBodyBytes !== undefined) opts.push(`--max-body-bytes ${o.maxBodyBytes}`);
  if (o.tls) opts.push(`--tls-cert ${o.tls.cert} --tls-key ${o.tls.key}`);
  if (o.connectTimeoutS !== undefined) opts.push(`--connect-timeout ${o.connectTimeoutS}`);
  if (o.streamTimeoutS !== undefined) opts.push(`--stream-timeout ${o.streamTimeoutS}`);
  if (o.failTimeoutS !== undefined) opts.push(`--fail-timeout ${o.failTimeoutS}`);
  if (o.accessLog !== undefined) opts.push(`--access-log ${o.accessLog === false ? 'off' : o.accessLog}`);
  return ['weft nginx-conf', ...opts].map((l, i, all) => `${i === 0 ? '' : '  '}${l}${i < all.length - 1 ? ' \\' : ''}`);
}

/**
 * The NGINX configuration for weft instances: an include file for the `http {}` block (NGINX's
 * conf.d/). Upstream names are `weft_pool` and `weft_instance_N` (N: the instance's index), since
 * NGINX compares upstream names ignoring case and ids do not.
 */
export function nginxConf(o: NginxConfOptions): string {
  checkInstances(o.instances);
  const listen = String(o.listen ?? (o.tls ? 443 : 80));
  const lm = LISTEN.exec(listen);
  if (!lm) throw bad(`listen ${JSON.stringify(listen)} must be PORT, ADDRESS:PORT or [IPV6]:PORT`);
  port(lm[1]!, 'listen');
  const serverName = o.serverName ?? '_';
  if (!SERVER_NAME.test(serverName)) throw bad(`server name ${JSON.stringify(serverName)} must be host names separated by spaces`);
  const maxBody = o.maxBodyBytes ?? 4 << 20;
  if (!Number.isSafeInteger(maxBody) || maxBody < 1) throw bad(`maxBodyBytes must be a positive integer (got ${maxBody})`);
  const connect = seconds(o.connectTimeoutS, 'connectTimeoutS', 2);
  const stream = seconds(o.streamTimeoutS, 'streamTimeoutS', 3600);
  const fail = seconds(o.failTimeoutS, 'failTimeoutS', 10);
  const accessLog = o.accessLog === false ? 'off' : `${filePath(o.accessLog ?? '/var/log/nginx/access.log', 'accessLog')} weft_log`;
  const server = (i: NginxInstance, backup = false) => `    server ${i.address} max_fails=1 fail_timeout=${fail}s${backup ? ' backup' : ''};  # ${i.id}`;
  const out: string[] = [
    '# weft behind NGINX: an include file for the http {} block (conf.d/). A resume',
    '# (/v1/ws?resume=ID.xxx) goes to instance ID, or to the others while it is down; everything',
    '# else is balanced by least connections. Generated: change the command, not this file.',
    ...commandLine(o).map((l) => `#   ${l}`),
    '',
    '# WebSocket upgrades: Upgrade and Connection are hop-by-hop, so they are passed explicitly.',
    'map $http_upgrade $weft_connection {',
    '    default upgrade;',
    "    ''      close;",
    '}',
    '',
    "# The resume token's instance (case-sensitive, as ids are); other tokens and none: the pool.",
    'map $arg_resume $weft_upstream {',
    '    default weft_pool;',
    ...o.instances.map((inst, n) => `    ~^${inst.id}\\. weft_instance_${n};`),
    '}',
    '',
    '# No query string in the access log: resume tokens are credentials.',
    "log_format weft_log '$remote_addr [$time_local] \"$request_method $uri\" $status $body_bytes_sent '",
    "                    '$request_time upstream=$weft_upstream addr=$upstream_addr';",
    '',
    'upstream weft_pool {',
    '    zone weft_pool 64k;',
    '    least_conn;',
    ...o.instances.map((i) => server(i)),
    '}',
  ];
  o.instances.forEach((inst, n) => {
    out.push(
      '',
      `# resumes of ${inst.id}: ${inst.id} first, the others (backup) only while it is down`,
      `upstream weft_instance_${n} {`,
      `    zone weft_instance_${n} 64k;`,
      '    least_conn;',
      server(inst),
      ...o.instances.filter((x) => x !== inst).map((x) => server(x, true)),
      '}',
    );
  });
  out.push(
    '',
    'server {',
    `    listen ${listen}${o.tls ? ' ssl' : ''};`,
    `    server_name ${serverName};`,
  );
  if (o.tls) {
    out.push(
      `    ssl_certificate ${filePath(o.tls.cert, 'tls.cert')};`,
      `    ssl_certificate_key ${filePath(o.tls.key, 'tls.key')};`,
      '    ssl_protocols TLSv1.2 TLSv1.3;',
    );
  }
  out.push(
    `    access_log ${accessLog};`,
    '',
    "    # weft's --max-body-bytes; over it NGINX answers 413 with weft's error body",
    `    client_max_body_size ${size(maxBody)};`,
    '    client_body_buffer_size 1m;',
    '    error_page 413 @weft_body_too_large;',
    '    location @weft_body_too_large {',
    '        default_type application/json;',
    `        return 413 '{"error": {"message": "the request body is larger than ${maxBody} bytes (weft serve --max-body-bytes)", "type": "invalid_request_error", "param": null, "code": "WEFT_BODY_TOO_LARGE"}}';`,
    '    }',
    '',
    '    location / {',
    '        proxy_pass http://$weft_upstream;',
    '        proxy_http_version 1.1;',
    '        proxy_set_header Upgrade $http_upgrade;',
    '        proxy_set_header Connection $weft_connection;',
    '        proxy_set_header Host $host;',
    '        proxy_set_header X-Real-IP $remote_addr;',
    '        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
    '        proxy_set_header X-Forwarded-Proto $scheme;',
    '',
    '        # the next instance on a refused or timed-out connect; a GET (WebSocket upgrades, resumes)',
    '        # also on an error before the response, or a 503 (an instance draining or loading answers',
    '        # upgrades with 503); a POST only when it was never sent (no non_idempotent: a completion',
    '        # that reached an instance is not generated twice)',
    '        proxy_next_upstream error timeout http_503;',
    `        proxy_connect_timeout ${connect}s;`,
    '        # WebSockets and SSE streams live long (weft pings every 30 s)',
    `        proxy_read_timeout ${stream}s;`,
    `        proxy_send_timeout ${stream}s;`,
    '        # SSE must not wait in a buffer (weft also sends X-Accel-Buffering: no); bodies are',
    '        # buffered (the default) so that one can be sent again to the next instance',
    '        proxy_buffering off;',
    '        gzip off;',
    '    }',
    '}',
  );
  return out.join('\n') + '\n';
}

/**
 * A complete nginx.conf around `nginxConf`, every path relative to NGINX's prefix, to run
 * unprivileged: `nginx -p PREFIX -c FILE -g 'daemon off;'` (tests, a trial on one machine).
 * When NGINX runs as root its workers run as `nobody`: the prefix must be readable by it.
 */
export function nginxStandaloneConf(o: NginxConfOptions & { workerProcesses?: number }): string {
  const workers = o.workerProcesses ?? 1;
  if (!Number.isInteger(workers) || workers < 1) throw bad(`workerProcesses must be a positive integer (got ${workers})`);
  const { workerProcesses: _, ...rest } = o;
  const http = nginxConf({ ...rest, accessLog: o.accessLog ?? 'access.log' });
  return [
    `worker_processes ${workers};`,
    'pid nginx.pid;',
    'error_log error.log warn;',
    'events {',
    '    worker_connections 1024;',
    '}',
    'http {',
    '    client_body_temp_path client_body_temp;',
    '    proxy_temp_path proxy_temp;',
    '    fastcgi_temp_path fastcgi_temp;',
    '    uwsgi_temp_path uwsgi_temp;',
    '    scgi_temp_path scgi_temp;',
    ...http.trimEnd().split('\n').map((l) => (l === '' ? '' : `    ${l}`)),
    '}',
    '',
  ].join('\n');
}

/**
 * `weft nginx-conf --instance ID=HOST:PORT ... [--listen 80] [--server-name NAME]
 * [--max-body-bytes SIZE] [--tls-cert FILE --tls-key FILE] [--connect-timeout S] [--stream-timeout S]
 * [--fail-timeout S] [--access-log PATH|off]`: the configuration, for stdout. `--instance` repeats (or takes a comma-separated list).
 */
export function nginxConfCommand(argv: string[]): string {
  const instances: NginxInstance[] = [];
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg !== '--instance' && !arg.startsWith('--instance=')) {
      rest.push(arg);
      continue;
    }
    const value = arg === '--instance' ? argv[++i] : arg.slice('--instance='.length);
    if (value === undefined) throw bad('--instance needs a value: ID=HOST:PORT');
    for (const item of value.split(',')) {
      const eq = item.indexOf('=');
      if (eq < 0) throw bad(`--instance ${item} must be ID=HOST:PORT`);
      instances.push({ id: item.slice(0, eq), address: item.slice(eq + 1) });
    }
  }
  const f = parseFlags(rest, {
    listen: 'string', 'server-name': 'string', 'max-body-bytes': 'string', 'tls-cert': 'string', 'tls-key': 'string',
    'connect-timeout': 'number', 'stream-timeout': 'number', 'fail-timeout': 'number', 'access-log': 'string',
  });
  const accessLog = f['access-log'] as string | undefined;
  const cert = f['tls-cert'] as string | undefined;
  const key = f['tls-key'] as string | undefined;
  if ((cert === undefined) !== (key === undefined)) throw bad('--tls-cert FILE and --tls-key FILE go together: give both or neither');
  const maxBody = f['max-body-bytes'] as string | undefined;
  return nginxConf({
    instances,
    listen: f.listen as string | undefined,
    serverName: f['server-name'] as string | undefined,
    maxBodyBytes: maxBody === undefined ? undefined : parseSize(maxBody, '--max-body-bytes'),
    tls: cert !== undefined && key !== undefined ? { cert, key } : undefined,
    connectTimeoutS: f['connect-timeout'] as number | undefined,
    streamTimeoutS: f['stream-timeout'] as number | undefined,
    failTimeoutS: f['fail-timeout'] as number | undefined,
    accessLog: accessLog === 'off' ? false : accessLog,
  });
}
