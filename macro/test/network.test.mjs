// The fake device's HttpClient in network mode: real HTTP(S) to a connector double on 127.0.0.1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import {
  fake, importMacro, lockState, loginOverNetwork, makeKey, settle, LOCKED, SERIAL, UNLOCKED,
} from '../testing/harness.mjs';
import { ConnectorDouble, outcomes, serveConnector } from '../testing/connector-double.mjs';
import { selfSignedCertificate } from '../testing/tls.mjs';

const macro = await importMacro();
const { MESSAGES } = macro;

const tls = selfSignedCertificate();
const key = makeKey();
const connector = new ConnectorDouble({ key, serial: SERIAL });
let plain;
let secure;

before(async () => {
  plain = await serveConnector(connector);
  if (tls) secure = await serveConnector(connector, tls);
});

after(async () => {
  macro.stop();
  await plain.close();
  if (secure) await secure.close();
});

/** A factory-fresh device with HttpClient on, talking to `url` (or a list) over the network. */
async function startDevice(t, url, { settings = {}, config = {} } = {}) {
  const urls = [].concat(url);
  macro.stop();
  fake.reset();
  fake.setConfig('HttpClient Mode', 'On');
  for (const [path, value] of Object.entries(config)) fake.setConfig(path, value);
  fake.http.useNetwork();
  connector.key = key;
  connector.outcome = outcomes.match('Alice Example');
  connector.override = null;
  connector.calls = [];
  t.mock.method(console, 'log', () => {});
  await macro.start({
    connectorUrls: urls, deviceKey: key.toString('base64url'), requestTimeoutSeconds: 5,
    allowPlainHttp: urls.some((each) => each.startsWith('http:')), ...settings,
  });
  await settle();
}

test('a login over real HTTP unlocks with an answer signed by Node crypto', async (t) => {
  await startDevice(t, plain.url);
  await loginOverNetwork();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.lastAlert(), 'Welcome, Alice Example');
  assert.deepEqual(connector.calls.map((call) => call.path),
    ['/v1/lock', '/v1/status', '/v1/verify']);
  assert.ok(connector.calls.every((call) => call.authenticated), 'Node crypto checked each');
});

test('an http:// connector is refused without allowPlainHttp: no request leaves', async (t) => {
  await startDevice(t, plain.url, { settings: { allowPlainHttp: false } });
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.plainHttp);
  assert.equal(connector.calls.length, 0);
});

test('a no-match over real HTTP stays locked', async (t) => {
  await startDevice(t, plain.url);
  connector.outcome = outcomes.noMatch();
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), connector.outcome.message);
});

for (const form of ['object', 'json']) {
  test(`a real 401 rejected in the ${form} form shows the macro's own message`, async (t) => {
    await startDevice(t, plain.url);
    fake.http.rejectionForm = form;
    connector.key = makeKey();
    await loginOverNetwork();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.unauthorized);
  });
}

/** A port on 127.0.0.1 where nothing listens. */
async function closedPort() {
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const { port } = closed.address();
  await new Promise((resolve) => closed.close(resolve));
  return port;
}

test('a connector that refuses connections is reported unreachable', async (t) => {
  await startDevice(t, `http://127.0.0.1:${await closedPort()}`);
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unreachable);
});

test('a real refused connection to the first connector moves on to the second', async (t) => {
  const dead = `http://127.0.0.1:${await closedPort()}`;
  await startDevice(t, [dead, plain.url]);
  await loginOverNetwork();
  assert.deepEqual(lockState(), UNLOCKED);
  const tried = fake.http.requests.filter((request) => request.path === '/v1/verify');
  assert.deepEqual(tried.map((request) => new URL(request.url).origin), [plain.url],
    'the dead one failed at start and is tried last for 60 s');
  assert.ok(fake.http.requests.some((request) => request.url.startsWith(dead)));
});

test('HttpClient Mode Off blocks even real requests', async (t) => {
  await startDevice(t, plain.url, { config: { 'HttpClient Mode': 'Off' } });
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(connector.calls.length, 0);
});

const noTls = !tls && 'openssl is not available to make a self-signed certificate';

const tlsOnly = { skip: noTls };

test('a self-signed connector is refused without AllowInsecureHTTPS', tlsOnly, async (t) => {
  await startDevice(t, secure.url, { config: { 'HttpClient AllowInsecureHTTPS': 'True' } });
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unreachable);
  assert.equal(connector.calls.length, 0);
});

test('the per-request flag alone does not allow a self-signed connector', tlsOnly, async (t) => {
  await startDevice(t, secure.url, { settings: { allowInsecureHttps: true } });
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(connector.calls.length, 0);
});

test('a self-signed connector works with the flag and the device config', tlsOnly, async (t) => {
  await startDevice(t, secure.url, {
    settings: { allowInsecureHttps: true },
    config: { 'HttpClient AllowInsecureHTTPS': 'True' },
  });
  await loginOverNetwork();
  assert.deepEqual(lockState(), UNLOCKED);
});
