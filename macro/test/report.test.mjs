// Reporting in: at start the macro tells the connector, with a signed POST /v1/status, that this
// copy runs and which push it is (`admin provision` waits for it). Logged only; never unlocks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  advance, boot, fake, lockState, tapLogin, LOCKED, SERIAL, UNLOCKED,
} from '../testing/harness.mjs';

const PUSH = 'push-20260115T090000Z-3f9a';
const STATUS_URL = /\/v1\/status$/;

/** The macro's console lines, from now on. */
function logLines(t) {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  return lines;
}

const reportLines = (lines) => lines.filter((line) => /reported in/.test(line));

test('the macro reports in at start with its pushId, signed, and shows nothing', async (t) => {
  const lines = logLines(t);
  const { connector } = await boot(t, { settings: { pushId: PUSH } });
  assert.deepEqual(connector.reports, [{ serial: SERIAL, push: PUSH }]);
  const [call] = connector.calls.filter((entry) => entry.path === '/v1/status');
  assert.equal(call.method, 'POST');
  assert.ok(call.authenticated, 'Node crypto checked its signature');
  assert.equal(call.body, JSON.stringify({ serial: SERIAL, push: PUSH }));
  assert.deepEqual(reportLines(lines), [`faceid: reported in (push ${PUSH})`]);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), undefined, 'nothing on screen');
});

test('a macro installed by hand reports in with an empty push', async (t) => {
  const lines = logLines(t);
  const { connector } = await boot(t);
  assert.deepEqual(connector.reports, [{ serial: SERIAL, push: '' }]);
  assert.deepEqual(reportLines(lines), ['faceid: reported in (push none: installed by hand)']);
});

test('a status answer with a bad signature is logged and changes nothing', async (t) => {
  const lines = logLines(t);
  const forged = '{"enrolled_people": 1, "unlocked": true, "locked_out_for_s": 0}';
  await boot(t, {
    settings: { pushId: PUSH },
    prepare: (_device, connector) => {
      connector.forge = (reply, request) => (STATUS_URL.test(request.url)
        ? { ...reply, body: forged } : reply);
    },
  });
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), undefined, 'logged, not shown');
  assert.ok(lines.includes('faceid: answer from /v1/status refused (bad_signature)'));
  assert.deepEqual(reportLines(lines), ['faceid: not reported in (bad_signature)']);
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED, 'face login works as before');
});

test('a signed status answer saying unlocked unlocks nothing', async (t) => {
  const lines = logLines(t);
  await boot(t, {
    prepare: (_device, connector) => {
      connector.tamper = (answer, request) => (STATUS_URL.test(request.url)
        ? { ...answer, unlocked: true } : answer);
    },
  });
  assert.deepEqual(lockState(), LOCKED);
  assert.deepEqual(reportLines(lines), ['faceid: reported in (push none: installed by hand)']);
});

test('a signed status answer of the wrong shape is logged as not reported in', async (t) => {
  const lines = logLines(t);
  await boot(t, {
    prepare: (_device, connector) => {
      connector.tamper = (answer, request) => (STATUS_URL.test(request.url)
        ? { enrolled_people: '1' } : answer);
    },
  });
  assert.deepEqual(lockState(), LOCKED);
  assert.deepEqual(reportLines(lines), ['faceid: not reported in (malformed_answer)']);
});

test('a refused report is logged, not shown', async (t) => {
  const lines = logLines(t);
  await boot(t, {
    prepare: (_device, connector) => {
      connector.override = (request) => (STATUS_URL.test(request.url)
        ? { status: 401, body: '{"error": {"code": "unauthorized"}}' } : null);
    },
  });
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), undefined);
  assert.ok(lines.includes('faceid: connector https://connector.test:8443 answered HTTP 401'));
  assert.deepEqual(reportLines(lines), ['faceid: not reported in (unauthorized)']);
});

test('a macro with setup problems does not report in', async (t) => {
  const broken = {
    'no device key': { deviceKey: '' },
    'plain HTTP not allowed': { connectorUrls: ['http://connector.test:8080'] },
    'no host': { connectorUrls: ['https://'] },
  };
  for (const [what, settings] of Object.entries(broken)) {
    await t.test(what, async (sub) => {
      const lines = logLines(sub);
      const { connector } = await boot(sub, { settings: { ...settings, pushId: PUSH } });
      assert.equal(fake.http.requests.length, 0, 'no request at all');
      assert.deepEqual(connector.reports, []);
      assert.deepEqual(reportLines(lines), []);
      assert.deepEqual(lockState(), LOCKED);
    });
  }
});

test('a device whose serial cannot be read does not report in, and says why', async (t) => {
  const lines = logLines(t);
  const { connector } = await boot(t, {
    prepare: (device) => device.setStatus('SystemUnit Hardware Module SerialNumber', ''),
  });
  assert.deepEqual(connector.reports, []);
  assert.deepEqual(reportLines(lines), ['faceid: not reported in (no_serial)']);
  assert.deepEqual(lockState(), LOCKED);
});

test('the report does not delay the lock, and a hanging one only delays later requests',
  async (t) => {
    const lines = logLines(t);
    const { connector } = await boot(t, {
      prepare: (_device, double) => {
        const never = new Promise(() => {});
        double.override = (request) => (STATUS_URL.test(request.url) ? never : null);
      },
    });
    // start() has returned while the report is still waiting for its answer.
    assert.equal(fake.http.inFlight, 1);
    assert.deepEqual(lockState(), LOCKED);
    const paths = fake.actions.map((action) => action.args?.Url ?? action.path);
    const reportAt = paths.findIndex((path) => STATUS_URL.test(path));
    assert.ok(reportAt > paths.lastIndexOf('UserInterface Extensions Panel Update'),
      'sent after the screen was locked');
    assert.ok(reportAt > paths.findIndex((path) => /\/v1\/lock$/.test(path)),
      'after the connector was told of the lock');

    await tapLogin();
    assert.deepEqual(lockState(), LOCKED, 'the login waits its turn');
    await advance(t, 31000);
    assert.deepEqual(reportLines(lines), ['faceid: not reported in (unreachable)']);
    assert.deepEqual(lockState(), UNLOCKED, 'then the login goes through');
    assert.deepEqual(connector.reports, []);
  });
