// Protocol v2 signing in the macro, checked against Node crypto (the connector double), Python's
// hmac and a worked example the documentation quotes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  boot, fake, importMacro, makeKey, settle, tap, tapLogin, SERIAL,
} from '../testing/harness.mjs';
import {
  answerSignature, ConnectorDouble, requestSignature,
} from '../testing/connector-double.mjs';

const {
  PANELS, asciiJson, authorization, decodeBase64Url, deviceKeyBytes, openAnswer,
  requestStringToSign, signAnswer, signRequest,
} = await importMacro();

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const NOW_S = Math.floor(Date.now() / 1000);

/** An HttpClient result as the device gives it. */
const result = (body, headers) => ({
  status: 'OK', StatusCode: '200', Body: body,
  Headers: Object.entries(headers).map(([Key, Value]) => ({ Key, Value })),
});

test('worked example: the documented request signature', () => {
  const key = deviceKeyBytes('AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8');
  assert.deepEqual(Buffer.from(key), Buffer.from(Array.from({ length: 32 }, (_, i) => i)));
  const request = {
    method: 'POST', path: '/v1/verify', serial: 'FOC1234X5YZ', ts: 1767225600,
    nonce: 'n0nce-for-the-docs-01', body: '{"serial":"FOC1234X5YZ"}',
  };
  const bodyHash = createHash('sha256').update(request.body).digest('hex');
  const text = 'FACEID-V2\nPOST\n/v1/verify\nFOC1234X5YZ\n1767225600\nn0nce-for-the-docs-01\n' +
    bodyHash;
  assert.equal(requestStringToSign(request), text);
  const expected = createHmac('sha256', Buffer.from(key)).update(text, 'utf8').digest('hex');
  assert.equal(signRequest(key, request), expected);
  assert.equal(expected, 'a1df458b5267f35da0661c254860bf4aa43b6a7ae7d5ddc8f23da915a75beb33');
  assert.equal(authorization(key, request), 'FaceID-HMAC-SHA256 serial=FOC1234X5YZ,' +
    `ts=1767225600,nonce=n0nce-for-the-docs-01,signature=${expected}`);
});

test('an empty body is signed as the SHA-256 of the empty string', () => {
  const text = requestStringToSign({
    method: 'GET', path: '/v1/status?serial=X', serial: 'X', ts: 1, nonce: 'n'.repeat(16), body: '',
  });
  assert.equal(text,
    `FACEID-V2\nGET\n/v1/status?serial=X\nX\n1\n${'n'.repeat(16)}\n${EMPTY_SHA256}`);
});

test('base64url decoding agrees with Node and refuses anything non-canonical', () => {
  for (let length = 0; length <= 70; length++) {
    const bytes = randomBytes(length);
    assert.deepEqual(Buffer.from(decodeBase64Url(bytes.toString('base64url'))), bytes);
  }
  for (const bad of ['A', 'AAAAA', 'AA==', 'A+', 'A/', 'A A', 'AB', 'AAB', 'é', null, 42]) {
    assert.equal(decodeBase64Url(bad), null, String(bad));
  }
  assert.deepEqual(Buffer.from(decodeBase64Url('AA')), Buffer.from([0]));
  assert.deepEqual(Buffer.from(decodeBase64Url('AAA')), Buffer.from([0, 0]));
});

test('only a 32-byte key is a device key', () => {
  assert.equal(deviceKeyBytes(randomBytes(32).toString('base64url')).length, 32);
  for (const length of [0, 16, 31, 33, 64]) {
    assert.equal(deviceKeyBytes(randomBytes(length).toString('base64url')), null, `${length}`);
  }
});

test('request bodies are ASCII-only JSON that decode to the same value', () => {
  const names = ['Alice', 'Zoë Ødegård', '李小龙', 'smile 😀', 'quote " and \\ slash',
    'line\u2028sep', 'lone \ud800 high', '\u007f\u0080\uffff'];
  for (const person of names) {
    const text = asciiJson({ serial: SERIAL, person });
    assert.match(text, /^[\x20-\x7f]*$/, person);
    assert.deepEqual(JSON.parse(text), { serial: SERIAL, person });
  }
});

test('the double recomputes every request signature with Node crypto, endpoint by endpoint',
  async (t) => {
    const { connector } = await boot(t);
    await tapLogin();
    tap(PANELS.enroll.id);
    await settle();
    fake.emit('UserInterface Message TextInput Response',
      { FeedbackId: 'faceid_enroll_name', Text: 'Zoë Ødegård' });
    await settle();
    tap(PANELS.logout.id);
    await settle();
    assert.deepEqual(connector.calls.map((call) => call.path),
      ['/v1/lock', '/v1/status', '/v1/verify', '/v1/enroll', '/v1/lock']);
    for (const call of connector.calls) {
      assert.ok(call.authenticated, call.path);
      assert.match(call.body, /^[\x20-\x7e]+$/, call.path);
      const recomputed = requestSignature(connector.key, {
        method: 'POST', target: call.path, serial: SERIAL, ts: call.auth.ts,
        nonce: call.auth.nonce, body: Buffer.from(call.body, 'latin1'),
      });
      assert.equal(call.auth.signature, recomputed, call.path);
    }
    assert.equal(JSON.parse(connector.calls[3].body).person, 'Zoë Ødegård');
  });

