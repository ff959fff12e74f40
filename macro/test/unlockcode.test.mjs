// "Use a code": an administrator's one-time code (`admin unlock-code`) opens the screen with no
// network. Checked by the macro alone, once per code, with waits after wrong codes; each use and
// each wait is reported to the connector until it acknowledges them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes, randomInt } from 'node:crypto';
import {
  advance, boot, fake, importMacro, lockState, settle, shiftClock, tap, LOCKED, NOW_MS, SERIAL,
  UNLOCKED_BY_CODE,
} from '../testing/harness.mjs';
import { down } from '../testing/connector-double.mjs';

const macro = await importMacro();
const { MESSAGES, PANELS } = macro;

const STEP_S = 300;
const CODE_FEEDBACK_ID = 'faceid_unlock_code';
const EVENTS = '/v1/code-events';

/** The contract's construction, written with Node's crypto (connector/unlockcode.py's twin). */
function nodeCode(key, serial, step) {
  const mac = createHmac('sha256', key).update(`FACEID-UNLOCK-CODE-V1\n${serial}\n${step}`)
    .digest();
  return String((mac.readUInt32BE(mac[31] & 0x0f) & 0x7fffffff) % 1e8).padStart(8, '0');
}

const nowS = () => Math.floor(Date.now() / 1000);
/** The step an `admin unlock-code --minutes N` issued now ends in. */
const stepFor = (minutes, at = nowS()) => Math.ceil((at + minutes * 60) / STEP_S);

async function enterCode(text) {
  fake.emit('UserInterface Message TextInput Response',
    { FeedbackId: CODE_FEEDBACK_ID, Text: text });
  await settle(40);
}

/** A code for this device that is valid now, for `minutes` (default 10, as the connector's). */
function goodCode(key, minutes = 10) {
  return macro.unlockCode(key, SERIAL, stepFor(minutes));
}

/** A random code that is right for no step of the window (a wrong guess). */
function wrongCode(key) {
  const { first, last } = macro.codeSteps(nowS());
  const valid = new Set();
  for (let step = first; step <= last; step++) valid.add(macro.unlockCode(key, SERIAL, step));
  for (;;) {
    const guess = String(randomInt(1e8)).padStart(8, '0');
    if (!valid.has(guess)) return guess;
  }
}

const alerts = () => fake.commandsTo('UserInterface Message Alert Display')
  .map((entry) => entry.args.Text);
const eventPosts = () => fake.http.requests.filter((request) => request.path === EVENTS);

test('the codes agree with the contract vectors (key: the bytes 0 to 31)', () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => i);
  const vectors = [['FOC2211X0AB', 5900000, '58420136'], ['FOC2211X0AB', 5900001, '71758818'],
    ['SIM-0001', 0, '61725422'], ['DEMO-0001', 6000000, '01558037']];
  for (const [serial, step, code] of vectors) {
    assert.equal(macro.unlockCode(key, serial, step), code, `${serial} ${step}`);
  }
});

test('the macro\'s codes agree with Node crypto over random keys, serials and steps', () => {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
  for (let i = 0; i < 300; i++) {
    const key = randomBytes(32);
    const serial = Array.from({ length: randomInt(1, 65) },
      () => alphabet[randomInt(alphabet.length)]).join('');
    const step = randomInt(0, 2 ** 32);
    assert.equal(macro.unlockCode(new Uint8Array(key), serial, step), nodeCode(key, serial, step));
  }
});

test('the window: from the step not yet ended (120 s grace) to 720 min + a step ahead', () => {
  const at = 1767225600; // a step boundary
  assert.deepEqual(macro.codeSteps(at), { first: at / STEP_S, last: at / STEP_S + 145 });
  assert.deepEqual(macro.codeSteps(at + 120), { first: at / STEP_S, last: at / STEP_S + 145 });
  assert.deepEqual(macro.codeSteps(at + 121).first, at / STEP_S + 1);
  assert.equal(macro.codeSteps(at + 180).last, at / STEP_S + 146);
  // Whatever the time, a code issued now for 1 to 720 minutes is inside it.
  for (let s = 0; s < 600; s += 7) {
    const { first, last } = macro.codeSteps(at + s);
    for (const minutes of [1, 10, 720]) {
      const step = stepFor(minutes, at + s);
      assert.ok(step >= first && step <= last, `${s} s, ${minutes} min`);
    }
  }
});

