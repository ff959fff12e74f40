// Several connectors (SETTINGS.connectorUrls, first preferred): one signed request per attempt goes
// to the next connector only when one is down (unreachable, timeout, 5xx), never when one refuses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  advance, boot, fake, importMacro, lockState, settle, tap, tapLogin, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';
import {
  answerSignature, ConnectorDouble, ConnectorFleet, down, outcomes, parseAuthorization,
} from '../testing/connector-double.mjs';
import { NO_CONNECTIONS } from '../testing/fake-xapi.mjs';

const { MESSAGES, PANELS } = await importMacro();

const A = 'https://connector-a.test:8443';
const B = 'https://connector-b.test:8443';
const C = 'https://connector-c.test:8443';

/** The console lines from now on. */
function logLines(t) {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  return lines;
}

/**
 * The macro with connectorUrls [A, B] (or `urls`), each served as `backends` says (default: the
 * one connector double behind every URL, as two connectors on one database), from the start on.
 */
async function bootFleet(t, { urls = [A, B], backends = {}, settings = {} } = {}) {
  let fleet = null;
  const booted = await boot(t, {
    settings: { connectorUrls: urls, ...settings },
    prepare: (device, connector) => {
      const all = Object.fromEntries(urls.map((url) => [new URL(url).origin, connector]));
      fleet = new ConnectorFleet({ ...all, ...backends });
      device.http.route(fleet.handler);
    },
  });
  return { ...booted, fleet };
}

/** A signed error answer, as the connector gives after a request's signature held. */
function signedError(key, status, code) {
  return (request) => {
    const { nonce } = parseAuthorization(request.headers.authorization);
    const body = JSON.stringify({ error: { code, message: code } });
    return {
      status,
      headers: { 'content-type': 'application/json',
        'x-faceid-signature': answerSignature(key, nonce, body) },
      body,
    };
  };
}

const verifyNonces = (fleet) => fleet.calls.filter((call) => call.path === '/v1/verify')
  .map((call) => call.nonce);

test('a refused connection moves on to the next connector, with the same signed request',
  async (t) => {
    const lines = logLines(t);
    const { fleet } = await bootFleet(t);
    fleet.set(A, down.refused);
    await tapLogin();
    assert.deepEqual(lockState(), UNLOCKED);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B]);
    const nonces = verifyNonces(fleet);
    assert.equal(nonces.length, 2);
    assert.equal(nonces[0], nonces[1], 'one nonce, one ts: one attempt');
    const [first, second] = fake.http.requests.filter((r) => r.path === '/v1/verify');
    assert.equal(first.headers.authorization, second.headers.authorization);
    assert.equal(first.body, second.body);
    assert.ok(lines.includes(
      `faceid: connector ${A} unreachable: Failed to connect to host; trying ${B}`), lines);
    assert.ok(lines.includes(`faceid: /v1/verify answered by ${B}`));
  });

test('a connector that never answers times out, then the next one unlocks', async (t) => {
  const { fleet } = await bootFleet(t);
  fleet.set(A, down.hang);
  tap(PANELS.login.id);
  await settle();
  await advance(t, 24000);
  assert.deepEqual(lockState(), LOCKED);
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [A]);
  await advance(t, 2000);
  assert.deepEqual(lockState(), UNLOCKED, 'the device Timeout (25 s) ended the first try');
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B]);
});

test('a device HTTP client that never returns is given up at the macro deadline', async (t) => {
  const { fleet } = await bootFleet(t);
  // The device itself stalls on A's request: not even its own Timeout comes back.
  fake.commandLatency = (path, args) => (path === 'HttpClient Post' && args.Url.startsWith(A)
    ? 3600000 : 0);
  tap(PANELS.login.id);
  await settle();
  await advance(t, 29000);
  assert.deepEqual(lockState(), LOCKED);
  await advance(t, 2000);
  assert.deepEqual(lockState(), UNLOCKED, 'moved on after requestTimeoutSeconds + 5 s');
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [B]);
});

for (const status of [500, 502, 503, 504]) {
  test(`an HTTP ${status} moves on to the next connector`, async (t) => {
    const { fleet } = await bootFleet(t);
    fleet.set(A, down.status(status));
    await tapLogin();
    assert.deepEqual(lockState(), UNLOCKED);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B]);
  });
}

test('a signed 503 from a connector whose store failed moves on too', async (t) => {
  const { fleet, connector } = await bootFleet(t);
  fleet.set(A, signedError(connector.key, 503, 'store_unavailable'));
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B]);
});

for (const [status, message] of [[400, 'serviceError'], [401, 'unauthorized'],
  [403, 'unauthorized'], [404, 'serviceError'], [429, 'rateLimited']]) {
  test(`an HTTP ${status} is a refusal: no other connector is asked`, async (t) => {
    const lines = logLines(t);
    const { fleet } = await bootFleet(t);
    fleet.set(A, down.status(status));
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES[message]);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A]);
    assert.ok(lines.includes(`faceid: connector ${A} answered HTTP ${status}`));
  });
}

test('a signed refusal ends the attempt: no other connector is asked', async (t) => {
  const { fleet, connector } = await bootFleet(t);
  for (const [status, code] of [[401, 'clock_skew'], [401, 'replayed'], [400, 'bad_request']]) {
    fleet.calls = [];
    fleet.set(A, signedError(connector.key, status, code));
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, code);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A], code);
  }
});

