/**
 * The real macro (macro/faceid.js, or a copy exactly as `admin provision` pushed it) on the fake
 * device of macro/testing, its HttpClient making real HTTP(S) requests to a running connector: what
 * a person at the device would see, step by step.
 *
 * As a script (used by `python -m demo`): the first stdin line is the device:
 * - `{"serial", "connectorUrls": [url, ...], "deviceKey", "allowInsecureHttps"}` runs
 *   macro/faceid.js with these settings (over whatever its SETTINGS say);
 * - `{"serial", "macroPath": "/abs/path/faceid.js", "allowInsecureHttps"}` runs that file with NO
 *   settings given: it runs on the SETTINGS written in it (connectorUrls, deviceKey, pushId...), as
 *   on the device; connectorUrls and deviceKey may be left out (and are ignored if given).
 *   allowInsecureHttps (default false) is then only the device's
 *   `xConfiguration HttpClient AllowInsecureHTTPS`.
 * It answers `{"ready": true, "screen", "report": {"http", "answer"}}` once the macro has locked
 * the screen and reported in (its signed POST /v1/status; `http.error` or a non-200 status when
 * that failed). Each further line is one action `{"press": "login" | "lock" | "enroll" | "code"}`,
 * `{"type": "Name"}` (the name asked for by "Update my photo") or `{"code": "1234 5678"}` (an
 * unlock code typed into "Use a code", checked by the macro with no network). One JSON line
 * answers each: what the screen shows afterwards, the connector answer behind it (`http.url`
 * names the connector that gave it) and how long it took. The macro's
 * console goes to stderr. The connector's certificate is checked against Node's CA list: start it
 * with NODE_EXTRA_CA_CERTS=<its CA>.
 *
 * As a module (used by macro/test/e2e.test.mjs): `bootDevice(settings)` then `perform(action)`.
 */
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import {
  fake, importMacro, lockState, LOCKED, UNLOCKED, UNLOCKED_BY_CODE,
} from '../macro/testing/harness.mjs';

const bundled = await importMacro();
/** The macro running now: the bundled one, or the copy named by macroPath. */
let macro = bundled;
const ACTION_TIMEOUT_MS = 60_000;
const POLL_MS = 5;

/** Every HttpClient Post the macro made: connector, path, status, X-Request-Id, body, duration. */
const exchanges = [];

