// Face login: only a signed, fresh, unexpired match for this device unlocks; anything else stays
// locked and says why, never with text the macro could not verify.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  advance, boot, fake, importMacro, lockState, makeKey, settle, tap, tapLogin, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';
import {
  answerSignature, outcomes, parseAuthorization,
} from '../testing/connector-double.mjs';
import { NO_CONNECTIONS, xapiError } from '../testing/fake-xapi.mjs';

const { MESSAGES, PANELS } = await importMacro();

const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const SIGNATURE = 'x-faceid-signature';
const verifyNonces = (connector) => connector.verifyCalls().map((call) => call.auth.nonce);
const shown = () => fake.commandsTo('UserInterface Message Alert Display')
  .map((alert) => alert.args.Text);

/** The reply with its signature header replaced (undefined: removed). */
function withSignature(reply, signature) {
  const headers = { ...reply.headers };
  delete headers[SIGNATURE];
  if (signature !== undefined) headers[SIGNATURE] = signature;
  return { ...reply, headers };
}

test('a signed match unlocks and greets the person by name', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.match('Zoë Ødegård');
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.lastAlert(), 'Welcome, Zoë Ødegård');
  const [call] = connector.verifyCalls();
  assert.equal(call.body, '{"serial":"FOC1234X5YZ"}', 'the nonce travels in the header only');
  assert.equal(call.auth.serial, 'FOC1234X5YZ');
  assert.match(call.auth.nonce, NONCE);
  assert.ok(call.authenticated, 'the double checked the request signature with Node crypto');
});

test('every attempt sends a fresh nonce', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  for (let i = 0; i < 5; i++) await tapLogin();
  const nonces = verifyNonces(connector);
  assert.equal(nonces.length, 5);
  assert.equal(new Set(nonces).size, 5);
  nonces.forEach((nonce) => assert.match(nonce, NONCE));
  assert.ok(connector.calls.every((call) => call.authenticated));
});

test('login shows "Look at the camera…" with progress while the connector works', async (t) => {
  const { connector } = await boot(t);
  fake.http.route((request) => new Promise((resolve) => {
    setTimeout(() => resolve(connector.handle(request)), 3000);
  }));
  tap(PANELS.login.id);
  await settle();
  assert.equal(fake.lastAlert(), MESSAGES.look);
  await advance(t, 2000);
  assert.equal(fake.lastAlert(), `${MESSAGES.look} (2 s)`);
  assert.deepEqual(lockState(), LOCKED);
  await advance(t, 1000);
  assert.deepEqual(lockState(), UNLOCKED);
});

test('no match stays locked with the connector message', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), connector.outcome.message);
});

test('a lockout stays locked and shows how long to wait', async (t) => {
  const { connector } = await boot(t);
  const wait = 'Too many failed attempts. Try again in 60 seconds.';
  connector.outcome = outcomes.error('locked_out', wait, 60);
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), wait);
});

test('connector errors stay locked and show the connector message', async (t) => {
  const { connector } = await boot(t);
  for (const code of ['no_face', 'device_unreachable', 'snapshot_unavailable', 'internal_error']) {
    connector.outcome = outcomes.error(code, `message for ${code}`);
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, code);
    assert.equal(fake.lastAlert(), `message for ${code}`);
  }
});

test('"not enrolled" offers the first enrollment but stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.error('not_enrolled', 'Nobody is enrolled on this device yet.');
  await tapLogin();
  assert.deepEqual(lockState(), {
    hideAll: 'True', settingsMenu: 'Hidden',
    panels: [PANELS.code.id, PANELS.enroll.id, PANELS.login.id],
  });
  assert.equal(fake.lastAlert(), 'Nobody is enrolled on this device yet.');
});

test('a forged match signed with another key stays locked', async (t) => {
  const { connector } = await boot(t);
  const otherKey = makeKey();
  connector.forge = (reply, request, nonce) =>
    withSignature(reply, answerSignature(otherKey, nonce, reply.body));
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a match without a signature header, or with a garbled one, stays locked', async (t) => {
  const { connector } = await boot(t);
  const garbles = {
    missing: () => undefined,
    empty: () => '',
    'another hex value': () => 'f'.repeat(64),
    uppercase: (good) => good.toUpperCase(),
    truncated: (good) => good.slice(0, 63),
    'with a space': (good) => `${good} `,
  };
  for (const [what, garble] of Object.entries(garbles)) {
    connector.forge = (reply) => withSignature(reply, garble(reply.headers[SIGNATURE]));
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, what);
    assert.equal(fake.lastAlert(), MESSAGES.badSignature, what);
  }
});