test('a signed no-match, or an answer that fails its signature, is not retried elsewhere',
  async (t) => {
    const { fleet, connector } = await bootFleet(t);
    connector.outcome = outcomes.noMatch();
    await tapLogin();
    assert.equal(fake.lastAlert(), connector.outcome.message);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A]);

    connector.outcome = outcomes.match('Alice Example');
    fleet.calls = [];
    fleet.set(A, () => ({ status: 200, body: '{"verdict": "match"}' }));
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.badSignature);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A]);
  });

test('a connector that got the attempt but whose answer was lost costs one attempt only',
  async (t) => {
    // Two connectors on one database: B's replay cache is A's. A verifies, then dies unanswered.
    const { connector } = await bootFleet(t);
    const b = new ConnectorDouble({
      key: connector.key, serial: connector.serial, seenNonces: connector.seenNonces,
    });
    const fleet = new ConnectorFleet({
      [A]: (request) => {
        connector.handle(request);
        return { reject: { code: 1, message: 'Connection reset by peer' } };
      },
      [B]: b,
    });
    fake.http.route(fleet.handler);
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.failedOver, 'B refused the replayed request');
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B]);
    assert.equal(connector.verifyCalls().filter((call) => call.authenticated).length, 1);
    assert.equal(b.verifyCalls().filter((call) => call.authenticated).length, 0);
  });

test('a connector that failed is tried last for 60 s, then first again', async (t) => {
  const { fleet, connector } = await bootFleet(t, { backends: { [A]: down.refused } });
  // At start: the lock report failed over to B; the report-in went to B first.
  assert.deepEqual(fleet.urlsFor('/v1/lock'), [A, B]);
  assert.deepEqual(fleet.urlsFor('/v1/status'), [B]);
  fleet.set(A, connector); // A is back, but the macro does not know yet
  await advance(t, 20000);
  await tapLogin();
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [B]);
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(fleet.urlsFor('/v1/lock'), [A, B, B]);

  await advance(t, 41000); // 61 s after A failed
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [B, A]);
});

test('while the preferred connector is held back, the next failing one goes last too',
  async (t) => {
    const { fleet, connector } = await bootFleet(t, {
      urls: [A, B, C], backends: { [A]: down.refused },
    });
    fleet.calls = [];
    fleet.set(B, down.status(503));
    await tapLogin();
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [B, C]);
    fleet.set(B, connector);
    tap(PANELS.logout.id);
    await settle();
    assert.deepEqual(fleet.urlsFor('/v1/lock'), [C], 'A and B failed in the last 60 s');
  });

test('every connector down: each is tried once, in order, and the screen stays locked',
  async (t) => {
    const { fleet } = await bootFleet(t, { urls: [A, B, C] });
    await advance(t, 61000);
    fleet.calls = [];
    fleet.set(A, down.refused);
    fleet.set(B, down.status(502));
    fleet.set(C, down.refused);
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.unreachable);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, B, C]);
  });

test('a busy device HTTP client is not a connector failure: no other connector is asked',
  async (t) => {
    const { fleet } = await bootFleet(t);
    fleet.set(A, () => ({ reject: { code: 1, message: NO_CONNECTIONS } }));
    tap(PANELS.login.id);
    await settle();
    await advance(t, 10000);
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.busy);
    assert.deepEqual(fleet.urlsFor('/v1/verify'), [A, A, A, A, A]);
  });

test('connectorUrls must be 1 to 4 different http(s)://host[:port]: else not set up',
  async (t) => {
    const lists = {
      empty: [],
      'a string, not a list': A,
      'five URLs': [A, B, C, 'https://d.test', 'https://e.test'],
      'the same URL twice': [A, `${A}/`],
      'one with a path': [A, 'https://connector-b.test/faceid'],
      'not given': undefined,
    };
    for (const [what, connectorUrls] of Object.entries(lists)) {
      await t.test(what, async (sub) => {
        const lines = logLines(sub);
        const { connector } = await boot(sub, { settings: { connectorUrls } });
        await tapLogin();
        assert.deepEqual(lockState(), LOCKED);
        assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
        assert.equal(connector.calls.length, 0);
        assert.ok(lines.some((line) => /connectorUrls in SETTINGS is not a list/.test(line)));
      });
    }
  });

test('four URLs are accepted', async (t) => {
  const { fleet } = await bootFleet(t, { urls: [A, B, C, 'https://connector-d.test:8443'] });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [A]);
});

test('trailing slashes are dropped from connectorUrls', async (t) => {
  await bootFleet(t, { urls: [`${A}/`, `${B}//`] });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.http.requests.at(-1).url, `${A}/v1/verify`);
});

const PLAIN = [A, 'http://connector-b.test:8080'];

test('one http:// URL among https ones is refused without allowPlainHttp', async (t) => {
  const lines = logLines(t);
  const { connector } = await boot(t, { settings: { connectorUrls: PLAIN } });
  await tapLogin();
  assert.equal(fake.lastAlert(), MESSAGES.plainHttp);
  assert.equal(connector.calls.length, 0);
  assert.ok(lines.includes(`faceid: connectorUrls in SETTINGS has ${PLAIN[1]}: http:// and ` +
    'allowPlainHttp is false: refused'));
});

test('with allowPlainHttp an http:// URL is a fallback like any other', async (t) => {
  const urls = PLAIN;
  const { fleet } = await bootFleet(t, {
    urls, backends: { [A]: down.refused }, settings: { allowPlainHttp: true },
  });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.deepEqual(fleet.urlsFor('/v1/verify'), [urls[1]]);
});
