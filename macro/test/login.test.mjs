// Face login: only a signed, fresh, unexpired match unlocks; anything else stays locked, says why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  advance, boot, fake, importMacro, lockState, settle, tap, tapLogin, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';
import { outcomes, signAnswer } from '../testing/connector-double.mjs';
import { NO_CONNECTIONS, xapiError } from '../testing/fake-xapi.mjs';

const { MESSAGES, PANELS } = await importMacro();

const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const verifyBodies = (connector) => connector.verifyCalls().map((call) => JSON.parse(call.body));

test('a signed match unlocks and greets the person by name', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.match('Zoë Ødegård');
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.lastAlert(), 'Welcome, Zoë Ødegård');
  const [body] = verifyBodies(connector);
  assert.equal(body.serial, 'FOC1234X5YZ');
  assert.match(body.nonce, NONCE);
});

test('every attempt sends a fresh nonce', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  for (let i = 0; i < 5; i++) await tapLogin();
  const nonces = verifyBodies(connector).map((body) => body.nonce);
  assert.equal(nonces.length, 5);
  assert.equal(new Set(nonces).size, 5);
  nonces.forEach((nonce) => assert.match(nonce, NONCE));
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
    hideAll: 'True', settingsMenu: 'Hidden', panels: [PANELS.enroll.id, PANELS.login.id],
  });
  assert.equal(fake.lastAlert(), 'Nobody is enrolled on this device yet.');
});

test('a forged match signed with another key stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.tamper = (answer) => ({
    ...answer,
    signature: signAnswer('not-the-device-token', {
      serial: connector.serial, nonce: answer.nonce, verdict: 'match', person: answer.person,
      expiresAt: answer.expires_at,
    }),
  });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a match without a signature, or with a garbled one, stays locked', async (t) => {
  const { connector } = await boot(t);
  for (const signature of [undefined, '', 'f'.repeat(64), null, 42]) {
    connector.tamper = (answer) => ({ ...answer, signature });
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, String(signature));
  }
});

test('a no-match answer rewritten to a match stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.noMatch();
  connector.tamper = (answer) => ({ ...answer, verdict: 'match', person: 'Mallory', code: null });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.badSignature);
});

test('a match for one person rewritten to name another stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.tamper = (answer) => ({ ...answer, person: 'Mallory' });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
});

test('a replayed match from an earlier attempt stays locked', async (t) => {
  const { connector } = await boot(t);
  let recorded = null;
  connector.tamper = (answer) => {
    recorded = recorded ?? answer;
    return recorded;
  };
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED, 'the first, genuine answer unlocks');
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(lockState(), LOCKED);

  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.staleAnswer);

  connector.tamper = (answer) => ({ ...recorded, nonce: answer.nonce });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED, 'the old signature does not cover the new nonce');
});

test('an expired match stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.ttlSeconds = -31;
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.expiredAnswer);
});

test('a match that expired within the clock skew allowance still unlocks', async (t) => {
  const { connector } = await boot(t);
  connector.ttlSeconds = -10;
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('expiry is checked when the answer arrives, not when it was signed', async (t) => {
  const { connector } = await boot(t, { settings: { requestTimeoutSeconds: 29 } });
  connector.ttlSeconds = -5; // valid on arrival within the skew allowance, but not 26 s later
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

test('malformed answers stay locked', async (t) => {
  const { connector } = await boot(t);
  const unsigned = JSON.stringify({ verdict: 'match', person: 'A' });
  const bodies = ['not json', '[]', 'null', '{}', unsigned];
  for (const body of bodies) {
    connector.override = () => ({ status: 200, body });
    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, body);
    assert.equal(fake.lastAlert(), MESSAGES.malformed);
  }
  connector.override = null;
  connector.tamper = (answer) => ({ ...answer, verdict: 'MATCH' });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
});

test('a signed match with no person stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = { verdict: 'match', code: null, person: null, message: 'Welcome' };
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
});

for (const form of ['object', 'json']) {
  test(`HTTP errors rejected in the ${form} form stay locked, each with its message`, async (t) => {
    const { connector } = await boot(t);
    fake.http.rejectionForm = form;
    const cases = [
      [401, MESSAGES.unauthorized], [403, MESSAGES.unauthorized], [429, MESSAGES.rateLimited],
      [500, MESSAGES.serviceError], [502, MESSAGES.serviceError], [404, MESSAGES.serviceError],
    ];
    for (const [status, message] of cases) {
      connector.override = () => ({ status, body: '{"error": {"code": "x", "message": "y"}}' });
      await tapLogin();
      assert.deepEqual(lockState(), LOCKED, String(status));
      assert.equal(fake.lastAlert(), message, String(status));
    }
  });
}

test('a wrong device token is reported as an unregistered device', async (t) => {
  const { connector } = await boot(t);
  connector.token = 'a-different-token';
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unauthorized);
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

test('"No available http connections" is retried and the login then succeeds', async (t) => {
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
  assert.equal(fake.http.requests.filter((r) => r.path === '/v1/verify').length, 3);
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
  const said = () => fake.commandsTo('UserInterface Message Alert Display')
    .filter((alert) => alert.args.Text === MESSAGES.noOptionKey).length;
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

test('an empty device token stays locked and says face login is not set up', async (t) => {
  const { connector } = await boot(t, { settings: { deviceToken: '' } });
  await tapLogin();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
  assert.equal(connector.calls.length, 0);
});
