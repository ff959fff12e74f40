// demo/drive_macro.mjs as `python -m demo` runs it: a Node process driven by JSON lines, its macro
// making real HTTP(S) requests to a connector double on 127.0.0.1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { importMacro, makeKey, SERIAL } from '../testing/harness.mjs';
import { ConnectorDouble, serveConnector } from '../testing/connector-double.mjs';
import { writeProvisioned } from '../testing/provisioned.mjs';
import { selfSignedCertificate } from '../testing/tls.mjs';

const DRIVER = fileURLToPath(new URL('../../demo/drive_macro.mjs', import.meta.url));
const ANSWER_MS = 20_000;
const PUSH = 'push-20260115T090000Z-3f9a';

const tls = selfSignedCertificate();
const connector = new ConnectorDouble({ key: makeKey(), serial: SERIAL });
let plain;
let secure;

before(async () => {
  plain = await serveConnector(connector);
  if (tls) secure = await serveConnector(connector, tls);
});

after(async () => {
  await plain.close();
  if (secure) await secure.close();
});

/** The driver in its own process: ask(line) → its JSON answer; close() → its exit code. */
function startDriver(t) {
  const child = spawn(process.execPath, [DRIVER], { stdio: ['pipe', 'pipe', 'ignore'] });
  t.after(() => child.kill());
  const answers = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    async ask(request) {
      child.stdin.write(`${JSON.stringify(request)}\n`);
      let timer;
      const late = new Promise((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer to ${JSON.stringify(request)}`)),
          ANSWER_MS);
      });
      try {
        const { value } = await Promise.race([answers.next(), late]);
        return JSON.parse(value);
      } finally {
        clearTimeout(timer);
      }
    },
    close() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.stdin.end();
      return exited;
    },
  };
}

test('macroPath runs the file as pushed, on its own SETTINGS, once it reported in', async (t) => {
  connector.reports = [];
  const macroPath = writeProvisioned(t, {
    connectorUrls: [plain.url],
    deviceKey: connector.deviceKey,
    allowInsecureHttps: false,
    allowPlainHttp: true,
    relockIdleSeconds: 600,
    pushId: PUSH,
  });
  const driver = startDriver(t);
  const ready = await driver.ask({ serial: SERIAL, macroPath });
  assert.equal(ready.ready, true, JSON.stringify(ready));
  assert.equal(ready.screen.lock, 'locked');
  assert.equal(ready.report.http.path, '/v1/status');
  assert.equal(ready.report.http.status, 200);
  assert.deepEqual(ready.report.answer,
    { enrolled_people: 1, unlocked: false, locked_out_for_s: 0 });
  assert.deepEqual(connector.reports, [{ serial: SERIAL, push: PUSH }]);
  const login = await driver.ask({ press: 'login' });
  assert.equal(login.answer.verdict, 'match');
  assert.equal(login.screen.lock, 'unlocked');
  assert.equal(await driver.close(), 0);
});

test('without macroPath the bundled macro runs on the settings of the first line',
  { skip: !tls && 'needs openssl for a TLS certificate' }, async (t) => {
    connector.reports = [];
    const driver = startDriver(t);
    const ready = await driver.ask({
      serial: SERIAL, connectorUrls: [secure.url], deviceKey: connector.deviceKey,
      allowInsecureHttps: true,
    });
    assert.equal(ready.screen.lock, 'locked', JSON.stringify(ready));
    assert.equal(ready.report.http.status, 200);
    assert.deepEqual(connector.reports, [{ serial: SERIAL, push: '' }]);
    const login = await driver.ask({ press: 'login' });
    assert.equal(login.screen.lock, 'unlocked');
    assert.equal(await driver.close(), 0);
  });

test('connectorUrls fail over, and an unlock code typed in opens the screen', async (t) => {
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const dead = `http://127.0.0.1:${closed.address().port}`;
  await new Promise((resolve) => closed.close(resolve));
  const macroPath = writeProvisioned(t, {
    connectorUrls: [dead, plain.url],
    deviceKey: connector.deviceKey,
    allowInsecureHttps: false,
    allowPlainHttp: true,
    relockIdleSeconds: 600,
    pushId: PUSH,
  });
  const driver = startDriver(t);
  const ready = await driver.ask({ serial: SERIAL, macroPath });
  assert.equal(ready.report.http.status, 200, JSON.stringify(ready));
  assert.equal(ready.report.http.url, plain.url, 'the second connector answered');
  const asked = await driver.ask({ press: 'code' });
  assert.equal(asked.prompt, 'Type the 8-digit unlock code your administrator gave you.');
  const { unlockCode } = await importMacro();
  const step = Math.ceil((Date.now() / 1000 + 600) / 300);
  const typed = await driver.ask({ code: unlockCode(connector.key, SERIAL, step) });
  assert.equal(typed.screen.lock, 'unlocked', JSON.stringify(typed));
  assert.equal(typed.screen.alert, 'Unlocked with an unlock code.');
  assert.equal(await driver.close(), 0);
});
