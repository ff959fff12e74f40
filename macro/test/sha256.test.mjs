// The macro's own SHA-256 / HMAC-SHA256 against published vectors and Node's crypto.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { importMacro } from '../testing/harness.mjs';

const { sha256, hmacSha256, toHex, utf8Encode } = await importMacro();

const hex = (data) => toHex(sha256(data));
const hmacHex = (key, data) => toHex(hmacSha256(key, data));
const bytes = (value, count) => new Uint8Array(count).fill(value);

test('SHA-256 matches the FIPS 180-4 examples', () => {
  assert.equal(hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(hex(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(
    hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
});

test('SHA-256 of one million "a" matches FIPS 180-4', () => {
  assert.equal(
    hex(bytes(0x61, 1000000)),
    'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0',
  );
});

test('SHA-256 agrees with Node crypto on every length around the padding boundaries', () => {
  for (let length = 0; length <= 200; length++) {
    const data = randomBytes(length);
    const expected = createHash('sha256').update(data).digest('hex');
    assert.equal(hex(new Uint8Array(data)), expected, `length ${length}`);
  }
});

test('HMAC-SHA256 matches RFC 4231 test cases 1 to 7', () => {
  const text = (value) => utf8Encode(value);
  const cases = [
    [bytes(0x0b, 20), text('Hi There'),
      'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7'],
    [text('Jefe'), text('what do ya want for nothing?'),
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843'],
    [bytes(0xaa, 20), bytes(0xdd, 50),
      '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe'],
    [Uint8Array.from({ length: 25 }, (_, i) => i + 1), bytes(0xcd, 50),
      '82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b'],
    [bytes(0xaa, 131), text('Test Using Larger Than Block-Size Key - Hash Key First'),
      '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54'],
    [bytes(0xaa, 131), text('This is a test using a larger than block-size key and a larger than ' +
      'block-size data. The key needs to be hashed before being used by the HMAC algorithm.'),
    '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2'],
  ];
  for (const [key, data, expected] of cases) assert.equal(hmacHex(key, data), expected);
  // Test case 5 publishes only the first 128 bits.
  assert.equal(hmacHex(bytes(0x0c, 20), text('Test With Truncation')).slice(0, 32),
    'a3b6167473100ee06e0c796c2955552b');
});

test('UTF-8 encoding matches Node for accents, emoji and lone surrogates', () => {
  const values = ['Zoë', 'Ødegård', '李小龙', 'smile 😀', 'lone \ud800 high', 'lone \udc00 low',
    'end \ud83d'];
  for (const value of values) {
    assert.deepEqual(Buffer.from(utf8Encode(value)), Buffer.from(value, 'utf8'), value);
  }
});

test('HMAC agrees with Node crypto for random keys and messages', () => {
  for (let i = 0; i < 50; i++) {
    const key = randomBytes(i * 3);
    const data = randomBytes(i * 7);
    assert.equal(hmacHex(new Uint8Array(key), new Uint8Array(data)),
      createHmac('sha256', key).update(data).digest('hex'));
  }
});