test('a repeated signature header is ambiguous and refused, even if one copy holds', async (t) => {
  const { connector } = await boot(t);
  connector.forge = (reply) => ({
    ...reply,
    headers: [['Content-Type', 'application/json'], ['X-FaceID-Signature', 'f'.repeat(64)],
      ['X-FaceID-Signature', reply.headers[SIGNATURE]]],
  });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('the signature header name is matched without regard to case', async (t) => {
  const { connector } = await boot(t);
  connector.forge = (reply) => ({
    ...reply, headers: [['X-FACEID-SIGNATURE', reply.headers[SIGNATURE]]],
  });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a no-match answer rewritten to a match stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  connector.forge = (reply) => {
    const body = { ...JSON.parse(reply.body), verdict: 'match', person: 'Mallory', code: null };
    return { ...reply, body: JSON.stringify(body) };
  };
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a match for one person rewritten to name another stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.forge = (reply) => ({ ...reply, body: reply.body.replace('Alice Example', 'Mallory') });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a tampered message is not shown: the signature fails and the screen stays locked',
  async (t) => {
    const { connector } = await boot(t);
    connector.outcome = outcomes.noMatch();
    const lure = 'Call 555-0100 and read out the code on screen to unlock';
    connector.forge = (reply) => ({
      ...reply, body: reply.body.replace(connector.outcome.message, lure),
    });
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.badSignature);
    assert.ok(!shown().includes(lure));
  });

test('a replayed answer from an earlier attempt stays locked', async (t) => {
  const { connector } = await boot(t);
  let recorded = null;
  connector.forge = (reply) => {
    recorded = recorded ?? reply;
    return recorded;
  };
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED, 'the first, genuine answer unlocks');
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(lockState(), LOCKED);

  await tapLogin();
  assert.deepEqual(lockState(), LOCKED, 'the old signature covers the old nonce only');
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('an answer signed for another nonce stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.forge = (reply) => withSignature(reply,
    answerSignature(connector.key, randomBytes(16).toString('hex'), reply.body));
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a signed answer echoing an earlier nonce is stale and stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  await tapLogin();
  const [earlier] = verifyNonces(connector);
  connector.outcome = outcomes.match('Alice Example');
  connector.tamper = (answer) => ({ ...answer, nonce: earlier });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.staleAnswer);
});

test('a signed match for another serial stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.tamper = (answer) => ({ ...answer, serial: 'FOC9999ZZZZ' });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.wrongDevice);
});

test('a match expired more than 5 s ago stays locked; 5 s is tolerated', async (t) => {
  const { connector } = await boot(t);
  connector.ttlSeconds = -6;
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.expiredAnswer);
  connector.ttlSeconds = -5;
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a match expiring more than 35 s ahead stays locked; 35 s is tolerated', async (t) => {
  const { connector } = await boot(t);
  connector.ttlSeconds = 36;
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.futureAnswer);
  connector.ttlSeconds = 35;
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('expiry is checked when the answer arrives, not when it was signed', async (t) => {
  const { connector } = await boot(t, { settings: { requestTimeoutSeconds: 29 } });
  connector.ttlSeconds = 20; // valid when signed, 6 s past its expiry on arrival
  fake.http.route((request) => new Promise((resolve) => {
    const reply = connector.handle(request);
    setTimeout(() => resolve(reply), 26000);
  }));
  tap(PANELS.login.id);
  await settle();
  await advance(t, 26000);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.expiredAnswer);
});

test('malformed answers, even correctly signed, stay locked', async (t) => {
  const { connector } = await boot(t);
  const bodies = ['not json', '[]', 'null', '{}', '{"verdict":"match","person":"A"}'];
  for (const body of bodies) {
    connector.forge = (reply, request, nonce) =>
      ({ ...reply, body, headers: { [SIGNATURE]: answerSignature(connector.key, nonce, body) } });
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, body);
    assert.equal(fake.lastAlert(), MESSAGES.malformed, body);
  }
  connector.forge = null;
  for (const field of [{ verdict: 'MATCH' }, { expires_at: '1767225600' }, { serial: null }]) {
    connector.tamper = (answer) => ({ ...answer, ...field });
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, JSON.stringify(field));
    assert.equal(fake.lastAlert(), MESSAGES.malformed);
  }
});

test('an unsigned answer is refused before it is even parsed', async (t) => {
  const { connector } = await boot(t);
  connector.override = () => ({ status: 200, body: 'not json' });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a signed match with no person stays locked', async (t) => {
  const { connector } = await boot(t);
  for (const person of [null, '', '   ']) {
    connector.outcome = { verdict: 'match', code: null, person, message: 'Welcome' };
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, String(person));
  }
});