test('a status request is signed over its path with the query string', () => {
  const key = makeKey();
  const connector = new ConnectorDouble({ key, serial: SERIAL });
  const target = `/v1/status?serial=${SERIAL}`;
  const ask = (signedPath, nonce) => connector.handle({
    method: 'GET',
    url: `https://connector.test:8443${target}`,
    headers: {
      authorization: authorization(new Uint8Array(key), {
        method: 'GET', path: signedPath, serial: SERIAL, ts: NOW_S, nonce, body: '',
      }),
    },
    body: '',
  });
  assert.equal(ask('/v1/status', 'without-the-query-01').status, 401);
  const nonce = 'status-nonce-000001';
  const reply = ask(target, nonce);
  assert.equal(reply.status, 200);
  const opened = openAnswer(new Uint8Array(key), nonce, result(reply.body, reply.headers));
  assert.deepEqual(opened, {
    ok: true, body: { enrolled_people: 1, unlocked: false, locked_out_for_s: 0 },
  });
  assert.equal(openAnswer(new Uint8Array(key), 'another-nonce-00001',
    result(reply.body, reply.headers)).code, 'bad_signature');
});

test('the request signature covers every field: change one and the double refuses', () => {
  const key = makeKey();
  const connector = new ConnectorDouble({ key, serial: SERIAL });
  const genuine = {
    method: 'POST', path: '/v1/lock', serial: SERIAL, ts: NOW_S, body: `{"serial":"${SERIAL}"}`,
  };
  let count = 0;
  /** Send the genuine request with a signature computed over it with `change` applied. */
  const send = (change) => {
    const sent = { ...genuine, nonce: `field-check-nonce-${count++}` };
    const signature = signRequest(new Uint8Array(key), { ...sent, ...change });
    return connector.handle({
      method: sent.method,
      url: `https://connector.test${sent.path}`,
      headers: { authorization: `FaceID-HMAC-SHA256 serial=${sent.serial},ts=${sent.ts},` +
        `nonce=${sent.nonce},signature=${signature}` },
      body: sent.body,
    }).status;
  };
  assert.equal(send({}), 200);
  const changes = {
    method: { method: 'PUT' }, path: { path: '/v1/verify' }, serial: { serial: 'FOC0000OTHER' },
    ts: { ts: NOW_S - 1 }, nonce: { nonce: 'another-nonce-000001' },
    body: { body: `{"serial":"${SERIAL}" }` },
  };
  for (const [field, change] of Object.entries(changes)) assert.equal(send(change), 401, field);
});

test('an answer is opened only with a signature over its exact body and this nonce', () => {
  const key = makeKey();
  const macroKey = new Uint8Array(key);
  const nonce = 'answer-nonce-000001';
  const body = asciiJson({ result: 'enrolled', code: null, message: 'Saved.', person: 'Zoë' });
  const good = answerSignature(key, nonce, body);
  assert.equal(signAnswer(macroKey, nonce, body), good);
  assert.equal(openAnswer(macroKey, nonce, result(body, { 'X-FaceID-Signature': good })).ok, true);
  const bad = [
    result(`${body} `, { 'x-faceid-signature': good }),
    result(body, {}),
    result(body, { 'x-faceid-signature': good.toUpperCase() }),
    result(body, { 'x-faceid-signature': answerSignature(makeKey(), nonce, body) }),
    { ...result(body, { 'x-faceid-signature': good }), Body: undefined },
    { ...result(body, { 'x-faceid-signature': good }), Headers: undefined },
    null,
  ];
  bad.forEach((response, i) => {
    assert.equal(openAnswer(macroKey, nonce, response).code, 'bad_signature', String(i));
  });
});

const python = spawnSync('python3', ['--version']).status === 0 ? 'python3' : null;

test('requests and answers signed by Python hmac agree with the macro',
  { skip: !python && 'python3 is not on PATH' }, () => {
    const cases = Array.from({ length: 20 }, (_, i) => ({
      key: randomBytes(32).toString('base64url'),
      method: i % 4 === 3 ? 'GET' : 'POST',
      path: i % 4 === 3 ? `/v1/status?serial=FOC${i}` : ['/v1/verify', '/v1/enroll'][i % 2],
      serial: `FOC${i}`,
      ts: 1767225600 + i,
      nonce: randomBytes(16 + i).toString('base64url').slice(0, 16 + i),
      body: i % 4 === 3 ? '' : asciiJson({ serial: `FOC${i}`, person: `Pérson ${i} ✓` }),
    }));
    const script = [
      'import base64, hashlib, hmac, json, sys',
      'for c in json.load(sys.stdin):',
      '    key = base64.urlsafe_b64decode(c["key"] + "=")',
      '    digest = hashlib.sha256(c["body"].encode()).hexdigest()',
      '    fields = ["FACEID-V2", c["method"], c["path"], c["serial"], str(c["ts"]), c["nonce"],',
      '              digest]',
      '    print(hmac.new(key, "\\n".join(fields).encode(), hashlib.sha256).hexdigest())',
      '    answer = "FACEID-V2-ANSWER\\n" + c["nonce"] + "\\n" + c["body"]',
      '    print(hmac.new(key, answer.encode(), hashlib.sha256).hexdigest())',
    ].join('\n');
    const input = JSON.stringify(cases);
    const run = spawnSync(python, ['-c', script], { input, encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const lines = run.stdout.trim().split('\n');
    cases.forEach((c, i) => {
      const key = deviceKeyBytes(c.key);
      assert.equal(signRequest(key, c), lines[2 * i], JSON.stringify(c));
      assert.equal(signAnswer(key, c.nonce, c.body), lines[2 * i + 1], JSON.stringify(c));
    });
  });
