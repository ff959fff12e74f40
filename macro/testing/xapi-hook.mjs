/**
 * Module resolution hook: the bare specifier 'xapi' (RoomOS only) resolves to the fake device, and
 * a URL carrying MACRO_MARK in its query (harness importMacro) loads as an ES module, as RoomOS
 * loads a macro, even from a folder without a `"type": "module"` package.json.
 */
const FAKE_XAPI = new URL('./fake-xapi.mjs', import.meta.url).href;
export const MACRO_MARK = 'faceid-macro';

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'xapi') return { url: FAKE_XAPI, shortCircuit: true };
  const resolved = await nextResolve(specifier, context);
  if (!new URL(resolved.url).searchParams.has(MACRO_MARK)) return resolved;
  return { ...resolved, format: 'module' };
}
