// The fake device's HttpClient in network mode: real HTTP(S) to a connector double on 127.0.0.1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import {
  fake, importMacro, lockState, makeToken, settle, tap, LOCKED, SERIAL, UNLOCKED,
} from '../testing/harness.mjs';
import { ConnectorDouble, outcomes, serveConnector } from '../testing/connector-double.mjs';

const macro = await importMacro();
const { MESSAGES, PANELS } = macro;

/** A self-signed certificate for 127.0.0.1, as a connector without a CA-issued one has. */
function selfSignedCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'faceid-tls-'));
  try {
    const run = spawnSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    ], { encoding: 'utf8' });
    if (run.status !== 0) return null;
    return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
  } catch {
    return null;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const tls = selfSignedCertificate();
const token = makeToken();
const connector = new ConnectorDouble({ token, serial: SERIAL });
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

/** A factory-fresh device with HttpClient on, talking to `url` over the network. */
async function startDevice(t, url, { settings = {}, config = {} } = {}) {
  macro.stop();
  fake.reset();
  fake.setConfig('HttpClient Mode', 'On');
  for (const [path, value] of Object.entries(config)) fake.setConfig(path, value);
  fake.http.useNetwork();
  connector.token = token;
  connector.outcome = outcomes.match('Alice Example');
  connector.override = null;
  connector.calls = [];
  t.mock.method(console, 'log', () => {});
  await macro.start({
    connectorUrl: url, deviceToken: token, requestTimeoutSeconds: 5, ...settings,
  });
  await settle();
}

/** Tap login and wait (real time) until the macro has shown an answer. */
async function loginOverNetwork() {
  const before = fake.commandsTo('UserInterface Message Alert Display').length;
  tap(PANELS.login.id);
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    const alerts = fake.commandsTo('UserInterface Message Alert Display').slice(before);
    if (alerts.some((alert) => alert.args.Duration > 0) && fake.http.inFlight === 0) return;
  }
  throw new Error('no answer shown within 2 s');
}

test('a login over real HTTP unlocks with an answer signed by Node crypto', async (t) => {
  await startDevice(t, plain.url);
  await loginOverNetwork();
  assert.deepEqual(lockState(), UNLOCKED);
  assert.equal(fake.lastAlert(), 'Welcome, Alice Example');
  assert.deepEqual(connector.calls.map((call) => call.path), ['/v1/lock', '/v1/verify']);
});

test('a no-match over real HTTP stays locked', async (t) => {
  await startDevice(t, plain.url);
  connector.outcome = outcomes.noMatch();
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), connector.outcome.message);
});

for (const form of ['object', 'json']) {
  test(`a real 401 rejected in the ${form} form is shown as an unregistered device`, async (t) => {
    await startDevice(t, plain.url);
    fake.http.rejectionForm = form;
    connector.token = 'another-token';
    await loginOverNetwork();
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.unauthorized);
  });
}

test('a connector that refuses connections is reported unreachable', async (t) => {
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = closed.address().port;
  await new Promise((resolve) => closed.close(resolve));
  await startDevice(t, `http://127.0.0.1:${port}`);
  await loginOverNetwork();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.unreachable);
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