test('a typed code may hold spaces and dashes; anything else than 8 digits is no code', () => {
  assert.equal(macro.cleanCode('1234 5678'), '12345678');
  assert.equal(macro.cleanCode(' 1234-5678 '), '12345678');
  for (const text of ['1234567', '123456789', 'abcdefgh', '１２３４５６７８', '1234.5678', '', null]) {
    assert.equal(macro.cleanCode(text), null, String(text));
  }
});

test('the locked screen offers "Use a code", which asks for a code masked as it is typed',
  async (t) => {
  await boot(t);
  assert.deepEqual(lockState(), LOCKED);
  tap(PANELS.code.id);
  await settle();
  const [input] = fake.commandsTo('UserInterface Message TextInput Display');
  assert.equal(input.args.FeedbackId, CODE_FEEDBACK_ID);
  assert.equal(input.args.InputType, 'PIN');
  assert.equal(input.args.Title, MESSAGES.codeTitle);
  assert.equal(input.args.Text, MESSAGES.codeText);
  });

test('a good code unlocks with no network, without "Update my photo"', async (t) => {
  const { connector, key } = await boot(t);
  fake.http.route(down.refused); // every connector unreachable
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
  assert.equal(fake.lastAlert(), MESSAGES.codeUnlocked);
  assert.equal(connector.verifyCalls().length, 0);
});

test('a code unlocks like a face match: the idle lock and logout work the same', async (t) => {
  const { connector, key } = await boot(t, { settings: { relockIdleSeconds: 60 } });
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
  await advance(t, 61000);
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.idleLocked);
  assert.equal(connector.calls.at(-1).path, '/v1/lock');
  await enterCode(goodCode(key, 20));
  tap(PANELS.logout.id);
  await settle();
  assert.deepEqual(lockState(), LOCKED);
});

test('a code with spaces or dashes, as read aloud, unlocks', async (t) => {
  const { key } = await boot(t);
  const code = goodCode(key);
  await enterCode(`${code.slice(0, 4)} ${code.slice(4)}`);
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
});

test('a code works once: the second use is refused as already used, and not counted wrong',
  async (t) => {
    const { key } = await boot(t);
    const code = goodCode(key);
    await enterCode(code);
    assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
    tap(PANELS.logout.id);
    await settle();
    await enterCode(code);
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.codeUsed);
    assert.equal(macro.codeMemory().wrong, 0);
    await enterCode(goodCode(key, 30));
    assert.deepEqual(lockState(), UNLOCKED_BY_CODE, 'another code still works');
  });

test('wrong codes are counted; the 5th starts a 5-minute wait', async (t) => {
  const { key } = await boot(t);
  const wrong = wrongCode(key);
  for (let tries = 4; tries >= 1; tries--) {
    await enterCode(wrong);
    assert.equal(fake.lastAlert(), `Wrong code. Wrong codes left before a wait: ${tries}.`);
  }
  await enterCode(wrong);
  assert.equal(fake.lastAlert(),
    'Wrong code. Too many wrong codes: try a code again in 5 min.');
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(macro.codeMemory().waitUntilMs, NOW_MS + 300000);
});

test('during a wait nothing is checked, not even a good code; the minutes left are shown',
  async (t) => {
    const { key } = await boot(t);
    const wrong = wrongCode(key);
    for (let i = 0; i < 5; i++) await enterCode(wrong);
    await advance(t, 61000);
    await enterCode(goodCode(key));
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), 'Too many wrong codes. Try a code again in 4 min.');
    await enterCode(wrong);
    assert.equal(macro.codeMemory().wrong, 5, 'not counted either');
    tap(PANELS.code.id);
    await settle();
    assert.equal(fake.commandsTo('UserInterface Message TextInput Display').length, 0,
      'the code dialog is not even offered');
    assert.equal(fake.lastAlert(), 'Too many wrong codes. Try a code again in 4 min.');
    await advance(t, 240000);
    await enterCode(goodCode(key));
    assert.deepEqual(lockState(), UNLOCKED_BY_CODE, 'after the wait a good code works');
  });

test('after a wait each wrong code doubles the wait, up to a day', async (t) => {
  const { key } = await boot(t);
  const wrong = wrongCode(key);
  for (let i = 0; i < 4; i++) await enterCode(wrong);
  const waits = [];
  for (let i = 0; i < 11; i++) {
    await enterCode(wrong);
    waits.push(macro.codeMemory().lastWaitS);
    t.mock.timers.tick(macro.codeMemory().lastWaitS * 1000); // the wait's timer ends it
    await settle(5);
  }
  assert.deepEqual(waits,
    [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, 86400, 86400]);
  assert.equal(macro.codeMemory().wrong, 15);
});

