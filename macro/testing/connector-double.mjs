/**
 * The connector's macro API, protocol v2 (docs/api.md §2), as the macro sees it: it checks every
 * request signature and signs every answer with Node's own crypto, so the macro's SHA-256/HMAC and
 * signing are checked against an independent implementation. Served in-process (fake xapi
 * `route`) or as a real HTTP(S) server on 127.0.0.1 (`serveConnector`).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

export const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;
const AUTHORIZATION_RE = new RegExp('^FaceID-HMAC-SHA256 serial=([A-Za-z0-9_-]{1,64}),' +
  'ts=(\\d{1,12}),nonce=([A-Za-z0-9_-]{16,64}),signature=([0-9a-f]{64})$');
/** How far a request's ts may be from the connector's clock. */
export const CLOCK_WINDOW_S = 60;

/** {serial, ts, nonce, signature} of a v2 Authorization header value; null for anything else. */
export function parseAuthorization(value) {
  const found = AUTHORIZATION_RE.exec(value ?? '');
  if (!found) return null;
  const [, serial, ts, nonce, signature] = found;
  return { serial, ts: Number(ts), nonce, signature };
}

/** The request signature; `target` is the path with its query string, `body` the bytes sent. */
export function requestSignature(key, { method, target, serial, ts, nonce, body }) {
  const bodyHash = createHash('sha256').update(body).digest('hex');
  return createHmac('sha256', key)
    .update(`FACEID-V2\n${method}\n${target}\n${serial}\n${ts}\n${nonce}\n${bodyHash}`, 'utf8')
    .digest('hex');
}

/** The X-FaceID-Signature of an answer to the request that sent `nonce`. */
export function answerSignature(key, nonce, bodyText) {
  return createHmac('sha256', key)
    .update(`FACEID-V2-ANSWER\n${nonce}\n${bodyText}`, 'utf8')
    .digest('hex');
}

/** The connector answers in ASCII-only JSON. */
export function asciiJson(value) {
  return JSON.stringify(value)
    .replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export const outcomes = {
  match: (person) => ({ verdict: 'match', code: null, person, message: `Welcome, ${person}` }),
  noMatch: () => ({
    verdict: 'no_match', code: 'not_recognized', person: null,
    message: 'Face not recognised. The screen stays locked.',
  }),
  error: (code, message, retryAfterS = null) => ({
    verdict: 'error', code, person: null, message, retry_after_s: retryAfterS,
  }),
};

function errorReply(status, code, message) {
  return {
    status,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ error: { code, message } }),
  };
}

/** The path and query string of a request URL, exactly as written. */
function targetOf(url) {
  return url.replace(/^[a-z]+:\/\/[^/]*/i, '');
}

export class ConnectorDouble {
  /**
   * key: the device's 32 key bytes (Buffer). seenNonces: the replay cache, shared by doubles that
   * stand for connectors on one database.
   */
  constructor({ key, serial, seenNonces = new Set() }) {
    this.key = key;
    this.serial = serial;
    this.ttlSeconds = 30;
    /** How far the connector's clock is ahead of the device's. */
    this.clockOffsetS = 0;
    this.outcome = outcomes.match('Alice Example');
    this.enrollReply = { result: 'enrolled', code: null, message: 'Photo saved.', person: null };
    /** (answer, request) → answer: what a (faulty) connector would sign. */
    this.tamper = null;
    /** (reply, request, nonce) → reply: what reaches the device once signed (forged, replayed). */
    this.forge = null;
    /** request → reply or null: answer before any check (e.g. a 500 or a hang). */
    this.override = null;
    /** Every request: {method, path, target, body, auth, authenticated}. */
    this.calls = [];
    this.seenNonces = seenNonces;
    this.unlocked = false;
    /** Every authenticated POST /v1/status: {serial, push}, as the macro reported in. */
    this.reports = [];
    /** The unlock code events recorded (POST /v1/code-events), each id once. */
    this.codeEvents = [];
  }

  /** The key as the macro's SETTINGS.deviceKey holds it. */
  get deviceKey() {
    return this.key.toString('base64url');
  }

  /**
   * request: {method, url, headers (lower-case names), body (text), rawBody? (Buffer)}, as the
   * device sends it.
   */
  handle(request) {
    const target = request.target ?? targetOf(request.url);
    const [path, query = ''] = target.split('?');
    const auth = parseAuthorization(request.headers.authorization);
    const call = {
      method: request.method, path, target, body: request.body, auth, authenticated: false,
    };
    this.calls.push(call);
    if (this.override) {
      const reply = this.override(request);
      if (reply) return reply;
    }
    const bytes = request.rawBody ?? Buffer.from(request.body, 'utf8');
    if (!this.authentic(request.method, target, auth, bytes)) {
      return errorReply(401, 'unauthorized', 'Unknown device or bad request signature');
    }
    call.authenticated = true;
    if (request.method === 'GET' && path === '/v1/status') {
      if (new URLSearchParams(query).get('serial') !== auth.serial) {
        return errorReply(401, 'unauthorized', 'Unknown device or bad request signature');
      }
      return this.signed(this.status(), request, auth.nonce);
    }
    let body;
    try {
      body = JSON.parse(request.body);
    } catch {
      return errorReply(400, 'bad_request', 'The request body is not valid JSON');
    }
    if (body === null || body.serial !== auth.serial) {
      return errorReply(401, 'unauthorized', 'Unknown device or bad request signature');
    }
    const answer = this.answer(request.method, path, body, auth.nonce);
    return answer ? this.signed(answer, request, auth.nonce)
      : errorReply(404, 'not_found', 'Unknown path');
  }

