// The worst case: the device reaches an impostor connector (insecure HTTPS allowed, so any
// certificate will do). It records every request and answers every verify with a match signed
// with every key it could have learned from them. The device key is never sent, so none of those
// is the key: the screen never unlocks.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import https from 'node:https';
import {
  fake, importMacro, lockState, loginOverNetwork, settle, LOCKED, SERIAL,
} from '../testing/harness.mjs';
import { selfSignedCertificate } from '../testing/tls.mjs';

const macro = await importMacro();
const { MESSAGES } = macro;
const tls = selfSignedCertificate();
const deviceKey = randomBytes(32);

/** What the device sent: {url, headers: [name, value] pairs as on the wire, body: Buffer}. */
const recorded = [];
/** Labels of the keys the impostor has signed a verify answer with. */
const tried = new Set();
/** Labels of every key it could have tried. */
const learnable = new Set();
let impostor;
let signAllAtOnce = false;

const hmacHex = (key, text) => createHmac('sha256', key).update(text, 'utf8').digest('hex');

function headerValue(request, name) {
  const found = request.headers.find(([key]) => key.toLowerCase() === name);
  return found ? found[1] : '';
}

/** [label, text]: every header value, each Authorization parameter and the whole value, the
 * body, the URL. */
function sources(request) {
  const list = request.headers.map(([name, value]) => [`header ${name.toLowerCase()}`, value]);
  const authorization = headerValue(request, 'authorization');
  list.push(['Authorization (whole value)', authorization]);
  list.push(['Authorization after its scheme', authorization.replace(/^\S+\s*/, '')]);
  for (const param of authorization.replace(/^\S+\s*/, '').split(',')) {
    const equals = param.indexOf('=');
    list.push([`Authorization ${param.slice(0, equals)}`, param.slice(equals + 1)]);
  }
  list.push(['body', request.body.toString('utf8')]);
  list.push(['url', request.url]);
  return list;
}

/** [encoding, bytes]: the UTF-8 bytes, and every decoding that is valid for this text. */
function decodings(text) {
  const found = [['utf8', Buffer.from(text, 'utf8')]];
  if (/^(?:[0-9a-fA-F]{2})+$/.test(text)) found.push(['hex', Buffer.from(text, 'hex')]);
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(text)) found.push(['base64', Buffer.from(text, 'base64')]);
  if (/^[A-Za-z0-9_-]+$/.test(text)) found.push(['base64url', Buffer.from(text, 'base64url')]);
  return found.filter(([, bytes]) => bytes.length > 0);
}

/** Every key the recordings offer: from the request being answered and the one before it. */
function candidateKeys() {
  const eras = [['this request', recorded.at(-1)], ['the request before', recorded.at(-2)]];
  const keys = [];
  for (const [era, request] of eras) {
    if (!request) continue;
    for (const [source, text] of sources(request)) {
      for (const [encoding, key] of decodings(text)) {
        keys.push({ label: `${era}: ${source} as ${encoding}`, key });
      }
    }
  }
  keys.forEach(({ label }) => learnable.add(label));
  return keys;
}

/** A match for this request's serial and nonce, signed every way the impostor knows with `key`:
 * the v2 answer header, and in the body the v1 verdict signature and a v2 one. */
function forgedMatch(key, serial, nonce) {
  const expiresAt = Math.floor(Date.now() / 1000) + 20;
  const answer = {
    verdict: 'match', code: null, person: 'Mallory', message: 'Welcome, Mallory',
    retry_after_s: null, serial, nonce, expires_at: expiresAt,
  };
  answer.signature = hmacHex(key, `${serial}|${nonce}|match|Mallory|${expiresAt}`);
  answer.answer_signature = hmacHex(key, `FACEID-V2-ANSWER\n${nonce}\n${JSON.stringify(answer)}`);
  const body = JSON.stringify(answer);
  return { body, header: hmacHex(key, `FACEID-V2-ANSWER\n${nonce}\n${body}`) };
}

function answerVerify(outgoing) {
  const authorization = headerValue(recorded.at(-1), 'authorization');
  const param = (name) => (new RegExp(`${name}=([^,]*)`).exec(authorization) || [])[1] || '';
  const keys = candidateKeys();
  const next = keys.find(({ label }) => !tried.has(label)) || keys[0];
  const chosen = signAllAtOnce ? keys : [next];
  chosen.forEach(({ label }) => tried.add(label));
  const forged = chosen.map(({ key }) => forgedMatch(key, param('serial'), param('nonce')));
  outgoing.setHeader('content-type', 'application/json');
  outgoing.setHeader('x-faceid-signature', forged.map((answer) => answer.header));
  outgoing.end(forged[0].body);
}

