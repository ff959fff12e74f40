/*
 * Face login for RoomOS: the screen stays locked until the connector vouches for the face in front
 * of the camera with an answer signed with this device's key (protocol v2, docs/api.md §2).
 *
 * Upload this one file as a macro and activate it; edit SETTINGS first (see macro/README.md).
 * Runs on the device's QuickJS macro runtime: ES2020, xapi, timers, console; no fetch, no crypto.
 */
import xapi from 'xapi';

// =============================================================================================
// EDIT BELOW: SETTINGS for this device, and MESSAGES if the screen should say it differently.
// =============================================================================================

// Settings. Anything written here can be read by the device's administrators.
const SETTINGS = {
  // Base URLs of the connectors: scheme, host and port only; 1 to 4, the first preferred. The
  // next one is tried only when one cannot be reached or answers 5xx, never when it refuses.
  connectorUrls: ['https://connector.example:8443'],
  // This device's key (43 characters, base64url), written by `admin provision` (by hand: printed
  // once by `admin rotate-key --manual`). It signs requests and checks answers; it is never
  // sent. Empty or not a 32-byte key: the screen stays locked.
  deviceKey: '',
  // The right way to trust a connector certificate no public CA issued is to upload its CA to the
  // device (`xCommand Security Certificates CA Add`). true skips the certificate check instead:
  // lab use only; the device also needs `xConfiguration HttpClient AllowInsecureHTTPS: True`.
  allowInsecureHttps: false,
  // Lab use only: true allows http:// connectorUrls (signed, but readable by anyone on the way).
  allowPlainHttp: false,
  // Lock again after this many seconds without interaction (never during a call).
  relockIdleSeconds: 600,
  // Per HTTP request, 1 to 29 seconds (the device's own limit is 30).
  requestTimeoutSeconds: 25,
  // Names this push; set by `admin provision` so the connector sees this very copy run. '' by hand.
  pushId: '',
};

/**
 * What the person at the device reads when the macro itself decides (not the connector).
 * Each alert shows at most 255 characters.
 */
export const MESSAGES = {
  look: 'Look at the camera…',
  lidClosed: 'The camera lid is closed. Open it, then tap "Unlock with my face" again.',
  noOptionKey:
    'Face login cannot work on this device: the Remote Monitoring option key is missing. ' +
    'Ask your administrator.',
  httpClientOff: 'Face login cannot reach its service: HttpClient is off on this device. ' +
    'Ask your administrator.',
  notConfigured: 'Face login is not set up on this device. Ask your administrator.',
  plainHttp: 'Face login is not set up on this device: its service address must start with ' +
    'https://. Ask your administrator.',
  noSerial: 'Face login cannot read this device\'s serial number. The screen stays locked.',
  unreachable: 'The face login service cannot be reached. The screen stays locked.',
  busy: 'The device is busy with other web requests. Try again in a moment.',
  unauthorized: 'The face login service refused this device: it is not registered, its key is ' +
    'wrong, or the device clock is wrong. Ask your administrator.',
  rateLimited: 'Too many attempts. Wait a minute, then try again.',
  serviceError: 'The face login service failed. The screen stays locked.',
  malformed: 'The face login service gave an unreadable answer. The screen stays locked.',
  badSignature: 'The answer could not be verified (bad signature). The screen stays locked.',
  wrongDevice: 'The answer was meant for another device. The screen stays locked.',
  staleAnswer: 'The answer was for an earlier attempt. Try again.',
  failedOver: 'The face login service switched to its other server during this attempt. ' +
    'The screen stays locked: try again.',
  expiredAnswer: 'The answer arrived too late (check the device clock). Try again.',
  futureAnswer: 'The answer is dated in the future (check the device clock). Try again.',
  failed: 'Face login failed. The screen stays locked.',
  locked: 'Screen locked.',
  idleLocked: 'Screen locked after a period without activity.',
  badName: 'A name is 1 to 64 characters, without / or \\. Nothing was changed.',
  enrollTitle: 'Update my photo',
  enrollText: 'Type your name, then look at the camera.',
  // "Use a code": {tries} and {minutes} are filled in.
  codeTitle: 'Use a code',
  codeText: 'Type the 8-digit unlock code your administrator gave you.',
  codeFormat: 'An unlock code is 8 digits. Nothing was checked: try again.',
  codeWrong: 'Wrong code. Wrong codes left before a wait: {tries}.',
  codeWrongWait: 'Wrong code. Too many wrong codes: try a code again in {minutes} min.',
  codeWaiting: 'Too many wrong codes. Try a code again in {minutes} min.',
  codeUsed: 'This code was already used. Ask your administrator for a new one.',
  codeClockBack: 'The device clock went back. No code was checked: try again later or ask your ' +
    'administrator.',
  codeUnlocked: 'Unlocked with an unlock code.',
};

// =============================================================================================
// NOTHING TO EDIT BELOW THIS LINE.
// =============================================================================================

