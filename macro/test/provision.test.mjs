// `admin provision` fills in SETTINGS by replacing whole lines of faceid.js: each such setting must
// stay one line `  key: <JS literal>,`, and a copy so written must run on its own SETTINGS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  advance, fake, importMacro, lockState, makeKey, settle, tapLogin, LOCKED, MACRO_FILE, NOW_MS,
  SERIAL, UNLOCKED,
} from '../testing/harness.mjs';
import { ConnectorDouble } from '../testing/connector-double.mjs';
import { PROVISIONED_KEYS, writeProvisioned } from '../testing/provisioned.mjs';

const source = readFileSync(MACRO_FILE, 'utf8');

test('each setting admin provision writes is exactly one line inside SETTINGS', () => {
  const lines = source.split('\n');
  const start = lines.indexOf('const SETTINGS = {');
  const end = lines.indexOf('};', start);
  assert.ok(start > 0 && end > start, 'the SETTINGS block');
  for (const key of PROVISIONED_KEYS) {
    const shape = new RegExp(`^  ${key}: .*,$`);
    const found = lines.flatMap((line, i) => (shape.test(line) ? [i] : []));
    assert.equal(found.length, 1, `${key}: one line in the whole file`);
    assert.ok(found[0] > start && found[0] < end, `${key}: inside SETTINGS`);
  }
  assert.match(source, /^ {2}\/\/ .*`admin provision`.*\n {2}pushId: '',$/m,
    'pushId ships empty, its comment above it');
});

test('a copy written as admin provision writes it runs on its own SETTINGS', async (t) => {
  const key = makeKey();
  const connector = new ConnectorDouble({ key, serial: SERIAL });
  const values = {
    connectorUrls: ['https://connector.pushed.test:8443'],
    deviceKey: connector.deviceKey,
    allowInsecureHttps: true,
    allowPlainHttp: false,
    relockIdleSeconds: 60,
    pushId: 'push-20260115T090000Z-3f9a',
  };
  const file = writeProvisioned(t, values);

  const pushed = await importMacro('pushed', file);
  fake.reset();
  t.mock.method(console, 'log', () => {});
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: NOW_MS });
  fake.setConfig('HttpClient Mode', 'On');
  fake.setConfig('HttpClient AllowInsecureHTTPS', 'True');
  fake.http.route((request) => connector.handle(request));
  t.after(() => pushed.stop());
  await pushed.start(); // no overrides: what the file says
  await settle();

  assert.deepEqual(lockState(), LOCKED);
  assert.deepEqual(connector.reports, [{ serial: SERIAL, push: values.pushId }]);
  for (const request of fake.http.requests) {
    assert.ok(request.url.startsWith(`${values.connectorUrls[0]}/v1/`), request.url);
    assert.equal(request.params.AllowInsecureHTTPS, 'True');
  }
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED, 'signed with the deviceKey written in the file');
  await advance(t, 61000);
  assert.deepEqual(lockState(), LOCKED, 'relocked after the relockIdleSeconds written');
});