function header(headers, name) {
  const found = (headers || []).find((entry) => entry.Key.toLowerCase() === name);
  return found ? found.Value : null;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Wrap the fake device's HttpClient to see what the macro receives, without changing it. */
function recordExchanges() {
  const post = fake.http.post.bind(fake.http);
  fake.http.post = async (args, body) => {
    const started = performance.now();
    const { origin, pathname } = new URL(args.Url);
    const entry = { url: origin, path: pathname, done: false };
    exchanges.push(entry);
    try {
      const result = await post(args, body);
      Object.assign(entry, {
        status: Number(result.StatusCode),
        requestId: header(result.Headers, 'x-request-id'),
        body: parseJson(result.Body),
      });
      return result;
    } catch (err) {
      const data = typeof err.data === 'string' ? parseJson(err.data) : err.data;
      Object.assign(entry, {
        status: data ? Number(data.StatusCode) : null,
        requestId: data ? header(data.Headers, 'x-request-id') : null,
        error: err.message,
      });
      throw err;
    } finally {
      entry.ms = Math.round((performance.now() - started) * 10) / 10;
      entry.done = true;
    }
  };
}

let wrapped = false;

/**
 * A factory-fresh device with HttpClient on, the given serial, real network, and a macro started:
 * macro/faceid.js with {connectorUrls, deviceKey (base64url), allowInsecureHttps}, or, given
 * macroPath, that file on its own SETTINGS. Self-signed connectors need both the macro setting and
 * the device configuration, as on RoomOS. Resolves once the macro reported in (or failed to):
 * {http, answer} of its POST /v1/status.
 */
export async function bootDevice({
  connectorUrls, deviceKey, serial, allowInsecureHttps = false, macroPath = null,
}) {
  macro.stop();
  macro = macroPath === null ? bundled : await importMacro('pushed', macroPath);
  fake.reset();
  if (!wrapped) recordExchanges();
  wrapped = true;
  exchanges.length = 0;
  fake.setConfig('HttpClient Mode', 'On');
  if (allowInsecureHttps) fake.setConfig('HttpClient AllowInsecureHTTPS', 'True');
  fake.setStatus('SystemUnit Hardware Module SerialNumber', serial);
  fake.http.useNetwork();
  await macro.start(macroPath === null
    ? { connectorUrls, deviceKey, allowInsecureHttps, requestTimeoutSeconds: 25 }
    : {});
  await until(() => exchanges.every((entry) => entry.done) && exchangeSince(0, '/v1/status'),
    'report-in from the macro (its log says why)');
  return summary(exchangeSince(0, '/v1/status'));
}

export function stopDevice() {
  macro.stop();
}

function alerts() {
  return fake.commandsTo('UserInterface Message Alert Display');
}

/** What a person sees: locked or unlocked, the message on screen, the panels offered. */
export function screenNow() {
  const state = lockState();
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const { PANELS } = macro;
  const locked = same(state, LOCKED) ||
    (state.hideAll === 'True' && state.settingsMenu === 'Hidden' &&
      !state.panels.includes(PANELS.logout.id));
  let lock = 'partly locked';
  if (locked) lock = 'locked';
  else if (same(state, UNLOCKED) || same(state, UNLOCKED_BY_CODE)) lock = 'unlocked';
  return { lock, alert: fake.lastAlert() ?? null, panels: state.panels };
}

/** {http, answer} of one exchange, as the answers to the driver's input show them. */
function summary(exchange) {
  return {
    http: exchange && {
      url: exchange.url,
      path: exchange.path,
      status: exchange.status,
      request_id: exchange.requestId,
      ms: exchange.ms,
      error: exchange.error ?? null,
    },
    answer: exchange && exchange.body,
  };
}

async function until(done, what = 'outcome', timeoutMs = ACTION_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** A message shown for a while (not the "Look at the camera…" progress, shown until replaced). */
function finalAlertSince(count) {
  return alerts().slice(count).some((entry) => entry.args.Duration > 0);
}

/** The last exchange done for `path` since `count`: after a fail-over, the one that answered. */
function exchangeSince(count, path) {
  return exchanges.slice(count).filter((entry) => entry.path === path && entry.done).pop();
}

/**
 * Do what a person does and wait until the screen shows the outcome:
 * {press: 'login' | 'lock' | 'enroll' | 'code'}, {type: name} or {code: digits}. Returns the
 * screen afterwards, the connector answer the macro acted on (if any) and the milliseconds from
 * the tap to the outcome.
 */
export async function perform(action) {
  const { PANELS } = macro;
  const shown = alerts().length;
  const sent = exchanges.length;
  const inputs = fake.commandsTo('UserInterface Message TextInput Display').length;
  const started = performance.now();
  let path = null;
  let done;
  if (action.type !== undefined) {
    path = '/v1/enroll';
    fake.emit('UserInterface Message TextInput Response',
      { FeedbackId: 'faceid_enroll_name', Text: action.type });
    done = () => finalAlertSince(shown);
  } else if (action.code !== undefined) {
    fake.emit('UserInterface Message TextInput Response',
      { FeedbackId: 'faceid_unlock_code', Text: String(action.code) });
    done = () => finalAlertSince(shown);
  } else if (action.press === 'login' || action.press === 'lock') {
    path = action.press === 'login' ? '/v1/verify' : '/v1/lock';
    const panel = action.press === 'login' ? PANELS.login : PANELS.logout;
    fake.emit('UserInterface Extensions Panel Clicked', { PanelId: panel.id });
    // A lock is also reported to the connector after the screen changed: wait for that too.
    done = () => finalAlertSince(shown) && (action.press === 'login' || exchangeSince(sent, path));
  } else if (action.press === 'enroll' || action.press === 'code') {
    fake.emit('UserInterface Extensions Panel Clicked', { PanelId: PANELS[action.press].id });
    // The dialog opens, or (for a code: while wrong codes make the person wait) a message says why.
    done = () => fake.commandsTo('UserInterface Message TextInput Display').length > inputs ||
      finalAlertSince(shown);
  } else {
    throw new Error(`unknown action ${JSON.stringify(action)}`);
  }
  await until(done);
  const ms = Math.round((performance.now() - started) * 10) / 10;
  const exchange = path === null ? null : exchangeSince(sent, path) ?? null;
  const prompt = fake.commandsTo('UserInterface Message TextInput Display').slice(inputs).pop();
  return {
    action,
    screen: screenNow(),
    prompt: prompt ? prompt.args.Text : null,
    ms,
    ...summary(exchange),
  };
}

async function main() {
  console.log = (...args) => process.stderr.write(`${args.join(' ')}\n`);
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  const say = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);
  let booted = false;
  for await (const line of lines) {
    if (!line.trim()) continue;
    try {
      const request = JSON.parse(line);
      if (!booted) {
        const report = await bootDevice(request);
        booted = true;
        say({ ready: true, screen: screenNow(), report });
      } else {
        say(await perform(request));
      }
    } catch (err) {
      say({ error: String((err && err.message) || err) });
    }
  }
  stopDevice();
  process.exit(0);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main();
