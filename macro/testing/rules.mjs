/**
 * The macro's input rules, asked from another language: tests/test_macro_rules_agree.py writes one
 * JSON object to stdin and reads one back, to check that the connector (Python) and the macro apply
 * the same serial, name and key rules. faceid.js is loaded as in the macro's own tests (fake xapi,
 * not started).
 *
 * In:  {names: [...], serials: [...], keys: [...], greet: [...], signed: {key, serials, ts, path}}
 * Out: {names: [what cleanName sends, or null], serials: [cleanSerial], keys: [deviceKeyBytes as
 *       hex, or null], greet: [{unlock, message}], signed: [{serial, authorization, body}],
 *       sweep: see sweep() below, limits: the numbers the connector must share}
 */
import { importMacro } from './harness.mjs';

const macro = await importMacro();
const LAST_CODE_POINT = 0x10ffff;
const LAST_BMP = 0xffff;

async function readStdin() {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

/** What cleanName makes of make(c) for each code point c up to last: the code points refused, and
 * [code point, name sent] where the name sent is not the one typed. */
function sweepNames(make, last) {
  const refused = [];
  const changed = [];
  for (let cp = 0; cp <= last; cp++) {
    const typed = make(String.fromCodePoint(cp));
    const sent = macro.cleanName(typed);
    if (sent === null) refused.push(cp);
    else if (sent !== typed) changed.push([cp, sent]);
  }
  return { refused, changed };
}

/** A verify answer that holds in every respect but the person's name: does the macro unlock? */
function greet(person) {
  const now = 1767225600;
  const answer = {
    verdict: 'match', code: null, person, message: '', retry_after_s: null, serial: 'SIM0000',
    nonce: 'n0nce-for-the-rules', expires_at: now + 30,
  };
  const { unlock, message } = macro.checkVerifyAnswer(answer,
    { serial: 'SIM0000', nonce: 'n0nce-for-the-rules', nowSeconds: now });
  return { unlock, message };
}

function sweep() {
  const serialsAccepted = [];
  const greetRefused = [];
  const trimmedAstral = [];
  for (let cp = 0; cp <= LAST_CODE_POINT; cp++) {
    const c = String.fromCodePoint(cp);
    if (macro.cleanSerial(c) !== null) serialsAccepted.push(cp);
    if (!greet(c).unlock) greetRefused.push(cp);
    if (cp > LAST_BMP && c.trim() !== c) trimmedAstral.push(cp);
  }
  return {
    nameMiddle: sweepNames((c) => `A${c}B`, LAST_CODE_POINT),
    // Only the ends differ by trimming, and nothing outside the BMP is trimmed (trimmedAstral).
    nameStart: sweepNames((c) => `${c}A`, LAST_BMP),
    nameEnd: sweepNames((c) => `A${c}`, LAST_BMP),
    serialsAccepted,
    greetRefused,
    trimmedAstral,
  };
}

/** Requests signed as the macro signs them, one per serial, for the connector to check. */
function signed({ key, serials, ts, path }) {
  const keyBytes = macro.deviceKeyBytes(key);
  return serials.map((serial) => {
    const body = macro.asciiJson({ serial });
    const request = { method: 'POST', path, serial, ts, nonce: macro.makeNonce(), body };
    return { serial, authorization: macro.authorization(keyBytes, request), body };
  });
}

const asked = await readStdin();
const hex = (bytes) => (bytes === null ? null : macro.toHex(bytes));
process.stdout.write(JSON.stringify({
  names: asked.names.map((name) => macro.cleanName(name)),
  serials: asked.serials.map((serial) => macro.cleanSerial(serial)),
  keys: asked.keys.map((key) => hex(macro.deviceKeyBytes(key))),
  greet: asked.greet.map(greet),
  signed: signed(asked.signed),
  sweep: sweep(),
  limits: macro.SHARED_LIMITS,
}));
