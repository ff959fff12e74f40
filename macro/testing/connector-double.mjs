/**
 * The connector's macro API (docs/api.md §2) as the macro sees it, signed with Node's own HMAC so
 * the macro's SHA-256/HMAC is checked against an independent implementation. Served in-process
 * (fake xapi `route`) or as a real HTTP(S) server on 127.0.0.1 (`serveConnector`).
 */
import { createHmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

export const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;

/** The connector's signature: HMAC-SHA256(token, `serial|nonce|verdict|person|expires_at`). */
export function signAnswer(token, { serial, nonce, verdict, person, expiresAt }) {
  return createHmac('sha256', Buffer.from(token, 'utf8'))
    .update(`${serial}|${nonce}|${verdict}|${person || ''}|${expiresAt}`, 'utf8')
    .digest('hex');
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

function json(status, body, headers = {}) {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  };
}

function errorReply(status, code, message, headers) {
  return json(status, { error: { code, message } }, headers);
}

export class ConnectorDouble {
  constructor({ token, serial }) {
    this.token = token;
    this.serial = serial;
    this.ttlSeconds = 30;
    this.outcome = outcomes.match('Alice Example');
    this.enrollReply = { result: 'enrolled', code: null, message: 'Photo saved.', person: null };
    /** (answer, request body) → answer: forge or replay what goes back to the device. */
    this.tamper = null;
    /** request → reply or null: answer before any check (e.g. a 500 or a hang). */
    this.override = null;
    this.calls = [];
    this.unlocked = false;
  }

  /** request: {method, url, path, headers (lower-case names), body}, as the device sends it. */
  handle(request) {
    const { path } = request;
    this.calls.push({ path, body: request.body });
    if (this.override) {
      const reply = this.override(request);
      if (reply) return reply;
    }
    let body;
    try {
      body = JSON.parse(request.body);
    } catch {
      return errorReply(400, 'bad_request', 'The request body is not valid JSON');
    }
    if (request.headers.authorization !== `Bearer ${this.token}` || body.serial !== this.serial) {
      return errorReply(401, 'unauthorized', 'Unknown device or wrong device token');
    }
    if (path === '/v1/verify') return this.verify(body);
    if (path === '/v1/enroll') return json(200, { ...this.enrollReply, person: body.person });
    if (path === '/v1/lock') {
      this.unlocked = false;
      return json(200, { unlocked: false });
    }
    return errorReply(404, 'not_found', 'Unknown path');
  }

  verify(body) {
    if (!NONCE_RE.test(body.nonce ?? '')) return errorReply(400, 'bad_request', "bad 'nonce'");
    const { verdict, person } = this.outcome;
    const expiresAt = Math.floor(Date.now() / 1000) + this.ttlSeconds;
    let answer = {
      retry_after_s: null,
      ...this.outcome,
      nonce: body.nonce,
      expires_at: expiresAt,
      signature: signAnswer(this.token, {
        serial: this.serial, nonce: body.nonce, verdict, person, expiresAt,
      }),
    };
    if (this.tamper) answer = this.tamper(answer, body);
    this.unlocked = verdict === 'match';
    return json(200, answer);
  }

  verifyCalls() {
    return this.calls.filter((call) => call.path === '/v1/verify');
  }
}

/** Serve a ConnectorDouble on 127.0.0.1 (HTTPS when tls = {key, cert}); returns {url, close}. */
export async function serveConnector(connector, tls = null) {
  const onRequest = (incoming, outgoing) => {
    const chunks = [];
    incoming.on('data', (chunk) => chunks.push(chunk));
    incoming.on('end', () => {
      const url = `${tls ? 'https' : 'http'}://${incoming.headers.host}${incoming.url}`;
      const reply = connector.handle({
        method: incoming.method,
        url,
        path: new URL(url).pathname,
        headers: incoming.headers,
        body: Buffer.concat(chunks).toString('utf8'),
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
