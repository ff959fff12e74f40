/**
 * Import this before importing the macro: from then on `import xapi from 'xapi'` in faceid.js (or
 * in any copy of it that harness importMacro loads) gets testing/fake-xapi.mjs, the same module
 * instance the test imports directly (xapi-hook.mjs).
 */
import { register } from 'node:module';

register('./xapi-hook.mjs', import.meta.url);
