// An unlocked session ends: logout, idle time, standby; and the HTTP traffic that goes with it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  advance, boot, fake, importMacro, lockState, settle, tap, tapLogin, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';
import { parseAuthorization } from '../testing/connector-double.mjs';

const { MESSAGES, PANELS } = await importMacro();

const paths = (connector) => connector.calls.map((call) => call.path);

test('logout locks the screen and tells the connector', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.locked);
  assert.deepEqual(paths(connector), ['/v1/lock', '/v1/status', '/v1/verify', '/v1/lock']);
  assert.equal(connector.unlocked, false);
});

test('a lock answer that fails its signature is logged as not confirmed', async (t) => {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  const { connector } = await boot(t);
  await tapLogin();
  connector.forge = (reply, request) => (request.url.endsWith('/v1/lock')
    ? { ...reply, body: '{"unlocked": true}' } : reply);
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(lockState(), LOCKED, 'the screen locks whatever the connector says');
  assert.ok(lines.includes('faceid: connector lock not confirmed (bad_signature)'));
});

test('the screen locks again after the idle time', async (t) => {
  const { connector } = await boot(t, { settings: { relockIdleSeconds: 60 } });
  await tapLogin();
  await advance(t, 59000);
  assert.deepEqual(lockState(), UNLOCKED);
  await advance(t, 2000);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.idleLocked);
  assert.equal(paths(connector).at(-1), '/v1/lock');
});

test('touching any UI extension restarts the idle time', async (t) => {
  await boot(t, { settings: { relockIdleSeconds: 60 } });
  await tapLogin();
  await advance(t, 50000);
  const lights = { WidgetId: 'room_lights', Type: 'released' };
  fake.emit('UserInterface Extensions Widget Action', lights);
  await settle();
  await advance(t, 50000);
  assert.deepEqual(lockState(), UNLOCKED);
  await advance(t, 11000);
  assert.deepEqual(lockState(), LOCKED);
});

test('the idle lock waits for an active call to end', async (t) => {
  await boot(t, { settings: { relockIdleSeconds: 60 } });
  await tapLogin();
  fake.setStatus('SystemUnit State NumberOfActiveCalls', '1');
  await advance(t, 130000);
  assert.deepEqual(lockState(), UNLOCKED);
  fake.setStatus('SystemUnit State NumberOfActiveCalls', '0');
  await advance(t, 61000);
  assert.deepEqual(lockState(), LOCKED);
});

for (const standby of ['Standby', 'EnteringStandby', 'Halfwake']) {
  test(`going to ${standby} locks the screen`, async (t) => {
    const { connector } = await boot(t);
    await tapLogin();
    fake.setStatus('Standby State', standby);
    await settle();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(paths(connector).at(-1), '/v1/lock');
  });
}

test('waking up does not unlock', async (t) => {
  await boot(t);
  fake.setStatus('Standby State', 'Standby');
  await settle();
  fake.setStatus('Standby State', 'Off');
  await settle();
  assert.deepEqual(lockState(), LOCKED);
});

test('a match arriving after standby began is void, and the connector hears so', async (t) => {
  const { connector } = await boot(t);
  fake.http.maxConnections = 5;
  fake.http.route((request) => new Promise((resolve) => {
    setTimeout(() => resolve(connector.handle(request)), 2000);
  }));
  tap(PANELS.login.id);
  await settle();
  fake.setStatus('Standby State', 'Standby');
  await settle();
  await advance(t, 5000);
  assert.deepEqual(lockState(), LOCKED);
  assert.deepEqual(paths(connector), ['/v1/lock', '/v1/status', '/v1/verify', '/v1/lock']);
  assert.equal(connector.unlocked, false);
});

test('a lock that arrives while an unlock is being applied always wins', async (t) => {
  const slowShow = (path, args) => (path === 'UserInterface Extensions Panel Update' &&
    args.Visibility === 'Auto' && args.PanelId !== PANELS.login.id ? 300 : 0);
  for (let delay = 0; delay < 30; delay++) {
    await t.test(`standby ${delay} turns after the answer`, async (sub) => {
      const { connector } = await boot(sub);
      fake.commandLatency = slowShow;
      let release;
      fake.http.route((request) => new Promise((resolve) => {
        release = () => resolve(connector.handle(request));
      }));
      tap(PANELS.login.id);
      await settle();
      release();
      for (let i = 0; i < delay; i++) await Promise.resolve();
      fake.setStatus('Standby State', 'Standby');
      await advance(sub, 2000, 100);
      assert.deepEqual(lockState(), LOCKED);
    });
  }
});

test('requests go one at a time even when the device would accept more', async (t) => {
  const { connector } = await boot(t);
  fake.http.maxConnections = 5;
  fake.http.route((request) => new Promise((resolve) => {
    setTimeout(() => resolve(connector.handle(request)), 1000);
  }));
  tap(PANELS.login.id);
  fake.setStatus('Standby State', 'Standby');
  fake.setStatus('Standby State', 'Off');
  fake.setStatus('Standby State', 'Halfwake');
  await settle();
  await advance(t, 10000);
  assert.equal(fake.http.maxInFlight, 1);
  assert.ok(fake.http.requests.length >= 4);
});

test('each request has the parameters the device HTTP client needs', async (t) => {
  await boot(t, { settings: { connectorUrls: ['https://connector.test:8443/'] } });
  await tapLogin();
  const verify = fake.http.requests.find((request) => request.path === '/v1/verify');
  assert.equal(verify.url, 'https://connector.test:8443/v1/verify');
  assert.equal(verify.params.ResultBody, 'PlainText');
  assert.equal(verify.params.AllowInsecureHTTPS, 'False');
  assert.ok(verify.params.Timeout >= 1 && verify.params.Timeout < 30);
  assert.ok(verify.params.Header.length <= 20);
  assert.match(verify.headers.authorization, new RegExp('^FaceID-HMAC-SHA256 serial=FOC1234X5YZ,' +
    'ts=\\d+,nonce=[A-Za-z0-9_-]{16,64},signature=[0-9a-f]{64}$'));
  assert.equal(parseAuthorization(verify.headers.authorization).ts, Math.floor(Date.now() / 1000));
  assert.equal(verify.headers['content-type'], 'application/json');
});

test('the insecure-HTTPS setting and an out-of-range timeout reach requests safely', async (t) => {
  await boot(t, { settings: { allowInsecureHttps: true, requestTimeoutSeconds: 45 } });
  await tapLogin();
  const [request] = fake.http.requests;
  assert.equal(request.params.AllowInsecureHTTPS, 'True');
  assert.equal(request.params.Timeout, 25);
});