test('a good code after a wait resets the count of wrong codes', async (t) => {
  const { key } = await boot(t);
  const wrong = wrongCode(key);
  for (let i = 0; i < 5; i++) await enterCode(wrong);
  t.mock.timers.tick(299999);
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), LOCKED, 'a millisecond before the wait ends');
  assert.equal(macro.codeMemory().waiting, true);
  t.mock.timers.tick(1);
  assert.equal(macro.codeMemory().waiting, false);
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
  assert.equal(macro.codeMemory().wrong, 0);
  tap(PANELS.logout.id);
  await settle();
  await enterCode(wrongCode(key));
  assert.equal(fake.lastAlert(), 'Wrong code. Wrong codes left before a wait: 4.');
});

test('an expired code is just a wrong code; so is one beyond 720 minutes', async (t) => {
  const { key } = await boot(t);
  const { first, last } = macro.codeSteps(nowS());
  await enterCode(macro.unlockCode(key, SERIAL, first - 1));
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), 'Wrong code. Wrong codes left before a wait: 4.');
  await enterCode(macro.unlockCode(key, SERIAL, last + 1));
  assert.equal(fake.lastAlert(), 'Wrong code. Wrong codes left before a wait: 3.');
  assert.equal(macro.codeMemory().wrong, 2);
});

test('a 10-minute code works until it ends (plus 120 s of clock grace), then not', async (t) => {
  const { key } = await boot(t);
  const step = stepFor(10);
  const code = macro.unlockCode(key, SERIAL, step);
  t.mock.timers.setTime(step * STEP_S * 1000 + 121000);
  await enterCode(code);
  assert.deepEqual(lockState(), LOCKED, 'expired');
  t.mock.timers.setTime(step * STEP_S * 1000 + 120000);
  await enterCode(code);
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE, 'within the grace');
});

test('the longest code, 720 minutes, works at once', async (t) => {
  const { key } = await boot(t);
  await enterCode(goodCode(key, 720));
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
});

test('a code for another device, or made with another key, is wrong', async (t) => {
  const { key } = await boot(t);
  await enterCode(macro.unlockCode(key, 'FOC9999ZZZZ', stepFor(10)));
  assert.deepEqual(lockState(), LOCKED);
  await enterCode(macro.unlockCode(randomBytes(32), SERIAL, stepFor(10)));
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(macro.codeMemory().wrong, 2);
});

test('what is not 8 digits is said so, and not counted', async (t) => {
  await boot(t);
  for (const text of ['1234', 'letters!', '']) {
    await enterCode(text);
    assert.equal(fake.lastAlert(), MESSAGES.codeFormat);
  }
  assert.equal(macro.codeMemory().wrong, 0);
});

test('a macro that is not set up checks no code', async (t) => {
  const { key } = await boot(t, { settings: { deviceKey: '' } });
  tap(PANELS.code.id);
  await settle();
  assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), LOCKED);
  assert.equal(fake.lastAlert(), MESSAGES.notConfigured);
});

test('codes are ignored while unlocked', async (t) => {
  const { key } = await boot(t);
  await enterCode(goodCode(key));
  const shown = alerts().length;
  await enterCode(wrongCode(key));
  assert.equal(alerts().length, shown);
  assert.equal(macro.codeMemory().wrong, 0);
});

test('a use is reported at once, signed, and dropped once acknowledged', async (t) => {
  const { connector, key } = await boot(t);
  const step = stepFor(10);
  await enterCode(macro.unlockCode(key, SERIAL, step));
  const [post] = eventPosts();
  const body = JSON.parse(post.body);
  assert.equal(body.serial, SERIAL);
  assert.equal(body.events.length, 1);
  const [event] = body.events;
  assert.match(event.id, /^[0-9a-f]{16}$/);
  assert.deepEqual({ ...event, id: null },
    { id: null, kind: 'used', expires: step * STEP_S, at: nowS() });
  assert.ok(connector.calls.find((call) => call.path === EVENTS).authenticated);
  assert.deepEqual(connector.codeEvents, body.events);
  assert.deepEqual(macro.codeMemory().pending, []);
  await advance(t, 180000);
  assert.equal(eventPosts().length, 1, 'nothing more to send');
});

