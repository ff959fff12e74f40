/** Module resolution hook: the bare specifier 'xapi' (RoomOS only) resolves to the fake device. */
const FAKE_XAPI = new URL('./fake-xapi.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'xapi') return { url: FAKE_XAPI, shortCircuit: true };
  return nextResolve(specifier, context);
}
