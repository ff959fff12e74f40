/**
 * What `admin provision` does to faceid.js before it saves it on a device: it replaces each line
 * `  key: <literal>,` of the settings below by the same line with a JSON literal. Tests write such
 * a copy to run the macro exactly as pushed.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MACRO_FILE } from './harness.mjs';

export const PROVISIONED_KEYS = ['connectorUrls', 'deviceKey', 'allowInsecureHttps',
  'allowPlainHttp', 'relockIdleSeconds', 'pushId'];
/** The lines `admin provision` replaces: the pattern it uses. */
export const PROVISIONED_LINE = new RegExp(`^  (${PROVISIONED_KEYS.join('|')}): .*,$`, 'gm');

/** The macro's source with these settings written in, as `admin provision` writes them. */
export function provision(values, source = readFileSync(MACRO_FILE, 'utf8')) {
  return source.replace(PROVISIONED_LINE,
    (_line, key) => `  ${key}: ${JSON.stringify(values[key])},`);
}

/** A provisioned copy in a fresh temporary folder (no package.json), removed after test `t`. */
export function writeProvisioned(t, values) {
  const folder = mkdtempSync(join(tmpdir(), 'faceid-pushed-'));
  t.after(() => rmSync(folder, { recursive: true, force: true }));
  const file = join(folder, 'faceid.js');
  writeFileSync(file, provision(values));
  return file;
}
