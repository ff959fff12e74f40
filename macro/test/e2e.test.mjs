// End to end: the macro on the fake device makes real HTTPS requests to the real connector, which
// signs in to a simulated device, takes its snapshot and asks the real comparison function (local
// engine). The stack comes from `python -m demo serve` in the project's venv.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import https from 'node:https';
import { fileURLToPath } from 'node:url';
import { bootDevice, perform, stopDevice } from '../../demo/drive_macro.mjs';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const PYTHON = fileURLToPath(new URL('../../.venv/bin/python', import.meta.url));
const STARTUP_MS = 90_000;
const noVenv = !existsSync(PYTHON) &&
  `needs the project's Python environment (${PYTHON}): run \`make test\` or \`make demo\` first`;

let holder;
let stack;

/** `python -m demo serve`: the stack stays up while its stdin is open; one JSON line says where. */
function startStack() {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.DEMO_PHOTOS; // the packaged pictures, whose outcomes are known
    holder = spawn(PYTHON, ['-m', 'demo', 'serve'], { cwd: REPO, env, stdio: 'pipe' });
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no stack within ${STARTUP_MS} ms:\n${err}`)),
      STARTUP_MS);
    holder.stderr.on('data', (chunk) => { err += chunk; });
    holder.stdout.on('data', (chunk) => {
      out += chunk;
      const newline = out.indexOf('\n');
      if (newline >= 0) {
        clearTimeout(timer);
        resolve(JSON.parse(out.slice(0, newline)));
      }
    });
    holder.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`python -m demo serve exited with ${code}:\n${err}`));
    });
  });
}

/** Put a picture in front of the simulated camera (its control API, TLS checked). */
function showCamera(images) {
  const sim = stack.simulator;
  const body = JSON.stringify({ images, black: false, no_option_key: false });
  return new Promise((resolve, reject) => {
    const request = https.request(sim.control_url, {
      method: 'POST',
      ca: readFileSync(sim.ca),
      headers: { [sim.control_header]: sim.control_token, 'Content-Type': 'application/json' },
    }, (response) => {
      response.resume();
      response.on('end', () => (response.statusCode === 200
        ? resolve()
        : reject(new Error(`simulator control answered ${response.statusCode}`))));
    });
    request.on('error', reject);
    request.end(body);
  });
}

before(async () => {
  if (noVenv) return;
  stack = await startStack();
  console.log = () => {}; // the macro's console
  // The connector's certificate is self-signed: the device needs AllowInsecureHTTPS for it.
  await bootDevice({
    connectorUrls: [stack.connector.url],
    deviceKey: stack.device.key,
    serial: stack.device.serial,
    allowInsecureHttps: true,
  });
}, { timeout: STARTUP_MS + 10_000 });

after(async () => {
  stopDevice();
  if (!holder || holder.exitCode !== null) return;
  const exited = new Promise((resolve) => holder.once('exit', resolve));
  holder.stdin.end(); // it stops every process it started
  const timer = setTimeout(() => holder.kill('SIGTERM'), 20_000);
  await exited;
  clearTimeout(timer);
});

test('the enrolled face unlocks the screen', { skip: noVenv }, async () => {
  await showCamera(stack.frames.enrolled);
  const outcome = await perform({ press: 'login' });
  assert.equal(outcome.answer.verdict, 'match');
  assert.equal(outcome.screen.lock, 'unlocked');
  assert.equal(outcome.screen.alert, `Welcome, ${stack.device.enrolled}`);
  const locked = await perform({ press: 'lock' });
  assert.equal(locked.screen.lock, 'locked');
});

test('another face leaves the screen locked', { skip: noVenv }, async () => {
  await showCamera(stack.frames.others[0]);
  const outcome = await perform({ press: 'login' });
  assert.equal(outcome.answer.verdict, 'no_match');
  assert.equal(outcome.answer.code, 'not_recognized');
  assert.equal(outcome.screen.lock, 'locked');
  assert.equal(outcome.screen.alert, 'Face not recognised. The screen stays locked.');
});