test('a wait is reported with its length and the count of wrong codes', async (t) => {
  const { connector, key } = await boot(t);
  const wrong = wrongCode(key);
  for (let i = 0; i < 5; i++) await enterCode(wrong);
  assert.equal(eventPosts().length, 1, 'the four wrong codes before it are not events');
  const [event] = connector.codeEvents;
  assert.deepEqual({ ...event, id: null },
    { id: null, kind: 'wait', wait_s: 300, wrong: 5, at: nowS() });
});

test('events are sent again every 60 s until a signed {"recorded": n} comes back',
  async (t) => {
    const lines = [];
    t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
    const { connector, key } = await boot(t);
    const answers = [
      down.refused,
      down.status(503),
      () => ({ status: 200, body: '{"recorded": 1}' }), // unsigned
      (request) => { // signed, but no count
        connector.tamper = () => ({ serial: SERIAL });
        const reply = connector.handle(request);
        connector.tamper = null;
        return reply;
      },
    ];
    fake.http.route((request) => (request.path === EVENTS && answers.length > 0
      ? answers.shift()(request) : connector.handle(request)));
    await enterCode(goodCode(key));
    assert.equal(eventPosts().length, 1);
    for (let sent = 2; sent <= 4; sent++) {
      await advance(t, 59000);
      assert.equal(eventPosts().length, sent - 1, 'not before 60 s');
      await advance(t, 1000);
      assert.equal(eventPosts().length, sent);
      assert.equal(macro.codeMemory().pending.length, 1, 'kept until acknowledged');
    }
    await advance(t, 60000);
    assert.equal(eventPosts().length, 5);
    assert.deepEqual(macro.codeMemory().pending, []);
    assert.equal(connector.codeEvents.length, 1);
    const ids = eventPosts().map((request) => JSON.parse(request.body).events[0].id);
    assert.equal(new Set(ids).size, 1, 'the same event (id) each time');
    await advance(t, 120000);
    assert.equal(eventPosts().length, 5);
    // The signed answer without a count came after the connector had recorded the event.
    assert.ok(lines.includes('faceid: unlock code events reported (1 sent, 0 new)'), lines);
  });

test('events waiting for a connector are sent right after any signed answer, not 60 s later',
  async (t) => {
    const { connector, key } = await boot(t);
    let connectorsDown = true;
    fake.http.route((request) => (connectorsDown ? down.refused(request)
      : connector.handle(request)));
    await enterCode(goodCode(key));
    assert.equal(macro.codeMemory().pending.length, 1, 'kept: no connector answered');
    tap(PANELS.logout.id);
    await settle();
    connectorsDown = false;
    tap(PANELS.login.id); // the person's face, through a connector that is back
    await settle();
    assert.deepEqual(macro.codeMemory().pending, [], 'sent after the verify, before any timer');
    assert.equal(connector.codeEvents.length, 1);
  });

test('at most 50 events wait for the connector, the oldest dropped; sent 20 at a time',
  async (t) => {
    const { connector, key } = await boot(t);
    fake.http.route(down.refused);
    const { first } = macro.codeSteps(nowS());
    for (let i = 0; i < 52; i++) {
      await enterCode(macro.unlockCode(key, SERIAL, first + i));
      assert.deepEqual(lockState(), UNLOCKED_BY_CODE, `code ${i}`);
      tap(PANELS.logout.id);
      await settle();
    }
    const pending = macro.codeMemory().pending;
    assert.equal(pending.length, 50);
    assert.deepEqual(pending.map((event) => event.expires / STEP_S),
      Array.from({ length: 50 }, (_, i) => first + 2 + i));
    fake.http.route((request) => connector.handle(request));
    await advance(t, 60000);
    await settle(100);
    assert.deepEqual(connector.codeEvents.map((event) => event.id), pending.map((e) => e.id));
    const sizes = eventPosts().map((request) => JSON.parse(request.body).events.length)
      .slice(-3);
    assert.deepEqual(sizes, [20, 20, 10]);
    assert.deepEqual(macro.codeMemory().pending, []);
  });

test('a used code is forgotten once the latest time seen is 2 grace periods past it',
  async (t) => {
    const { key } = await boot(t);
    const step = stepFor(10);
    await enterCode(macro.unlockCode(key, SERIAL, step));
    assert.deepEqual(macro.codeMemory().used, [step]);
    tap(PANELS.logout.id);
    await settle();
    t.mock.timers.setTime(step * STEP_S * 1000 + 240000);
    await enterCode(wrongCode(key));
    assert.deepEqual(macro.codeMemory().used, [step], 'expired, but the clock may go back 120 s');
    t.mock.timers.setTime(step * STEP_S * 1000 + 241000);
    await enterCode(goodCode(key));
    assert.deepEqual(macro.codeMemory().used, [stepFor(10)]);
  });