const TITLE = 'Face login';
const KEY_BYTES = 32;
// A verify answer is valid for at most ANSWER_TTL_S; clocks may differ by ANSWER_SKEW_S.
const ANSWER_TTL_S = 30;
const ANSWER_SKEW_S = 5;
const AUTH_SCHEME = 'FaceID-HMAC-SHA256';
const REQUEST_CONTEXT = 'FACEID-V2';
const ANSWER_CONTEXT = 'FACEID-V2-ANSWER';
const SIGNATURE_HEADER = 'x-faceid-signature';
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const MESSAGE_DURATION_S = 10;
const NO_CONNECTION_ATTEMPTS = 5;
const NO_CONNECTION_RETRY_MS = 1000;
const MAX_CONNECTORS = 4;
const CONNECTOR_URL = /^https?:\/\/[^\s/?#]+$/;
// A connector that could not be reached (or answered 5xx) is tried after the others for this long.
const FAILED_CONNECTOR_LAST_MS = 60000;
const PROGRESS_TICK_MS = 1000;
const ENROLL_FEEDBACK_ID = 'faceid_enroll_name';
const CODE_FEEDBACK_ID = 'faceid_unlock_code';
// Unlock codes (`admin unlock-code`, docs/macro.md "Use a code"): valid until the end of a 5-minute
// step, issued for at most 720 minutes, clocks may differ by 120 s.
const CODE_CONTEXT = 'FACEID-UNLOCK-CODE-V1';
const CODE_STEP_S = 300;
const CODE_MAX_MINUTES = 720;
const CODE_DIGITS = 8;
const CODE_GRACE_S = 120;
/** The clock is read for codes this often even when nobody types one, so that a clock set back
 * while the device sits idle is noticed too. */
const CODE_CLOCK_READ_MS = 60000;
// Wrong codes: the 5th starts a wait of 300 s; each one after a wait doubles it, up to a day. The
// wait is a timer, not a time on the device clock: whoever sets the clock cannot end it.
const CODE_FREE_TRIES = 5;
const CODE_FIRST_WAIT_S = 300;
const CODE_MAX_WAIT_S = 86400;
const CODE_EVENTS_PATH = '/v1/code-events';
const CODE_EVENTS_KEPT = 50;
const CODE_EVENTS_PER_REPORT = 20;
const CODE_EVENTS_RETRY_MS = 60000;
/** The numbers the connector must use too (tests/test_macro_rules_agree.py holds them equal). */
export const SHARED_LIMITS = Object.freeze({
  codeStepS: CODE_STEP_S, codeMaxMinutes: CODE_MAX_MINUTES, codeDigits: CODE_DIGITS,
  codeGraceS: CODE_GRACE_S, codeMaxWaitS: CODE_MAX_WAIT_S,
  codeEventsPerReport: CODE_EVENTS_PER_REPORT, maxConnectors: MAX_CONNECTORS,
});
const VERDICTS = ['match', 'no_match', 'error'];
const LOCKING_STANDBY_STATES = ['EnteringStandby', 'Standby', 'Halfwake'];

export const PANELS = {
  login: { id: 'faceid_login', order: 1, icon: 'Camera', color: '#1D805F',
    name: 'Unlock with my face' },
  logout: { id: 'faceid_logout', order: 2, icon: 'Power', color: '#A12830', name: 'Lock screen' },
  enroll: { id: 'faceid_enroll', order: 3, icon: 'Info', color: '#1170CF',
    name: 'Update my photo' },
  code: { id: 'faceid_code', order: 4, icon: 'Helpdesk', color: '#6F5BA7', name: 'Use a code' },
};

// ---------------------------------------------------------------------------------------------
// Protocol v2 (docs/api.md §2): every request and every answer is signed with the device key.

/** RFC 4648 §5 base64url without padding, canonical only (unused low bits zero); null if not. */
export function decodeBase64Url(text) {
  if (typeof text !== 'string' || text.length % 4 === 1) return null;
  const out = [];
  let value = 0;
  let bits = 0;
  for (let i = 0; i < text.length; i++) {
    const digit = BASE64URL.indexOf(text[i]);
    if (digit < 0) return null;
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push(value >> bits);
      value &= (1 << bits) - 1;
    }
  }
  return value === 0 ? new Uint8Array(out) : null;
}

/** The HMAC key a deviceKey setting holds: exactly 32 bytes, or null (not configured). */
export function deviceKeyBytes(text) {
  const bytes = decodeBase64Url(text);
  return bytes !== null && bytes.length === KEY_BYTES ? bytes : null;
}

/** JSON with every non-ASCII character escaped: the bytes hashed are the bytes sent. */
export function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

let nonceCounter = 0;

/**
 * A fresh nonce for each request. No crypto RNG exists here; uniqueness is what the nonce needs
 * (it binds the request and its signed answer together), and time + counter + Math.random give it.
 */
export function makeNonce() {
  nonceCounter += 1;
  const seed = `${Date.now()}|${nonceCounter}|${Math.random()}|${Math.random()}`;
  return toHex(sha256(seed)).slice(0, 32);
}

/**
 * What a request signature covers: request = {method, path (with its query string, as sent),
 * serial, ts (Unix seconds), nonce, body (the exact text sent, '' when none)}.
 */
export function requestStringToSign({ method, path, serial, ts, nonce, body }) {
  return [REQUEST_CONTEXT, method, path, serial, String(ts), nonce, toHex(sha256(body))].join('\n');
}

/** Lowercase hex HMAC-SHA256 of requestStringToSign(request), keyed with the 32 key bytes. */
export function signRequest(key, request) {
  return toHex(hmacSha256(key, requestStringToSign(request)));
}

/** The Authorization header value: proves the key without sending it. */
export function authorization(key, request) {
  const { serial, ts, nonce } = request;
  return `${AUTH_SCHEME} serial=${serial},ts=${ts},nonce=${nonce},` +
    `signature=${signRequest(key, request)}`;
}

/** The X-FaceID-Signature the connector puts on its answer to the request that sent `nonce`. */
export function signAnswer(key, nonce, bodyText) {
  return toHex(hmacSha256(key, `${ANSWER_CONTEXT}\n${nonce}\n${bodyText}`));
}