  /** The header names this device, is fresh, and its signature covers exactly this request. */
  authentic(method, target, auth, body) {
    if (!auth || auth.serial !== this.serial || this.seenNonces.has(auth.nonce)) return false;
    if (Math.abs(auth.ts - this.now()) > CLOCK_WINDOW_S) return false;
    const expected = requestSignature(this.key, { ...auth, method, target, body });
    if (!timingSafeEqual(Buffer.from(expected), Buffer.from(auth.signature))) return false;
    this.seenNonces.add(auth.nonce);
    return true;
  }

  answer(method, path, body, nonce) {
    if (method !== 'POST') return null;
    if (path === '/v1/verify') return this.verify(nonce);
    if (path === '/v1/enroll') return { ...this.enrollReply, person: body.person };
    if (path === '/v1/lock') {
      this.unlocked = false;
      return { unlocked: false };
    }
    if (path === '/v1/status') {
      this.reports.push({ serial: body.serial, push: body.push });
      return this.status();
    }
    if (path === '/v1/code-events') return this.recordCodeEvents(body);
    return null;
  }

  /** {recorded: how many were new, serial}; an id seen before is not recorded twice. */
  recordCodeEvents(body) {
    const known = new Set(this.codeEvents.map((event) => event.id));
    const events = Array.isArray(body.events) ? body.events : [];
    const fresh = events.filter((event) => !known.has(event.id));
    this.codeEvents.push(...fresh);
    return { recorded: fresh.length, serial: body.serial };
  }

  /** What GET /v1/status answers, and POST /v1/status (a macro reporting in) too. */
  status() {
    return { enrolled_people: 1, unlocked: this.unlocked, locked_out_for_s: 0 };
  }

  verify(nonce) {
    this.unlocked = this.outcome.verdict === 'match';
    return {
      retry_after_s: null,
      ...this.outcome,
      serial: this.serial,
      nonce,
      expires_at: Math.floor(this.now()) + this.ttlSeconds,
    };
  }

  /** A 200 answer signed for the nonce of the request it answers. */
  signed(answer, request, nonce) {
    const body = asciiJson(this.tamper ? this.tamper(answer, request) : answer);
    const reply = {
      status: 200,
      headers: {
        'content-type': 'application/json',
        'x-faceid-signature': answerSignature(this.key, nonce, body),
      },
      body,
    };
    return this.forge ? this.forge(reply, request, nonce) : reply;
  }

  now() {
    return Date.now() / 1000 + this.clockOffsetS;
  }

  verifyCalls() {
    return this.calls.filter((call) => call.path === '/v1/verify');
  }
}

/** A connector URL that is down, as the device's HttpClient sees it (ConnectorFleet). */
export const down = {
  /** Nothing listens: the connection is refused at once. */
  refused: () => ({ reject: { code: 1, message: 'Failed to connect to host' } }),
  /** No answer ever: the device's own Timeout ends the request. */
  hang: () => new Promise(() => {}),
  /** A front (load balancer, HAProxy) answering `status` itself, unsigned. */
  status: (status) => () => ({
    status,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ error: { code: 'connector_unavailable', message: 'unavailable' } }),
  }),
};

/**
 * Several connector URLs for the in-process device (fake.http.route(fleet.handler)): each URL is
 * served by a ConnectorDouble or by a request → reply function such as one of `down`; a URL not
 * listed refuses connections. `calls` records which URL got each request, and its nonce.
 */
export class ConnectorFleet {
  constructor(backends) {
    this.backends = new Map(Object.entries(backends));
    this.calls = [];
    this.handler = (request) => this.handle(request);
  }

  /** Change what serves `url` (a double, or a function such as down.hang). */
  set(url, backend) {
    this.backends.set(url, backend);
  }

  handle(request) {
    const { origin, pathname } = new URL(request.url);
    const auth = parseAuthorization(request.headers.authorization);
    this.calls.push({ url: origin, path: pathname, nonce: auth ? auth.nonce : null });
    const backend = this.backends.get(origin) ?? down.refused;
    return backend instanceof ConnectorDouble ? backend.handle(request) : backend(request);
  }

  /** The URLs that got a request for `path`, in order. */
  urlsFor(path) {
    return this.calls.filter((call) => call.path === path).map((call) => call.url);
  }
}

/** Serve a ConnectorDouble on 127.0.0.1 (HTTPS when tls = {key, cert}); returns {url, close}. */
export async function serveConnector(connector, tls = null) {
  const onRequest = (incoming, outgoing) => {
    const chunks = [];
    incoming.on('data', (chunk) => chunks.push(chunk));
    incoming.on('end', () => {
      const rawBody = Buffer.concat(chunks);
      const reply = connector.handle({
        method: incoming.method,
        url: `${tls ? 'https' : 'http'}://${incoming.headers.host}${incoming.url}`,
        target: incoming.url,
        headers: incoming.headers,
        body: rawBody.toString('utf8'),
        rawBody,
      });
      outgoing.writeHead(reply.status, reply.headers);
      outgoing.end(reply.body);
    });
  };
  const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const scheme = tls ? 'https' : 'http';
  return {
    url: `${scheme}://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}
