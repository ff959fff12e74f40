/**
 * Shared test setup: a factory-fresh fake device with HttpClient on, a connector double with a
 * device key made at run time, and the macro started against it (fake timers and clock by default).
 */
import './register-xapi.mjs';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import xapi, { fake } from './fake-xapi.mjs';
import { ConnectorDouble } from './connector-double.mjs';
import { MACRO_MARK } from './xapi-hook.mjs';

export { fake, xapi };

export const MACRO_FILE = new URL('../faceid.js', import.meta.url);
export const NOW_MS = Date.UTC(2026, 0, 15, 9, 0, 0);
export const SERIAL = 'FOC1234X5YZ';
export const CONNECTOR_URL = 'https://connector.test:8443';

/**
 * The macro module; a new `instance` tag gives a fresh copy, as a runtime restart does. `file`
 * (a path or file URL) loads another copy, e.g. one as `admin provision` pushed it; wherever it
 * lies, its `import xapi from 'xapi'` gets the fake device (register-xapi.mjs).
 */
export function importMacro(instance = '', file = MACRO_FILE) {
  const url = file instanceof URL ? new URL(file.href) : pathToFileURL(file);
  url.search = new URLSearchParams({ [MACRO_MARK]: instance }).toString();
  return import(url.href);
}

/** A device key: 32 random bytes (SETTINGS.deviceKey is their base64url). */
export function makeKey() {
  return randomBytes(32);
}

/** Let pending promise chains and fake-device callbacks run to completion. */
export async function settle(rounds = 20) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Advance the fake clock step by step so async work between timers runs as it would. */
export async function advance(t, ms, step = 1000) {
  for (let done = 0; done < ms; done += step) {
    t.mock.timers.tick(Math.min(step, ms - done));
    await settle(5);
  }
}

let shifted = null; // {offsetMs} while a test has moved the wall clock with shiftClock()

/**
 * Move the device's wall clock by `ms` (either way) and not its timers, as an NTP step does: the
 * runtime's timers count elapsed time. Node's mock timers move both with setTime(), so Date is
 * wrapped with an offset instead (on top of the fake clock), undone after the test.
 */
export function shiftClock(t, ms) {
  if (shifted === null) {
    const Base = globalThis.Date;
    const offset = { offsetMs: 0 };
    class Shifted extends Base {
      constructor(...args) {
        super(...(args.length === 0 ? [Base.now() + offset.offsetMs] : args));
      }

      static now() {
        return Base.now() + offset.offsetMs;
      }
    }
    globalThis.Date = Shifted;
    shifted = offset;
    t.after(() => {
      if (globalThis.Date === Shifted) globalThis.Date = Base;
      shifted = null;
    });
  }
  shifted.offsetMs += ms;
}

/**
 * Factory-reset the fake device, switch HttpClient on, start the macro with a connector double.
 * options: {settings, fakeTimers = true, prepare(fake, connector)}; prepare runs before the
 * macro starts.
 */
export async function boot(t, { settings = {}, fakeTimers = true, prepare } = {}) {
  const macro = await importMacro();
  macro.stop();
  fake.reset();
  if (!console.log.mock) t.mock.method(console, 'log', () => {}); // a test may collect the log
  if (fakeTimers) {
    t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: NOW_MS });
  }
  fake.setConfig('HttpClient Mode', 'On');
  const key = makeKey();
  const connector = new ConnectorDouble({ key, serial: SERIAL });
  fake.http.route((request) => connector.handle(request));
  if (prepare) await prepare(fake, connector);
  await macro.start({
    connectorUrls: [CONNECTOR_URL], deviceKey: connector.deviceKey, ...settings,
  });
  await settle();
  t.after(() => macro.stop());
  return { macro, connector, key };
}

export function tap(panelId) {
  fake.emit('UserInterface Extensions Panel Clicked', { PanelId: panelId });
}

/** What a person at the device sees that matters for the lock. */
export function screen() {
  return {
    hideAll: fake.configValue('UserInterface Features HideAll'),
    settingsMenu: fake.configValue('UserInterface SettingsMenu Visibility'),
    panels: fake.visiblePanels().sort(),
    alert: fake.lastAlert(),
  };
}

export const LOCKED = {
  hideAll: 'True', settingsMenu: 'Hidden', panels: ['faceid_code', 'faceid_login'],
};
export const UNLOCKED = {
  hideAll: 'False', settingsMenu: 'Auto', panels: ['faceid_enroll', 'faceid_logout'],
};
/** Unlocked by an unlock code: no "Update my photo", the connector opened no session for it. */
export const UNLOCKED_BY_CODE = {
  hideAll: 'False', settingsMenu: 'Auto', panels: ['faceid_logout'],
};

export function lockState() {
  const { hideAll, settingsMenu, panels } = screen();
  return { hideAll, settingsMenu, panels };
}

/** Tap "Unlock with my face" and wait for the outcome. */
export async function tapLogin() {
  tap('faceid_login');
  await settle();
}

/** Tap login and wait (real time, real network) until the macro has shown an answer. */
export async function loginOverNetwork() {
  const before = fake.commandsTo('UserInterface Message Alert Display').length;
  tap('faceid_login');
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    const alerts = fake.commandsTo('UserInterface Message Alert Display').slice(before);
    if (alerts.some((alert) => alert.args.Duration > 0) && fake.http.inFlight === 0) return;
  }
  throw new Error('no answer shown within 2 s');
}