function sameText(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The answer's one X-FaceID-Signature value; null when absent or repeated (ambiguous). */
function signatureHeader(headers) {
  const found = (Array.isArray(headers) ? headers : []).filter((entry) => isObject(entry) &&
    typeof entry.Key === 'string' && entry.Key.toLowerCase() === SIGNATURE_HEADER);
  return found.length === 1 && typeof found[0].Value === 'string' ? found[0].Value : null;
}

/**
 * Read an HttpClient result only if its signature header holds over the raw Body for the nonce
 * this request sent: nothing from anyone without the key, or from another exchange, gets through.
 * Returns {ok: true, body} or {ok: false, code, message}.
 */
export function openAnswer(key, nonce, response) {
  const text = response && response.Body;
  const signature = signatureHeader(response && response.Headers);
  if (typeof text !== 'string' || signature === null ||
      !sameText(signAnswer(key, nonce, text), signature)) {
    return { ok: false, code: 'bad_signature', message: MESSAGES.badSignature };
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (err) {
    body = null;
  }
  if (!isObject(body)) return { ok: false, code: 'malformed_answer', message: MESSAGES.malformed };
  return { ok: true, body };
}

function refused(code, message) {
  return { unlock: false, code, person: null, message };
}

/**
 * Decide on a verify answer whose signature already held (openAnswer). Unlocks only when it is for
 * this device and this attempt, its expiry fits the device clock, and the verdict is a match with
 * a person; everything else stays locked. expected: {serial, nonce, nowSeconds}.
 */
export function checkVerifyAnswer(answer, expected) {
  if (!isObject(answer)) return refused('malformed_answer', MESSAGES.malformed);
  const { verdict, person, serial, nonce } = answer;
  const expiresAt = answer.expires_at;
  const personOk = person === null || person === undefined || typeof person === 'string';
  if (!VERDICTS.includes(verdict) || !personOk || typeof serial !== 'string' ||
      !Number.isSafeInteger(expiresAt)) {
    return refused('malformed_answer', MESSAGES.malformed);
  }
  if (serial !== expected.serial) return refused('wrong_serial', MESSAGES.wrongDevice);
  if (nonce !== expected.nonce) return refused('stale_answer', MESSAGES.staleAnswer);
  if (expected.nowSeconds > expiresAt + ANSWER_SKEW_S) {
    return refused('expired_answer', MESSAGES.expiredAnswer);
  }
  if (expiresAt > expected.nowSeconds + ANSWER_TTL_S + ANSWER_SKEW_S) {
    return refused('future_answer', MESSAGES.futureAnswer);
  }
  if (verdict === 'match') {
    if (typeof person !== 'string' || person.trim() === '') {
      return refused('malformed_answer', MESSAGES.malformed);
    }
    return { unlock: true, code: null, person, message: `Welcome, ${person}` };
  }
  const code = typeof answer.code === 'string' ? answer.code : verdict;
  const message = typeof answer.message === 'string' && answer.message
    ? answer.message
    : MESSAGES.failed;
  return refused(code, message);
}

// ---------------------------------------------------------------------------------------------
// Unlock codes: `admin unlock-code` derives an 8-digit code from the device key, the serial and the
// step its validity ends in (HMAC-SHA256, truncated as in RFC 4226); the macro checks it here with
// no network. Nothing about a code is stored anywhere: the key and the clock give it back.

/** The code of `serial` whose validity ends at step `step` (Unix seconds / 300). */
export function unlockCode(key, serial, step) {
  const mac = hmacSha256(key, `${CODE_CONTEXT}\n${serial}\n${step}`);
  const off = mac[31] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 10 ** CODE_DIGITS).padStart(CODE_DIGITS, '0');
}

/** The steps a code typed at `nowS` may end in: not yet expired, at most 720 minutes ahead. */
export function codeSteps(nowS) {
  return {
    first: Math.ceil((nowS - CODE_GRACE_S) / CODE_STEP_S),
    last: Math.floor((nowS + CODE_MAX_MINUTES * 60 + CODE_STEP_S + CODE_GRACE_S) / CODE_STEP_S),
  };
}

/** The 8 digits of a typed code (spaces and dashes dropped), or null. */
export function cleanCode(text) {
  const digits = typeof text === 'string' ? text.replace(/[\s-]/g, '') : '';
  return new RegExp(`^[0-9]{${CODE_DIGITS}}$`).test(digits) ? digits : null;
}

/** The steps of the window at `nowS` whose code is `digits`: almost always none or one. */
export function matchingSteps(key, serial, digits, nowS) {
  const { first, last } = codeSteps(nowS);
  const found = [];
  for (let step = first; step <= last; step++) {
    if (sameText(unlockCode(key, serial, step), digits)) found.push(step);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Runtime state. Nothing here survives a restart (the device has no storage for macros), and
// the lock needs nothing of it: start() always locks. What a restart forgets about unlock codes is
// said in docs/macro.md.

let settings = SETTINGS;
let state = freshState();
// Bumped by every lock and stop: an answer or screen change begun before it is void. Module-wide,
// so not even a stop/start in the same runtime can revive an old attempt.
let generation = 0;

function freshState() {
  return {
    unlocked: false,
    busy: false,
    offerFirstEnroll: false,
    idleTimer: null,
    progressTimer: null,
    queue: Promise.resolve(),
    uiQueue: Promise.resolve(),
    unsubscribe: [],
    // Connector URL → Date.now() when it last could not be reached or answered 5xx.
    failedAt: {},
    codes: {
      used: [], // steps whose code unlocked, until they expire
      wrong: 0,
      lastWaitS: 0,
      waitTimer: null, // pending during a wait after wrong codes: only it ends the wait
      waitUntilMs: 0, // device clock at the start of the wait + its length: for the message only
      highWaterS: 0, // the latest device clock (Unix s) read for codes: it never goes back
      pending: [], // events not yet acknowledged by a connector
      sending: false,
      retryTimer: null,
      clockTimer: null, // reads the clock every minute (codeClockMs)
    },
  };
}

function log(text) {
  console.log(`faceid: ${text}`);
}

/** xapi rejections are objects with a message; anything else is printed as it is. */
function errorText(err) {
  return String((err && err.message) || err);
}

/** Why these settings cannot work, as {log, message}; null when they can. */
function setupProblem() {
  if (!settings.key) {
    return { log: 'deviceKey in SETTINGS is not a 43-character base64url key (32 bytes)',
      message: MESSAGES.notConfigured };
  }
  const urls = settings.connectorUrls;
  if (urls.length < 1 || urls.length > MAX_CONNECTORS || new Set(urls).size !== urls.length ||
      !urls.every((url) => CONNECTOR_URL.test(url))) {
    return { log: `connectorUrls in SETTINGS is not a list of 1 to ${MAX_CONNECTORS} different ` +
      'http(s)://host[:port]', message: MESSAGES.notConfigured };
  }
  const plain = urls.find((url) => url.startsWith('http:'));
  if (plain !== undefined && !settings.allowPlainHttp) {
    return { log: `connectorUrls in SETTINGS has ${plain}: http:// and allowPlainHttp is false: ` +
      'refused', message: MESSAGES.plainHttp };
  }
  return null;
}

function configured() {
  return setupProblem() === null;
}

/** A message of MESSAGES with its {name} places filled in from `values`. */
function fill(text, values) {
  return text.replace(/\{(\w+)\}/g,
    (place, name) => (name in values ? String(values[name]) : place));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function attempt(what, action) {
  try {
    return await action();
  } catch (err) {
    log(`${what} failed: ${errorText(err)}`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Screen.

function panelXml(panel) {
  return [
    '<Extensions>',
    '  <Version>1.11</Version>',
    '  <Panel>',
    `    <Order>${panel.order}</Order>`,
    `    <PanelId>${panel.id}</PanelId>`,
    '    <Origin>local</Origin>',
    '    <Location>HomeScreen</Location>',
    `    <Icon>${panel.icon}</Icon>`,
    `    <Color>${panel.color}</Color>`,
    `    <Name>${panel.name}</Name>`,
    '    <ActivityType>Custom</ActivityType>',
    '  </Panel>',
    '</Extensions>',
  ].join('\n');
}

async function savePanels() {
  for (const panel of Object.values(PANELS)) {
    await attempt(`saving panel ${panel.id}`, () =>
      xapi.Command.UserInterface.Extensions.Panel.Save({ PanelId: panel.id }, panelXml(panel)));
  }
}

async function showPanels(visible) {
  for (const key of Object.keys(PANELS)) {
    const Visibility = visible[key] ? 'Auto' : 'Hidden';
    await attempt(`showing panel ${PANELS[key].id}`, () =>
      xapi.Command.UserInterface.Extensions.Panel.Update({ PanelId: PANELS[key].id, Visibility }));
  }
}

function alert(text, duration = MESSAGE_DURATION_S) {
  return attempt('showing a message', () =>
    xapi.Command.UserInterface.Message.Alert.Display({
      Title: TITLE, Text: String(text).slice(0, 255), Duration: duration,
    }));
}

function startProgress(text) {
  stopProgress();
  let seconds = 0;
  alert(text, 0);
  state.progressTimer = setInterval(() => {
    seconds += PROGRESS_TICK_MS / 1000;
    alert(`${text} (${seconds} s)`, 0);
  }, PROGRESS_TICK_MS);
}

function stopProgress() {
  if (state.progressTimer === null) return false;
  clearInterval(state.progressTimer);
  state.progressTimer = null;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Lock and unlock. Screen changes run one after another, so a lock that arrives while an unlock
// is being applied always has the last word.

function uiTask(task) {
  const run = state.uiQueue.then(task);
  state.uiQueue = run.then(() => undefined, () => undefined);
  return run;
}

async function hideMenus() {
  await attempt('hiding the UI', () => xapi.Config.UserInterface.Features.HideAll.set('True'));
  await attempt('hiding the settings menu', () =>
    xapi.Config.UserInterface.SettingsMenu.Visibility.set('Hidden'));
}

async function applyLockedUi() {
  await hideMenus();
  await showPanels({ login: true, code: true, enroll: state.offerFirstEnroll });
}

/** Lock the screen. Always re-applies everything: the macro never trusts what it remembers. */
async function lock(reason, message) {
  state.unlocked = false;
  generation += 1;
  clearIdleTimer();
  const hadProgress = stopProgress();
  await uiTask(applyLockedUi);
  if (message) {
    await alert(message);
  } else if (hadProgress) {
    await attempt('clearing a message', () => xapi.Command.UserInterface.Message.Alert.Clear());
  }
  log(`locked (${reason})`);
  if (configured()) tellConnectorLocked();
}

/** Ends the connector's unlocked session too, so it stops accepting enrollment for this device. */
function tellConnectorLocked() {
  attempt('telling the connector', async () => {
    const answer = await postAsDevice('/v1/lock');
    if (!answer.ok) log(`connector lock not confirmed (${answer.code})`);
    else if (answer.body.unlocked !== false) log('connector lock not confirmed (still unlocked)');
  });
}

/**
 * Tells the connector that this copy runs, naming its push (`admin provision` waits for it). Only
 * logged: the answer unlocks nothing, and a failure shows nothing on screen.
 */
function reportIn() {
  attempt('reporting in', async () => {
    const answer = await postAsDevice('/v1/status', { push: settings.pushId });
    if (!answer.ok) log(`not reported in (${answer.code})`);
    else if (!isStatusAnswer(answer.body)) log('not reported in (malformed_answer)');
    else log(`reported in (push ${settings.pushId ? settings.pushId : 'none: installed by hand'})`);
  });
}

/** The shape of a status answer (docs/api.md §2), whose signature already held. */
function isStatusAnswer(body) {
  return Number.isSafeInteger(body.enrolled_people) && typeof body.unlocked === 'boolean' &&
    typeof body.locked_out_for_s === 'number';
}

/**
 * Show the UI. `enroll`: offer "Update my photo", which needs the unlocked session the connector
 * opened with its match (an unlock code opens none).
 */
async function unlock(person, greeting, offerEnroll) {
  const mine = generation;
  const current = () => generation === mine;
  state.unlocked = true;
  state.offerFirstEnroll = false;
  const done = await uiTask(async () => {
    if (!current()) return false;
    await attempt('showing the UI', () => xapi.Config.UserInterface.Features.HideAll.set('False'));
    if (!current()) return false;
    await attempt('showing the settings menu', () =>
      xapi.Config.UserInterface.SettingsMenu.Visibility.set('Auto'));
    if (!current()) return false;
    await showPanels({ logout: true, enroll: offerEnroll });
    return current();
  });
  if (!done) return;
  await alert(greeting);
  armIdleTimer();
  log(`unlocked for ${person}`);
}

function clearIdleTimer() {
  if (state.idleTimer !== null) clearTimeout(state.idleTimer);
  state.idleTimer = null;
}

function armIdleTimer() {
  clearIdleTimer();
  state.idleTimer = setTimeout(onIdle, settings.relockIdleSeconds * 1000);
}

async function onIdle() {
  state.idleTimer = null;
  if (!state.unlocked) return;
  const calls = await attempt('reading active calls', () =>
    xapi.Status.SystemUnit.State.NumberOfActiveCalls.get());
  if (Number(calls) > 0) {
    armIdleTimer();
    return;
  }
  await lock('idle', MESSAGES.idleLocked);
}

function noteActivity() {
  if (state.unlocked) armIdleTimer();
}

// ---------------------------------------------------------------------------------------------
// Device facts.

/** The connector's rule for serials (docs/api.md §2): 1 to 64 of A-Z, a-z, 0-9, '_' and '-'. */
export function cleanSerial(value) {
  return typeof value === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(value) ? value : null;
}

async function readSerial() {
  const serial = await attempt('reading the serial number', () =>
    xapi.Status.SystemUnit.Hardware.Module.SerialNumber.get());
  return cleanSerial(serial);
}

/** Desk models report the camera lid; elsewhere the status does not exist (error code 3). */
async function cameraLidClosed() {
  try {
    return (await xapi.Status.SystemUnit.State.CameraLid.get()) === 'Closed';
  } catch (err) {
    if (!err || err.code !== 3) {
      log(`reading the camera lid failed: ${errorText(err)}`);
    }
    return false;
  }
}

/** true when the option key is known to be missing; an unreadable one is left to the connector. */
async function optionKeyMissing() {
  try {
    return (await xapi.Status.SystemUnit.Software.OptionKeys.RemoteMonitoring.get()) !== 'True';
  } catch (err) {
    log(`reading the Remote Monitoring option key failed: ${errorText(err)}`);
    return false;
  }
}

/** Says once per start what keeps face login from working at all. */
async function reportPrerequisites() {
  const problem = setupProblem();
  if (problem !== null) {
    log(problem.log);
    return;
  }
  const mode = await attempt('reading HttpClient Mode', () => xapi.Config.HttpClient.Mode.get());
  if (mode !== undefined && mode !== 'On') {
    log('xConfiguration HttpClient Mode is not On');
    await alert(MESSAGES.httpClientOff);
    return;
  }
  if (await optionKeyMissing()) {
    log('the Remote Monitoring option key is missing: the connector cannot take snapshots');
    await alert(MESSAGES.noOptionKey);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP: one request at a time (the device refuses parallel ones), answers verified, never thrown.

function post(path, payload) {
  const run = state.queue.then(() => postNow(path, payload));
  state.queue = run.then(() => undefined, () => undefined);
  return run;
}

/** post() of {serial, ...fields} for this device's serial, read now; refused without one. */
async function postAsDevice(path, fields = {}) {
  const serial = await readSerial();
  if (serial === null) return { ok: false, code: 'no_serial', message: MESSAGES.noSerial };
  return post(path, Object.assign({ serial }, fields));
}

function withDeadline(promise, ms) {
  let timer = null;
  const deadline = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error('no answer from the device HTTP client')), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function isNoConnection(err) {
  return /No available http connections/i.test(errorText(err));
}

/** Non-2xx rejections carry the status in err.data.StatusCode or in JSON.parse(err.data). */
function rejectedStatus(err) {
  let data = err && err.data;
  if (typeof data === 'string') {
    try {
      data = JSON.parse(data);
    } catch (parseError) {
      return null;
    }
  }
  const status = isObject(data) ? Number(data.StatusCode) : NaN;
  return Number.isInteger(status) ? status : null;
}

/**
 * A reason to try the next connector: no HTTP answer at all (down, unreachable, TLS, timeout) or
 * a 5xx (the connector or its front failed). Any other answer, a refusal above all, ends the call.
 */
function connectorDown(err) {
  const status = rejectedStatus(err);
  return status === null || status >= 500;
}

/** What went wrong at `url`, for the log: the URL is scheme, host and port only (no secret). */
function failureText(url, err) {
  const status = rejectedStatus(err);
  return status === null ? `connector ${url} unreachable: ${errorText(err)}`
    : `connector ${url} answered HTTP ${status}`;
}

/** failedOver: an earlier connector was down for this request. A 401 from the next one then
 * most likely says it was replayed (the first got it before it went down): try again, a new
 * request. Only the words differ: nothing is unlocked on an error. */
function failure(err, failedOver = false) {
  if (isNoConnection(err)) return { ok: false, code: 'busy', message: MESSAGES.busy };
  const status = rejectedStatus(err);
  if (status === null) return { ok: false, code: 'unreachable', message: MESSAGES.unreachable };
  if (status === 401 && failedOver) {
    return { ok: false, code: 'failed_over', message: MESSAGES.failedOver };
  }
  if (status === 401 || status === 403) {
    return { ok: false, code: 'unauthorized', message: MESSAGES.unauthorized };
  }
  if (status === 429) return { ok: false, code: 'rate_limited', message: MESSAGES.rateLimited };
  return { ok: false, code: 'service_error', message: MESSAGES.serviceError };
}

/**
 * One signed request (one nonce, one ts) for one call of post(), whichever connectors it goes to:
 * they share one replay cache, so one that already got it refuses it as replayed, and no attempt
 * is ever counted twice. params(url) are the HttpClient parameters for the connector at `url`.
 */
function signedRequest(path, serial, body) {
  const request = {
    method: 'POST', path, serial, ts: Math.floor(Date.now() / 1000), nonce: makeNonce(), body,
  };
  const header = [
    'Content-Type: application/json',
    'Accept: application/json',
    `Authorization: ${authorization(settings.key, request)}`,
  ];
  return {
    nonce: request.nonce,
    params: (url) => ({
      Url: url + path,
      Header: header,
      AllowInsecureHTTPS: settings.allowInsecureHttps ? 'True' : 'False',
      ResultBody: 'PlainText',
      Timeout: settings.requestTimeoutSeconds,
    }),
  };
}

/** The connector URLs in the order to try now: as configured, those failed lately last. */
function connectorOrder() {
  const now = Date.now();
  const failedLately = (url) => state.failedAt[url] !== undefined &&
    now - state.failedAt[url] < FAILED_CONNECTOR_LAST_MS;
  const urls = settings.connectorUrls;
  return urls.filter((url) => !failedLately(url)).concat(urls.filter(failedLately));
}

/**
 * The signed request to one connector: {response} or {error}. "No available http connections"
 * means the request never left the device: it is tried again, the same request, a few times.
 */
async function sendTo(url, request, body) {
  const deadlineMs = (settings.requestTimeoutSeconds + 5) * 1000;
  for (let tries = 1; ; tries++) {
    try {
      const pending = xapi.Command.HttpClient.Post(request.params(url), body);
      return { response: await withDeadline(pending, deadlineMs) };
    } catch (err) {
      if (!isNoConnection(err) || tries >= NO_CONNECTION_ATTEMPTS) return { error: err };
      await sleep(NO_CONNECTION_RETRY_MS);
    }
  }
}

/**
 * {ok: true, body, nonce} for a verified answer; {ok: false, code, message} otherwise. Goes to the
 * next connector only when one is down (connectorDown), never when one refuses.
 */
async function postNow(path, payload) {
  const body = asciiJson(payload);
  const request = signedRequest(path, payload.serial, body);
  const urls = connectorOrder();
  let sent = null;
  let failedOver = false;
  for (let i = 0; i < urls.length; i++) {
    const url = urls[i];
    sent = Object.assign(await sendTo(url, request, body), { failedOver });
    if (sent.error === undefined) {
      delete state.failedAt[url];
      if (url !== settings.connectorUrls[0]) log(`${path} answered by ${url}`);
      break;
    }
    if (isNoConnection(sent.error)) break; // the device's own HTTP client is busy
    if (!connectorDown(sent.error)) {
      delete state.failedAt[url];
      log(failureText(url, sent.error));
      break;
    }
    state.failedAt[url] = Date.now();
    failedOver = true;
    const next = urls[i + 1];
    log(failureText(url, sent.error) + (next === undefined ? '' : `; trying ${next}`));
  }
  if (sent.error !== undefined) return failure(sent.error, sent.failedOver);
  const answer = openAnswer(settings.key, request.nonce, sent.response);
  if (!answer.ok) log(`answer from ${path} refused (${answer.code})`);
  // A connector answers again: unlock code events waiting for one go now, not at the next 60 s.
  if (answer.ok && path !== CODE_EVENTS_PATH && state.codes.pending.length > 0) {
    reportCodeEvents();
  }
  return Object.assign(answer, { nonce: request.nonce });
}

// ---------------------------------------------------------------------------------------------
// What people touch.

/** Shared checks before the connector is asked to take a snapshot; returns a message or null. */
async function snapshotBlocker() {
  const problem = setupProblem();
  if (problem !== null) return problem.message;
  if (await cameraLidClosed()) return MESSAGES.lidClosed;
  if (await optionKeyMissing()) return MESSAGES.noOptionKey;
  return null;
}

async function runExclusive(task) {
  if (state.busy) return;
  state.busy = true;
  try {
    await task();
  } finally {
    state.busy = false;
    stopProgress();
  }
}

/** What both camera actions check first: the device serial, or null once the person was told
 * why the camera cannot be used (lid closed, no option key, no serial). */
async function cameraReady() {
  const blocker = await snapshotBlocker();
  if (blocker) {
    await alert(blocker);
    return null;
  }
  const serial = await readSerial();
  if (serial === null) await alert(MESSAGES.noSerial);
  return serial;
}

function login() {
  return runExclusive(async () => {
    if (state.unlocked) return;
    const mine = generation;
    const serial = await cameraReady();
    if (serial === null) return;
    startProgress(MESSAGES.look);
    const answer = await post('/v1/verify', { serial });
    stopProgress();
    if (generation !== mine) return; // locked meanwhile: this answer is void
    if (!answer.ok) {
      await alert(answer.message);
      return;
    }
    const outcome = checkVerifyAnswer(answer.body, {
      serial, nonce: answer.nonce, nowSeconds: Math.floor(Date.now() / 1000),
    });
    log(`verify: ${outcome.unlock ? 'match' : outcome.code}`);
    if (outcome.unlock) {
      await unlock(outcome.person, outcome.message, true);
      return;
    }
    if (outcome.code === 'not_enrolled') {
      state.offerFirstEnroll = true;
      await uiTask(() => (state.unlocked ? undefined : applyLockedUi()));
    }
    await alert(outcome.message);
  });
}

function askName() {
  return attempt('asking for a name', () =>
    xapi.Command.UserInterface.Message.TextInput.Display({
      FeedbackId: ENROLL_FEEDBACK_ID,
      Title: MESSAGES.enrollTitle,
      Text: MESSAGES.enrollText,
      Placeholder: 'Your name',
      SubmitText: 'Take photo',
      InputType: 'SingleLine',
      KeyboardState: 'Open',
    }));
}

/** The connector's rule for names (docs/api.md §2), so obvious mistakes never leave the device. */
export function cleanName(text) {
  const name = typeof text === 'string' ? text.trim() : '';
  const length = Array.from(name).length;
  if (length < 1 || length > 64 || /[\u0000-\u001f\u007f-\u009f/\\]/.test(name)) return null;
  return name;
}

function enroll(text) {
  return runExclusive(async () => {
    const person = cleanName(text);
    if (person === null) {
      await alert(MESSAGES.badName);
      return;
    }
    const serial = await cameraReady();
    if (serial === null) return;
    startProgress(MESSAGES.look);
    const answer = await post('/v1/enroll', { serial, person });
    stopProgress();
    if (!answer.ok) {
      await alert(answer.message);
      return;
    }
    const { result, message } = answer.body;
    log(`enroll: ${result} ${answer.body.code || ''}`);
    if (result === 'enrolled' && !state.unlocked && state.offerFirstEnroll) {
      state.offerFirstEnroll = false;
      await uiTask(() => (state.unlocked ? undefined : applyLockedUi()));
    }
    await alert(typeof message === 'string' && message ? message : MESSAGES.malformed);
  });
}

// ---------------------------------------------------------------------------------------------
// "Use a code": an administrator's one-time code opens the screen when face login cannot. What it
// needs to remember lives in state.codes, in memory only: the steps used, the wrong codes and the
// wait, and the events the connector has not acknowledged yet. Never the code typed.

/** What the macro remembers about unlock codes now (a copy, for tests): never a code. */
export function codeMemory() {
  const { used, wrong, lastWaitS, waitTimer, waitUntilMs, highWaterS, pending } = state.codes;
  return JSON.parse(JSON.stringify({
    used, wrong, lastWaitS, waiting: waitTimer !== null, waitUntilMs, highWaterS, pending,
  }));
}

function minutes(ms) {
  return Math.max(1, Math.ceil(ms / 60000));
}

/**
 * Date.now() for codes. It also raises the latest time seen, so that a clock set back (by anyone
 * who can answer the device's NTP) is noticed, and never makes a used code new again.
 */
function codeClockMs() {
  const nowMs = Date.now();
  const codes = state.codes;
  codes.highWaterS = Math.max(codes.highWaterS, Math.floor(nowMs / 1000));
  return nowMs;
}

/** Whether the device clock is now more than the 120 s grace behind the latest time seen. */
function clockWentBack(nowS) {
  return nowS < state.codes.highWaterS - CODE_GRACE_S;
}

/** The waiting message while wrong codes make the person wait; null when codes may be tried. */
function codeWait() {
  const codes = state.codes;
  if (codes.waitTimer === null) return null;
  // Only a message: the timer decides. A clock moved meanwhile cannot stretch or shrink it.
  const left = Math.min(Math.max(codes.waitUntilMs - codeClockMs(), 0), codes.lastWaitS * 1000);
  return fill(MESSAGES.codeWaiting, { minutes: minutes(left) });
}

/** Why no code can be checked now (a wait, a clock set back); null when one can. */
function codeBlocker() {
  const waiting = codeWait();
  if (waiting !== null) return waiting;
  return clockWentBack(Math.floor(codeClockMs() / 1000)) ? MESSAGES.codeClockBack : null;
}

async function askCode() {
  if (state.unlocked) return;
  const problem = setupProblem();
  const blocker = problem !== null ? problem.message : codeBlocker();
  if (blocker !== null) {
    await alert(blocker);
    return;
  }
  await attempt('asking for a code', () =>
    xapi.Command.UserInterface.Message.TextInput.Display({
      FeedbackId: CODE_FEEDBACK_ID,
      Title: MESSAGES.codeTitle,
      Text: MESSAGES.codeText,
      Placeholder: '8 digits',
      SubmitText: 'Unlock',
      InputType: 'PIN', // masked as it is typed
      KeyboardState: 'Open',
    }));
}

/** Check a typed code locally: unlock once per code, count wrong ones, wait after too many. */
function useCode(text) {
  return runExclusive(async () => {
    if (state.unlocked) return;
    const mine = generation;
    const waiting = codeWait();
    if (waiting !== null) {
      log('unlock code not checked: waiting after wrong codes');
      await alert(waiting);
      return;
    }
    const digits = cleanCode(text);
    if (digits === null) {
      await alert(MESSAGES.codeFormat);
      return;
    }
    const problem = setupProblem();
    if (problem !== null) {
      await alert(problem.message);
      return;
    }
    const serial = await readSerial();
    if (serial === null) {
      await alert(MESSAGES.noSerial);
      return;
    }
    if (generation !== mine) return; // locked meanwhile: nothing checked
    const nowS = Math.floor(codeClockMs() / 1000);
    if (clockWentBack(nowS)) {
      log('unlock code not checked: the device clock went back');
      await alert(MESSAGES.codeClockBack);
      return;
    }
    const codes = state.codes;
    // Forget a used step only once the latest time seen is past it: a clock moved forward and back
    // again finds it still used (and is refused above until the clock is back where it was).
    codes.used = codes.used.filter(
      (step) => step * CODE_STEP_S + 2 * CODE_GRACE_S >= codes.highWaterS);
    const steps = matchingSteps(settings.key, serial, digits, nowS);
    if (steps.length === 0) {
      await wrongCode(codes);
    } else if (steps.some((step) => codes.used.includes(step))) {
      log('unlock code refused: already used');
      await alert(MESSAGES.codeUsed);
    } else {
      codes.used.push(...steps);
      codes.wrong = 0;
      codes.lastWaitS = 0;
      queueCodeEvent({ kind: 'used', expires: Math.max(...steps) * CODE_STEP_S });
      log('unlock code accepted');
      await unlock('unlock code', MESSAGES.codeUnlocked, false);
    }
  });
}

async function wrongCode(codes) {
  codes.wrong += 1;
  if (codes.wrong < CODE_FREE_TRIES) {
    log(`unlock code refused: wrong (${codes.wrong} of ${CODE_FREE_TRIES} before a wait)`);
    await alert(fill(MESSAGES.codeWrong, { tries: CODE_FREE_TRIES - codes.wrong }));
    return;
  }
  const waitS = codes.lastWaitS === 0 ? CODE_FIRST_WAIT_S
    : Math.min(codes.lastWaitS * 2, CODE_MAX_WAIT_S);
  codes.lastWaitS = waitS;
  codes.waitUntilMs = codeClockMs() + waitS * 1000;
  codes.waitTimer = setTimeout(() => {
    codes.waitTimer = null;
  }, waitS * 1000);
  queueCodeEvent({ kind: 'wait', wait_s: waitS, wrong: codes.wrong });
  log(`unlock code refused: wrong (${codes.wrong} in a row), codes wait ${waitS} s`);
  await alert(fill(MESSAGES.codeWrongWait, { minutes: minutes(waitS * 1000) }));
}

/** Keep an event for the connector (the oldest goes beyond 50) and report it at once. */
function queueCodeEvent(fields) {
  const codes = state.codes;
  const event = Object.assign({ id: makeNonce().slice(0, 16) }, fields,
    { at: Math.floor(codeClockMs() / 1000) });
  codes.pending.push(event);
  if (codes.pending.length > CODE_EVENTS_KEPT) {
    codes.pending.shift();
    log(`unlock code events: more than ${CODE_EVENTS_KEPT} unreported, the oldest dropped`);
  }
  reportCodeEvents();
}

function reportCodeEvents() {
  attempt('reporting unlock code events', sendCodeEvents);
}

/**
 * Send the pending events (20 at a time) until a signed {"recorded": n} shows a connector has
 * them; they are dropped only then. Tried again every 60 s, and after any answer a connector
 * signed (postNow); the connector ignores an id it has.
 */
async function sendCodeEvents() {
  const codes = state.codes;
  if (codes.sending || codes.pending.length === 0 || !configured()) return;
  codes.sending = true;
  const batch = codes.pending.slice(0, CODE_EVENTS_PER_REPORT);
  let answer = null;
  try {
    answer = await postAsDevice(CODE_EVENTS_PATH, { events: batch });
  } finally {
    codes.sending = false;
    if (state.codes === codes) { // not stopped meanwhile: whatever happened, try again later
      if (codes.retryTimer !== null) clearTimeout(codes.retryTimer);
      codes.retryTimer = setTimeout(reportCodeEvents, CODE_EVENTS_RETRY_MS);
    }
  }
  if (state.codes !== codes) return;
  const recorded = answer.ok ? answer.body.recorded : undefined;
  if (!Number.isSafeInteger(recorded) || recorded < 0) {
    log(`unlock code events not reported (${answer.ok ? 'malformed_answer' : answer.code}); ` +
      `again in ${CODE_EVENTS_RETRY_MS / 1000} s`);
    return;
  }
  const sent = batch.map((event) => event.id);
  codes.pending = codes.pending.filter((event) => !sent.includes(event.id));
  log(`unlock code events reported (${batch.length} sent, ${recorded} new)`);
  if (codes.pending.length > 0) {
    reportCodeEvents();
  } else {
    clearTimeout(codes.retryTimer);
    codes.retryTimer = null;
  }
}

function onPanelClicked(event) {
  const id = event && event.PanelId;
  if (id === PANELS.login.id) login();
  else if (id === PANELS.logout.id) lock('logout', MESSAGES.locked);
  else if (id === PANELS.enroll.id) askName();
  else if (id === PANELS.code.id) askCode();
}

function onTextInput(event) {
  if (event && event.FeedbackId === ENROLL_FEEDBACK_ID) enroll(event.Text);
  else if (event && event.FeedbackId === CODE_FEEDBACK_ID) useCode(event.Text);
}

function onStandby(value) {
  if (LOCKING_STANDBY_STATES.includes(value)) lock(`standby ${value}`);
}

/** Someone changed a lock setting while locked: put it back. */
function relockSetting(lockedValue) {
  return (value) => {
    if (value !== lockedValue && !state.unlocked) {
      uiTask(() => (state.unlocked ? undefined : hideMenus()));
    }
  };
}

function subscribe() {
  const ui = xapi.Event.UserInterface;
  state.unsubscribe = [
    ui.Extensions.on(noteActivity),
    ui.Message.TextInput.Response.on(noteActivity),
    ui.Extensions.Panel.Clicked.on(onPanelClicked),
    ui.Message.TextInput.Response.on(onTextInput),
    xapi.Status.Standby.State.on(onStandby),
    xapi.Config.UserInterface.Features.HideAll.on(relockSetting('True')),
    xapi.Config.UserInterface.SettingsMenu.Visibility.on(relockSetting('Hidden')),
  ];
}

// ---------------------------------------------------------------------------------------------
// Life cycle.

function normalise(overrides) {
  const merged = Object.assign({}, SETTINGS, overrides);
  const timeout = Math.round(Number(merged.requestTimeoutSeconds));
  const idle = Math.round(Number(merged.relockIdleSeconds));
  return Object.freeze({
    connectorUrls: Object.freeze(Array.isArray(merged.connectorUrls)
      ? merged.connectorUrls.map((url) => String(url).replace(/\/+$/, ''))
      : []),
    key: deviceKeyBytes(String(merged.deviceKey).trim()),
    allowInsecureHttps: merged.allowInsecureHttps === true,
    allowPlainHttp: merged.allowPlainHttp === true,
    relockIdleSeconds: idle >= 10 ? idle : 10,
    requestTimeoutSeconds: timeout >= 1 && timeout <= 29 ? timeout : 25,
    pushId: typeof merged.pushId === 'string' ? merged.pushId : '',
  });
}

/** Stop listening and cancel timers (what a runtime restart does); leaves the screen as it is. */
export function stop() {
  for (const off of state.unsubscribe) {
    if (typeof off === 'function') off();
  }
  clearIdleTimer();
  stopProgress();
  if (state.codes.retryTimer !== null) clearTimeout(state.codes.retryTimer);
  if (state.codes.waitTimer !== null) clearTimeout(state.codes.waitTimer);
  if (state.codes.clockTimer !== null) clearInterval(state.codes.clockTimer);
  generation += 1;
  state = freshState();
}

/**
 * Lock first, then listen, then report in (not awaited: it never holds up the lock or the UI).
 * Tests pass settings overrides; on the device it runs at load.
 */
export async function start(overrides = {}) {
  stop();
  settings = normalise(overrides);
  await hideMenus();
  await savePanels();
  await lock('start');
  subscribe();
  await reportPrerequisites();
  codeClockMs();
  state.codes.clockTimer = setInterval(codeClockMs, CODE_CLOCK_READ_MS);
  if (configured()) reportIn();
}

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104): the runtime has no crypto API. Checked
// against the published test vectors and Node's crypto (test/sha256.test.mjs).

const K = [
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/** UTF-8 bytes of a string, as Python's str.encode() gives them (lone surrogates become U+FFFD). */
export function utf8Encode(text) {
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else {
      out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
  }
  return new Uint8Array(out);
}

function asBytes(data) {
  return typeof data === 'string' ? utf8Encode(data) : data;
}

/** SHA-256 of a string (UTF-8) or a Uint8Array; returns 32 bytes. */
export function sha256(data) {
  const bytes = asBytes(data);
  const length = bytes.length;
  const padded = new Uint8Array(Math.ceil((length + 9) / 64) * 64);
  padded.set(bytes);
  padded[length] = 0x80;
  const end = padded.length;
  const bitsHigh = Math.floor(length / 0x20000000);
  const bitsLow = (length * 8) >>> 0;
  for (let i = 0; i < 4; i++) {
    padded[end - 8 + i] = (bitsHigh >>> (24 - 8 * i)) & 255;
    padded[end - 4 + i] = (bitsLow >>> (24 - 8 * i)) & 255;
  }
  const h = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
    0x5be0cd19];
  const w = new Int32Array(64);
  for (let offset = 0; offset < end; offset += 64) {
    for (let i = 0; i < 16; i++) {
      const j = offset + 4 * i;
      w[i] = (padded[j] << 24) | (padded[j + 1] << 16) | (padded[j + 2] << 8) | padded[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15];
      const y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i++) {
      const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (k + s1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + k) | 0;
  }
  const digest = new Uint8Array(32);
  for (let i = 0; i < 32; i++) digest[i] = (h[i >> 2] >>> (24 - 8 * (i & 3))) & 255;
  return digest;
}

/** HMAC-SHA256; key and message are strings (UTF-8) or Uint8Arrays; returns 32 bytes. */
export function hmacSha256(key, message) {
  let keyBytes = asBytes(key);
  if (keyBytes.length > 64) keyBytes = sha256(keyBytes);
  const body = asBytes(message);
  const inner = new Uint8Array(64 + body.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    const byte = i < keyBytes.length ? keyBytes[i] : 0;
    inner[i] = byte ^ 0x36;
    outer[i] = byte ^ 0x5c;
  }
  inner.set(body, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

export function toHex(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Start. On the device the macro starts when it is loaded: last in the file, so that every
// constant above (the SHA-256 table too) is defined before start() runs.

if (xapi.manualStart !== true) {
  start().catch((err) => log(`start failed: ${errorText(err)}`));
}
