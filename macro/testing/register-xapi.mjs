/**
 * Import this before importing the macro: from then on `import xapi from 'xapi'` in faceid.js
 * gets testing/fake-xapi.mjs, the same module instance the test imports directly.
 */
import { register } from 'node:module';

register('./xapi-hook.mjs', import.meta.url);