before(async () => {
  if (!tls) return;
  impostor = https.createServer(tls, (incoming, outgoing) => {
    const chunks = [];
    incoming.on('data', (chunk) => chunks.push(chunk));
    incoming.on('end', () => {
      const headers = [];
      for (let i = 0; i < incoming.rawHeaders.length; i += 2) {
        headers.push([incoming.rawHeaders[i], incoming.rawHeaders[i + 1]]);
      }
      recorded.push({ url: incoming.url, headers, body: Buffer.concat(chunks) });
      if (incoming.url === '/v1/verify') {
        answerVerify(outgoing);
        return;
      }
      outgoing.writeHead(200, { 'content-type': 'application/json' });
      outgoing.end('{"unlocked": false}');
    });
  });
  await new Promise((resolve) => impostor.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  macro.stop();
  if (!impostor) return;
  impostor.closeAllConnections();
  await new Promise((resolve) => impostor.close(resolve));
});

const noTls = { skip: !tls && 'openssl is not available to make a self-signed certificate' };

test('an impostor signing with every key it could learn never unlocks the screen', noTls,
  async (t) => {
    fake.reset();
    fake.setConfig('HttpClient Mode', 'On');
    fake.setConfig('HttpClient AllowInsecureHTTPS', 'True');
    fake.http.useNetwork();
    t.mock.method(console, 'log', () => {});
    await macro.start({
      connectorUrls: [`https://127.0.0.1:${impostor.address().port}`],
      deviceKey: deviceKey.toString('base64url'),
      allowInsecureHttps: true,
      requestTimeoutSeconds: 5,
    });
    await settle();
    let taps = 0;
    do {
      await loginOverNetwork();
      taps += 1;
      assert.deepEqual(lockState(), LOCKED, `tap ${taps}`);
      assert.equal(fake.lastAlert(), MESSAGES.badSignature, `tap ${taps}`);
    } while ([...learnable].some((label) => !tried.has(label)) && taps < 500);
    signAllAtOnce = true; // one answer carrying every signature at once
    await loginOverNetwork();
    assert.deepEqual(lockState(), LOCKED);

    assert.deepEqual([...learnable].filter((label) => !tried.has(label)), []);
    assert.ok(tried.size > 40, `${tried.size} keys tried`);
    assert.ok(['serial', 'ts', 'nonce', 'signature'].every((name) =>
      tried.has(`this request: Authorization ${name} as utf8`)), 'every parameter was a key');
    const verifies = recorded.filter((request) => request.url === '/v1/verify');
    assert.equal(verifies.length, taps + 1, 'every tap reached the impostor');
    assert.ok(verifies.every((request) =>
      headerValue(request, 'authorization').includes(`serial=${SERIAL},`)));
    const unlocking = fake.actions.filter((action) => action.kind === 'config' &&
      action.path === 'UserInterface Features HideAll' && action.value === 'False');
    assert.deepEqual(unlocking, [], 'not even for a moment');
  });

test('no request the device sent holds the device key in any encoding', noTls, () => {
  assert.ok(recorded.length > 2, 'the previous test recorded the traffic');
  const encodings = {
    'raw bytes as latin1 text': deviceKey.toString('latin1'),
    base64: deviceKey.toString('base64'),
    'base64 without padding': deviceKey.toString('base64').replace(/=+$/, ''),
    base64url: deviceKey.toString('base64url'),
    'hex lower case': deviceKey.toString('hex'),
    'hex upper case': deviceKey.toString('hex').toUpperCase(),
  };
  const sent = recorded.map((request) => [request.url, ...request.headers.flat(),
    request.body.toString('latin1')]);
  const asked = fake.http.requests.map((request) => [request.url, ...request.params.Header,
    request.body]);
  for (const text of [...sent, ...asked].flat()) {
    for (const [what, encoded] of Object.entries(encodings)) {
      assert.ok(!text.includes(encoded), `the key as ${what} in ${text}`);
    }
  }
  assert.ok(recorded.every((request) => !request.body.includes(deviceKey)));
});
