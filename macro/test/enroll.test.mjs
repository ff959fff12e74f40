// "Update my photo": ask for the name, send it to the connector, show the result; never unlocks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  boot, fake, importMacro, lockState, settle, tap, tapLogin, LOCKED, UNLOCKED,
} from '../testing/harness.mjs';
import { answerSignature, outcomes } from '../testing/connector-double.mjs';

const { MESSAGES, PANELS, cleanName } = await importMacro();

const FEEDBACK_ID = 'faceid_enroll_name';
const enrollBodies = (connector) => connector.calls
  .filter((call) => call.path === '/v1/enroll').map((call) => JSON.parse(call.body));

async function typeName(text, feedbackId = FEEDBACK_ID) {
  fake.emit('UserInterface Message TextInput Response', { FeedbackId: feedbackId, Text: text });
  await settle();
}

test('"Update my photo" asks for a name, enrolls it and shows the result', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  tap(PANELS.enroll.id);
  await settle();
  const [ask] = fake.commandsTo('UserInterface Message TextInput Display');
  assert.equal(ask.args.FeedbackId, FEEDBACK_ID);
  assert.equal(ask.args.Title, MESSAGES.enrollTitle);

  connector.enrollReply = { result: 'enrolled', code: null, message: 'Photo saved for Alice.' };
  await typeName('  Alice Example ');
  assert.deepEqual(enrollBodies(connector), [{ serial: 'FOC1234X5YZ', person: 'Alice Example' }]);
  assert.equal(fake.lastAlert(), 'Photo saved for Alice.');
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a non-ASCII name travels as ASCII-only JSON and comes back intact', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  await typeName('Zoë Ødegård 李 😀');
  const [call] = connector.calls.filter((entry) => entry.path === '/v1/enroll');
  assert.match(call.body, /^[\x20-\x7e]+$/);
  assert.equal(call.body,
    '{"serial":"FOC1234X5YZ","person":"Zo\\u00eb \\u00d8deg\\u00e5rd \\u674e \\ud83d\\ude00"}');
  assert.deepEqual(JSON.parse(call.body), { serial: 'FOC1234X5YZ', person: 'Zoë Ødegård 李 😀' });
  assert.ok(call.authenticated, 'the signature covers exactly the bytes sent');
  assert.equal(fake.lastAlert(), 'Photo saved.');
});

test('an enroll answer that fails its signature is not shown', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  const lure = 'Photo saved. Your administrator asks you to reply with your password.';
  const forgeries = {
    tampered: (reply) => ({ ...reply, body: reply.body.replace('Photo saved.', lure) }),
    unsigned: (reply) => ({ ...reply, headers: { 'content-type': 'application/json' } }),
    'signed for another nonce': (reply) => ({
      ...reply, headers: { 'x-faceid-signature': answerSignature(connector.key, 'n'.repeat(32),
        reply.body) },
    }),
  };
  for (const [what, forge] of Object.entries(forgeries)) {
    connector.forge = forge;
    await typeName('Alice Example');
    assert.equal(fake.lastAlert(), MESSAGES.badSignature, what);
  }
  const shown = fake.commandsTo('UserInterface Message Alert Display').map((a) => a.args.Text);
  assert.ok(!shown.some((text) => text.includes('password')));
  assert.deepEqual(lockState(), UNLOCKED, 'a bad answer does not end the session');
});

test('a refused enrollment shows the connector message and changes nothing', async (t) => {
  const { connector } = await boot(t);
  connector.enrollReply = {
    result: 'refused', code: 'locked', message: 'Unlock the device with your face first.',
  };
  await typeName('Mallory');
  assert.equal(fake.lastAlert(), 'Unlock the device with your face first.');
  assert.deepEqual(lockState(), LOCKED);
});

test('names the connector would refuse are refused on the device without a request', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  for (const name of ['', '   ', 'a/b', 'back\\slash', 'x'.repeat(65), 'tab\there', undefined]) {
    await typeName(name);
    assert.equal(fake.lastAlert(), MESSAGES.badName, String(name));
  }
  assert.equal(enrollBodies(connector).length, 0);
  const emoji = '😀'.repeat(64);
  assert.equal(cleanName(emoji), emoji, 'the limit counts characters, not UTF-16 units');
});

test('a text input answer meant for another macro is ignored', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  await typeName('Alice', 'some_other_macro');
  assert.equal(enrollBodies(connector).length, 0);
});

test('the first person can enroll on an empty device, which stays locked', async (t) => {
  const { connector } = await boot(t);
  connector.outcome = outcomes.error('not_enrolled', 'Nobody is enrolled on this device yet.');
  await tapLogin();
  assert.ok(fake.visiblePanels().includes(PANELS.enroll.id));
  tap(PANELS.enroll.id);
  await settle();
  await typeName('Alice Example');
  assert.equal(enrollBodies(connector).length, 1);
  assert.equal(fake.lastAlert(), 'Photo saved.');
  assert.deepEqual(lockState(), LOCKED, 'enrolling shows the login panel only again');

  connector.outcome = outcomes.match('Alice Example');
  await tapLogin();
  assert.deepEqual(lockState(), UNLOCKED);
});

test('a closed camera lid stops the enrollment before the connector is asked', async (t) => {
  const { connector } = await boot(t, {
    prepare: (device) => device.setStatus('SystemUnit State CameraLid', 'Closed'),
  });
  await typeName('Alice Example');
  assert.equal(fake.lastAlert(), MESSAGES.lidClosed);
  assert.equal(enrollBodies(connector).length, 0);
});

test('an enrollment the connector rejects over HTTP shows a specific message', async (t) => {
  const { connector } = await boot(t);
  await tapLogin();
  connector.override = (request) => (request.path === '/v1/enroll'
    ? { status: 413, body: '{"error": {"code": "too_large", "message": "x"}}' } : null);
  await typeName('Alice Example');
  assert.equal(fake.lastAlert(), MESSAGES.serviceError);
  assert.deepEqual(lockState(), UNLOCKED, 'a failed enrollment does not end the session');
});

test('an enroll answer without a message is reported as unreadable', async (t) => {
  const { connector } = await boot(t);
  connector.enrollReply = { result: 'enrolled' };
  await typeName('Alice Example');
  assert.equal(fake.lastAlert(), MESSAGES.malformed);
});