for (const form of ['object', 'json']) {
  test(`HTTP errors rejected in the ${form} form stay locked, each with the macro's own message`,
    async (t) => {
      const { connector } = await boot(t);
      fake.http.rejectionForm = form;
      const cases = [
        [401, MESSAGES.unauthorized], [403, MESSAGES.unauthorized], [429, MESSAGES.rateLimited],
        [500, MESSAGES.serviceError], [502, MESSAGES.serviceError], [404, MESSAGES.serviceError],
      ];
      const lure = 'Unlocked by your administrator';
      for (const [status, message] of cases) {
        connector.override = () => ({
          status, body: JSON.stringify({ error: { code: 'x', message: lure }, message: lure }),
        });
        await tapLogin();
        assert.deepEqual(lockState(), LOCKED, String(status));
        assert.equal(fake.lastAlert(), message, String(status));
      }
      assert.ok(!shown().includes(lure));
    });
}

test('a wrong device key gets the "refused this device" message, which mentions the clock',
  async (t) => {
    const { connector } = await boot(t);
    connector.key = makeKey();
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.unauthorized);
    assert.match(MESSAGES.unauthorized, /clock/);
  });

test('a device clock far from the connector\'s is refused as unauthorized', async (t) => {
  const { connector } = await boot(t);
  connector.clockOffsetS = 600;
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unauthorized);
  const [call] = connector.verifyCalls();
  assert.equal(call.authenticated, false);
});

test('an unreachable connector stays locked', async (t) => {
  await boot(t);
  fake.http.route(() => ({ reject: { code: 1, message: 'Failed to connect to host' } }));
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unreachable);
});

test('a connector that never answers times out on the device and stays locked', async (t) => {
  await boot(t);
  fake.http.route(() => new Promise(() => {}));
  tap(PANELS.login.id);
  await settle();
  await advance(t, 25000);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unreachable);
  assert.equal(fake.http.inFlight, 0);
});

test('"No available http connections" is retried with the same request, which never left',
  async (t) => {
    const { connector } = await boot(t);
    let refusals = 2;
    fake.http.route((request) => {
      if (refusals-- > 0) return { reject: { code: 1, message: NO_CONNECTIONS } };
      return connector.handle(request);
    });
    tap(PANELS.login.id);
    await settle();
    await advance(t, 3000);
    assert.deepEqual(lockState(), UNLOCKED);
    const tries = fake.http.requests.filter((r) => r.path === '/v1/verify');
    assert.equal(tries.length, 3);
    const nonces = tries.map((r) => parseAuthorization(r.headers.authorization).nonce);
    assert.equal(new Set(nonces).size, 1, 'one signed request per attempt');
    assert.equal(connector.verifyCalls().length, 1, 'only the last try reached the connector');
  });

test('"No available http connections" that never clears gives up and stays locked', async (t) => {
  await boot(t);
  fake.http.route(() => ({ reject: { code: 1, message: NO_CONNECTIONS } }));
  tap(PANELS.login.id);
  await settle();
  await advance(t, 10000);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.busy);
  assert.equal(fake.http.requests.filter((r) => r.path === '/v1/verify').length, 5);
});

test('UI events alone never unlock: widget actions, text input and the other panels', async (t) => {
  const { connector } = await boot(t);
  const action = 'UserInterface Extensions Widget Action';
  fake.emit(action, { WidgetId: PANELS.login.id, Type: 'clicked' });
  fake.emit(action, { WidgetId: 'unlock', Type: 'released' });
  const typed = { FeedbackId: 'faceid_enroll_name', Text: 'x' };
  fake.emit('UserInterface Message TextInput Response', typed);
  fake.emit('UserInterface Message Prompt Response', { FeedbackId: 'faceid', OptionId: 1 });
  fake.emit('UserInterface Extensions Panel Clicked', { PanelId: PANELS.logout.id });
  fake.emit('UserInterface Extensions Panel Clicked', { PanelId: PANELS.enroll.id });
  await settle();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(connector.verifyCalls().length, 0);
});

test('tapping login twice while it runs sends one request', async (t) => {
  const { connector } = await boot(t);
  fake.http.route((request) => new Promise((resolve) => {
    setTimeout(() => resolve(connector.handle(request)), 2000);
  }));
  tap(PANELS.login.id);
  tap(PANELS.login.id);
  await settle();
  tap(PANELS.login.id);
  await advance(t, 3000);
  assert.equal(connector.verifyCalls().length, 1);
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a closed camera lid on a Desk is reported without asking the connector', async (t) => {
  const { connector } = await boot(t, {
    prepare: (device) => device.setStatus('SystemUnit State CameraLid', 'Closed'),
  });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.lidClosed);
  assert.equal(connector.verifyCalls().length, 0);

  fake.setStatus('SystemUnit State CameraLid', 'Open');
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a device without a camera lid (status rejected with code 3) logs in normally', async (t) => {
  await boot(t);
  await assert.rejects(fake.getStatus('SystemUnit State CameraLid'), { code: 3 });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('an unreadable camera lid status is left to the connector, which still decides', async (t) => {
  const { connector } = await boot(t, {
    prepare: (device) => device.failStatus('SystemUnit State CameraLid', xapiError(1, 'busy')),
  });
  connector.outcome = outcomes.error('too_dark', 'The picture is too dark.');
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), 'The picture is too dark.');
});

