// Starting, restarting and staying locked: the lock never depends on remembered state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  boot, fake, importMacro, lockState, settle, tapLogin, xapi, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';

const { PANELS } = await importMacro();

/** A small well-formedness check: every tag closes in order, and only known text is inside. */
function parseXml(xml) {
  const stack = [];
  const values = {};
  const tokens = xml.match(/<[^>]+>|[^<]+/g);
  for (const token of tokens) {
    if (token.startsWith('</')) {
      assert.equal(token.slice(2, -1), stack.pop(), `unbalanced ${token}`);
    } else if (token.startsWith('<')) {
      assert.match(token, /^<[A-Za-z]+>$/);
      stack.push(token.slice(1, -1));
    } else if (token.trim()) {
      assert.doesNotMatch(token, /[&<>]/);
      values[stack[stack.length - 1]] = token;
    }
  }
  assert.equal(stack.length, 0);
  return values;
}

test('start locks a device that was left unlocked and shows only the login panel', async (t) => {
  await boot(t, {
    prepare: (device) => device.setConfig('UserInterface Features HideAll', 'False'),
  });
  assert.deepEqual(lockState(), LOCKED);
});

test('start hides the UI and the settings menu before doing anything else', async (t) => {
  await boot(t);
  const firstTwo = fake.actions.slice(0, 2).map(({ kind, path, value }) => ({ kind, path, value }));
  assert.deepEqual(firstTwo, [
    { kind: 'config', path: 'UserInterface Features HideAll', value: 'True' },
    { kind: 'config', path: 'UserInterface SettingsMenu Visibility', value: 'Hidden' },
  ]);
});

test('panel XML is well formed and each PanelId matches its Save command', async (t) => {
  await boot(t);
  const saves = fake.commandsTo('UserInterface Extensions Panel Save');
  assert.deepEqual(saves.map((save) => save.args.PanelId).sort(),
    Object.values(PANELS).map((panel) => panel.id).sort());
  for (const save of saves) {
    const values = parseXml(save.body);
    assert.equal(values.PanelId, save.args.PanelId);
    assert.equal(values.Location, 'HomeScreen');
    assert.ok(values.Name.length > 0);
  }
});

test('panels are saved with the same XML on every start', async (t) => {
  const { macro, connector } = await boot(t);
  const first = fake.commandsTo('UserInterface Extensions Panel Save').map((save) => save.body);
  await macro.start({
    connectorUrls: ['https://connector.test:8443'], deviceKey: connector.deviceKey,
  });
  await settle();
  const all = fake.commandsTo('UserInterface Extensions Panel Save').map((save) => save.body);
  assert.deepEqual(all.slice(first.length), first);
  assert.equal(fake.panels.size, 4);
});

test('a runtime restart while unlocked comes back locked, remembering nothing', async (t) => {
  const { macro } = await boot(t);
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);

  // The runtime dies: timers and subscriptions go; the device keeps its configuration.
  macro.stop();
  fake.dropListeners();
  xapi.manualStart = false;
  t.after(() => {
    xapi.manualStart = true;
  });
  const restarted = await importMacro('restart-while-unlocked');
  t.after(() => restarted.stop());
  await settle();

  assert.deepEqual(lockState(), LOCKED);
  assert.ok(fake.listenerCount() > 0, 'the new instance listens again');
});

test('a restart with the unedited settings stays locked and says it is not set up', async (t) => {
  await boot(t);
  fake.dropListeners();
  xapi.manualStart = false;
  t.after(() => {
    xapi.manualStart = true;
  });
  const fresh = await importMacro('unedited-settings');
  t.after(() => fresh.stop());
  await settle();
  const requestsBefore = fake.http.requests.length;
  fake.emit('UserInterface Extensions Panel Clicked', { PanelId: PANELS.login.id });
  await settle();
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.http.requests.length, requestsBefore, 'no request without a key');
  assert.equal(fake.lastAlert(), fresh.MESSAGES.notConfigured);
});

test('start tells the connector the device is locked, then reports in', async (t) => {
  const { connector } = await boot(t);
  assert.deepEqual(connector.calls.map((call) => call.path), ['/v1/lock', '/v1/status']);
});

test('turning HideAll or the settings menu back on while locked is undone', async (t) => {
  await boot(t);
  fake.setConfig('UserInterface Features HideAll', 'False');
  fake.setConfig('UserInterface SettingsMenu Visibility', 'Auto');
  await settle();
  assert.deepEqual(lockState(), LOCKED);
});

test('stop removes every subscription it made', async (t) => {
  const { macro } = await boot(t);
  assert.ok(fake.listenerCount() > 0);
  macro.stop();
  assert.equal(fake.listenerCount(), 0);
});

test('the device key never appears in the console, in any encoding', async (t) => {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  const { key, connector } = await boot(t);
  await tapLogin();
  connector.outcome = { verdict: 'error', code: 'no_face', person: null, message: 'x' };
  fake.emit('UserInterface Extensions Panel Clicked', { PanelId: PANELS.logout.id });
  await settle();
  connector.forge = (reply) => ({ ...reply, headers: {} });
  await tapLogin();
  assert.ok(lines.length > 3);
  const encodings = [key.toString('base64url'), key.toString('base64'), key.toString('hex'),
    key.toString('hex').toUpperCase(), key.toString('latin1')];
  assert.ok(lines.every((line) => encodings.every((text) => !line.includes(text))));
});