// The device clock follows NTP, which may be unauthenticated: whoever answers it can move the clock
// either way. shiftClock moves the wall clock and not the timers, as an NTP step does.

test('a clock moved forward does not end a wait: only the wait\'s timer does', async (t) => {
  const { key } = await boot(t);
  const wrong = wrongCode(key);
  for (let i = 0; i < 5; i++) await enterCode(wrong);
  shiftClock(t, 2 * 86400 * 1000); // two days ahead: far past the 5-minute wait on the clock
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), LOCKED);
  assert.match(fake.lastAlert(), /^Too many wrong codes\. Try a code again in \d+ min\.$/);
  assert.equal(macro.codeMemory().wrong, 5, 'nothing checked');
  await advance(t, 299000);
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), LOCKED, 'the timer has not fired yet');
  await advance(t, 1000);
  await enterCode(goodCode(key));
  assert.deepEqual(lockState(), UNLOCKED_BY_CODE, 'the timer ended the wait');
});

test('a clock moved forward (past a used code) and back does not make that code work again',
  async (t) => {
    const { key } = await boot(t);
    const code = goodCode(key);
    await enterCode(code);
    assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
    tap(PANELS.logout.id);
    await settle();
    shiftClock(t, 3600 * 1000); // an hour ahead: the code has expired there
    await enterCode(code);
    assert.equal(fake.lastAlert(), 'Wrong code. Wrong codes left before a wait: 4.');
    shiftClock(t, -3600 * 1000); // back where it was: the code is within its validity again
    await enterCode(code);
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.codeClockBack);
    assert.equal(macro.codeMemory().wrong, 1, 'not counted');
    t.mock.timers.tick(3600 * 1000); // once the clock is back at the latest time seen
    await settle(5);
    await enterCode(code);
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), 'Wrong code. Wrong codes left before a wait: 3.', 'expired');
  });

test('a clock set back more than 120 s refuses every code, counting none; within 120 s not',
  async (t) => {
    const { key } = await boot(t);
    await enterCode(wrongCode(key)); // checked at the time the device had then
    shiftClock(t, -121000);
    await enterCode(goodCode(key));
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.codeClockBack);
    assert.match(MESSAGES.codeClockBack, /clock went back.*try again later or ask your admin/);
    tap(PANELS.code.id);
    await settle();
    assert.equal(fake.commandsTo('UserInterface Message TextInput Display').length, 0,
      'the code dialog is not offered');
    assert.equal(fake.lastAlert(), MESSAGES.codeClockBack);
    assert.equal(macro.codeMemory().wrong, 1);
    shiftClock(t, 1000); // 120 s behind: the grace allows it
    await enterCode(goodCode(key));
    assert.deepEqual(lockState(), UNLOCKED_BY_CODE);
  });

test('a clock set back while nobody typed a code is noticed by the minute reading',
  async (t) => {
    const { key } = await boot(t);
    await advance(t, 10 * 60000); // ten idle minutes: the clock is read every minute
    shiftClock(t, -5 * 60000); // then set back 5 minutes, past the 120 s grace
    await enterCode(goodCode(key));
    assert.deepEqual(lockState(), LOCKED);
    assert.equal(fake.lastAlert(), MESSAGES.codeClockBack);
  });

test('the typed code is kept nowhere: not in memory, the console or any request', async (t) => {
  const lines = [];
  t.mock.method(console, 'log', (...args) => lines.push(args.join(' ')));
  const { key } = await boot(t);
  const good = goodCode(key);
  const wrong = wrongCode(key);
  await enterCode(`${good.slice(0, 4)} ${good.slice(4)}`);
  tap(PANELS.logout.id);
  await settle();
  for (let i = 0; i < 5; i++) await enterCode(wrong);
  await enterCode(good);
  const kept = [JSON.stringify(macro.codeMemory()), ...lines,
    ...fake.http.requests.map((request) => request.body)].join('\n');
  for (const code of [good, wrong, good.slice(0, 4) + ' ' + good.slice(4)]) {
    assert.ok(!kept.includes(code), `${code} was kept`);
  }
  assert.ok(lines.includes('faceid: unlock code accepted'));
});