test('a missing Remote Monitoring key is said once at start; login skips the call', async (t) => {
  const optionKey = 'SystemUnit Software OptionKeys RemoteMonitoring';
  const prepare = (device) => device.setStatus(optionKey, 'False');
  const { connector } = await boot(t, { prepare });
  const said = () => shown().filter((text) => text === MESSAGES.noOptionKey).length;
  assert.equal(said(), 1);
  assert.equal(fake.lastAlert(), MESSAGES.noOptionKey);
  fake.setStatus('Standby State', 'Halfwake');
  fake.setStatus('Standby State', 'Off');
  await settle();
  assert.equal(said(), 1, 'not repeated by locking again');

  await tapLogin();
  assert.equal(connector.verifyCalls().length, 0);
  assert.equal(fake.lastAlert(), MESSAGES.noOptionKey);
  assert.deepEqual(lockState(), LOCKED);
});

test('a device with the option key shows no warning at start', async (t) => {
  await boot(t);
  assert.equal(fake.lastAlert(), undefined);
});

test('HttpClient Mode Off is reported at start', async (t) => {
  await boot(t, { prepare: (device) => device.setConfig('HttpClient Mode', 'Off') });
  assert.equal(fake.lastAlert(), MESSAGES.httpClientOff);
  assert.deepEqual(lockState(), LOCKED);
});

test('an unreadable serial number stays locked without a request', async (t) => {
  const { connector } = await boot(t);
  fake.failStatus('SystemUnit Hardware Module SerialNumber', xapiError(1, 'not available'));
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.noSerial);
  assert.equal(connector.verifyCalls().length, 0);
});

test('a device key that is not 32 bytes of base64url means not set up: no request', async (t) => {
  const key = randomBytes(32);
  const keys = {
    empty: '',
    '31 bytes': randomBytes(31).toString('base64url'),
    '33 bytes': randomBytes(33).toString('base64url'),
    'padded base64': key.toString('base64'),
    'plain base64 alphabet': key.toString('base64url').replace(/.$/, '+'),
    hex: key.toString('hex'),
    // The 43rd character carries 2 unused bits, which must be zero.
    'non-canonical last character': key.toString('base64url')
      .replace(/.$/, (c) => BASE64URL[BASE64URL.indexOf(c) ^ 1]),
  };
  for (const [what, deviceKey] of Object.entries(keys)) {
    await t.test(what, async (sub) => {
      const lines = [];
      sub.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
      const { connector } = await boot(sub, { settings: { deviceKey } });
      await tapLogin();
      assert.deepEqual(lockState(), LOCKED);
      assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
      assert.equal(connector.calls.length, 0);
      assert.ok(lines.some((line) => /deviceKey in SETTINGS/.test(line)), lines.join('\n'));
    });
  }
});

test('an http:// connector is refused unless allowPlainHttp: locked, said, logged', async (t) => {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  const plain = { connectorUrls: ['http://connector.test:8080'] };
  const { connector } = await boot(t, { settings: plain });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.plainHttp);
  assert.equal(fake.http.requests.length, 0);
  assert.equal(connector.calls.length, 0);
  assert.ok(lines.some((line) => /http:\/\/ and allowPlainHttp is false/.test(line)));
});

test('allowPlainHttp lets an http:// connector work, still signed both ways', async (t) => {
  const { connector } = await boot(t, {
    settings: { connectorUrls: ['http://connector.test:8080'], allowPlainHttp: true },
  });
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.http.requests.at(-1).url, 'http://connector.test:8080/v1/verify');
  assert.ok(connector.calls.every((call) => call.authenticated));
});

test('a connector URL with a path, query or no host means not set up', async (t) => {
  for (const url of ['https://connector.test/faceid', 'https://connector.test?x=1',
    'https://', 'connector.test:8443', 'ftp://connector.test']) {
    await t.test(url, async (sub) => {
      const { connector } = await boot(sub, { settings: { connectorUrls: [url] } });
      await tapLogin();
      assert.deepEqual(lockState(), LOCKED);
      assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
      assert.equal(connector.calls.length, 0);
    });
  }
});
