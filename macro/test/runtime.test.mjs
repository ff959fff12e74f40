// faceid.js is what an admin uploads: one file, only what the RoomOS macro runtime offers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const source = readFileSync(new URL('../faceid.js', import.meta.url), 'utf8');
const code = source
  .replace(/\/\*[\s\S]*?\*\//g, '')
  .replace(/(^|\s)\/\/.*$/gm, '$1')
  .replace(/'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`/g, "''");

test('the only import is the device xapi, written as RoomOS expects it', () => {
  const imports = source.match(/^\s*import\b.*$/gm);
  assert.deepEqual(imports, ["import xapi from 'xapi';"]);
  assert.doesNotMatch(code, /\bimport\s*\(/, 'no dynamic import');
});

test('no API the macro runtime lacks is used', () => {
  const missing = ['fetch', 'require', 'process', 'Buffer', 'TextEncoder', 'TextDecoder', 'crypto',
    'structuredClone', 'queueMicrotask', 'setImmediate', 'XMLHttpRequest', 'window', 'document',
    '__dirname'];
  for (const name of missing) assert.doesNotMatch(code, new RegExp(`\\b${name}\\b`), name);
  // Seen on devices but not documented: the macro decodes base64url itself.
  for (const name of ['atob', 'btoa']) assert.doesNotMatch(code, new RegExp(`\\b${name}\\b`));
});

test('no syntax or library newer than ES2020 is used', () => {
  const newer = {
    'logical assignment': /\?\?=|\|\|=|&&=/,
    'numeric separator': /\d_\d/,
    'class fields or private names': /#[A-Za-z_]|\bclass\b/,
    'Array/String .at()': /\.at\(/,
    'Object.hasOwn': /Object\.hasOwn\b/,
    replaceAll: /\.replaceAll\(/,
    'Promise.any': /Promise\.any\b/,
    'top-level await': /^await\b/m,
  };
  for (const [what, pattern] of Object.entries(newer)) assert.doesNotMatch(code, pattern, what);
});

test('settings come first and ship without a key, plain HTTP refused', () => {
  const settingsAt = source.indexOf('const SETTINGS = {');
  const firstFunction = source.search(/^(export )?(async )?function /m);
  assert.ok(settingsAt > 0 && settingsAt < firstFunction);
  const block = source.slice(settingsAt, source.indexOf('};', settingsAt));
  for (const key of ['connectorUrls', 'deviceKey', 'allowInsecureHttps', 'allowPlainHttp',
    'relockIdleSeconds', 'requestTimeoutSeconds']) {
    assert.match(block, new RegExp(`\\b${key}:`), key);
  }
  assert.match(block, /deviceKey: '',/);
  assert.match(block, /allowInsecureHttps: false,/);
  assert.match(block, /allowPlainHttp: false,/);
  assert.match(block, /xCommand Security Certificates CA Add/);
  assert.equal(block.match(/lab use only/gi).length, 2, 'both insecure settings say so');
});

test('settings and messages sit alone between the banners; the SHA-256 code comes last', () => {
  const editAt = source.indexOf('// EDIT BELOW');
  const stopAt = source.indexOf('// NOTHING TO EDIT BELOW THIS LINE.');
  assert.ok(editAt > 0 && editAt < stopAt);
  const declared = (text) => text.match(/^(?:export )?(?:const|let|(?:async )?function) \w+/gm);
  assert.deepEqual(declared(source.slice(editAt, stopAt)),
    ['const SETTINGS', 'export const MESSAGES']);
  const cryptoAt = source.indexOf('// SHA-256 (FIPS 180-4)');
  assert.ok(cryptoAt > source.search(/^export async function start\(/m), 'after the logic');
  assert.deepEqual(declared(source.slice(cryptoAt)), ['const K', 'export function utf8Encode',
    'function asBytes', 'export function sha256', 'export function hmacSha256',
    'export function toHex']);
});

test('protocol v1 is gone: no device token, no bearer authentication', () => {
  assert.doesNotMatch(source, /deviceToken|Bearer/i);
});

test('on the device the macro starts itself when it is loaded', () => {
  const tail = code.slice(code.lastIndexOf('if (xapi.manualStart'));
  assert.match(tail, /^if \(xapi\.manualStart !== true\) \{\s*start\(\)\.catch/);
});
