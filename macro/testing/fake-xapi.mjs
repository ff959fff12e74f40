/**
 * A stand-in for the RoomOS `xapi` module that behaves as the device does (REFERENCE.md §2),
 * failure cases included, so the macro can run unchanged under Node.
 *
 * The default export is what the macro imports; `fake` is the test's side of the device:
 * it records commands and configuration changes, holds statuses, emits events, and answers
 * HttpClient Post either from an in-process handler or over the real network.
 */
import http from 'node:http';
import https from 'node:https';

const CONFIG_DEFAULTS = {
  'UserInterface Features HideAll': ['False', ['True', 'False']],
  'UserInterface SettingsMenu Visibility': ['Auto', ['Auto', 'Hidden']],
  'UserInterface SettingsMenu Mode': ['Unlocked', ['Locked', 'Unlocked']],
  'HttpClient Mode': ['Off', ['On', 'Off']],
  'HttpClient AllowHTTP': ['True', ['True', 'False']],
  'HttpClient AllowInsecureHTTPS': ['False', ['True', 'False']],
  'HttpClient UseHttpProxy': ['On', ['On', 'Off']],
};

// A room device that is not a Desk: no CameraLid status.
const STATUS_DEFAULTS = {
  'SystemUnit Hardware Module SerialNumber': 'FOC1234X5YZ',
  'SystemUnit Software OptionKeys RemoteMonitoring': 'True',
  'SystemUnit State NumberOfActiveCalls': '0',
  'Standby State': 'Off',
};

const COMMANDS = new Set([
  'HttpClient Post',
  'UserInterface Extensions Panel Save',
  'UserInterface Extensions Panel Update',
  'UserInterface Message Alert Display',
  'UserInterface Message Alert Clear',
  'UserInterface Message TextInput Display',
]);

export const NO_CONNECTIONS = 'No available http connections';
const MAX_RESPONSE_BYTES = 1024 * 1024;

/** xapi rejections are Error objects carrying `code` (and `data` for HTTP failures). */
export function xapiError(code, message, data) {
  const err = new Error(message);
  err.code = code;
  if (data !== undefined) err.data = data;
  return err;
}

const noMatch = () => xapiError(3, 'No match on address expression');
const badParams = (why) => xapiError(4, `Invalid or missing parameters: ${why}`);

function later(fn) {
  Promise.resolve().then(fn);
}

function nest(parts, value) {
  return parts.reduceRight((inner, key) => ({ [key]: inner }), value);
}

function parseHeaders(lines) {
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw badParams(`header "${line}"`);
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return headers;
}

/** headers: an object, or [name, value] pairs (a repeated header stays repeated, as on RoomOS). */
function headerList(headers) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  return pairs.map(([Key, value]) => ({ Key, Value: String(value) }));
}

function rawHeaderPairs(raw) {
  const pairs = [];
  for (let i = 0; i < raw.length; i += 2) pairs.push([raw[i], raw[i + 1]]);
  return pairs;
}

/** A real request from this machine, as the device's HTTP client would make it. */
function networkRequest(request, { insecure, timeoutS }) {
  return new Promise((resolve) => {
    const url = new URL(request.url);
    const client = url.protocol === 'https:' ? https : http;
    const outgoing = client.request(url, {
      method: request.method,
      headers: request.headers,
      rejectUnauthorized: !insecure,
      agent: false,
    }, (response) => {
      const chunks = [];
      let size = 0;
      response.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) outgoing.destroy(new Error('Response body too large'));
        else chunks.push(chunk);
      });
      response.on('end', () => resolve({
        status: response.statusCode,
        headers: rawHeaderPairs(response.rawHeaders),
        body: Buffer.concat(chunks).toString('utf8'),
      }));
    });
    outgoing.setTimeout(timeoutS * 1000, () => outgoing.destroy(new Error('Timeout')));
    outgoing.on('error', (err) => resolve({ reject: { code: 1, message: err.message } }));
    outgoing.end(request.body);
  });
}

class FakeHttpClient {
  constructor(device) {
    this.device = device;
    this.reset();
  }

  reset() {
    this.handler = () => ({ reject: { code: 1, message: 'Could not resolve host' } });
    this.network = false;
    /** 'object': err.data.StatusCode; 'json': err.data is a JSON string (older releases). */
    this.rejectionForm = 'object';
    this.maxConnections = 1;
    this.inFlight = 0;
    this.maxInFlight = 0;
    this.requests = [];
  }

  /** Answer requests in-process: handler(request) → {status, headers?, body} | {reject}. */
  route(handler) {
    this.handler = handler;
    this.network = false;
  }

  /** Make real HTTP(S) requests with Node, honouring AllowInsecureHTTPS as the device does. */
  useNetwork() {
    this.network = true;
  }

  async post(args, body) {
    const {
      Url, Header = [], AllowInsecureHTTPS = 'False', ResultBody = 'None', Timeout = 30,
    } = args;
    if (typeof Url !== 'string' || Url.length > 2048 || !/^https?:\/\//.test(Url)) {
      throw badParams('Url');
    }
    if (!Array.isArray(Header) || Header.length > 20) throw badParams('Header');
    if (!['True', 'False'].includes(AllowInsecureHTTPS)) throw badParams('AllowInsecureHTTPS');
    if (!['None', 'PlainText', 'Base64'].includes(ResultBody)) throw badParams('ResultBody');
    if (!Number.isInteger(Timeout) || Timeout < 1 || Timeout > 30) throw badParams('Timeout');
    const headers = parseHeaders(Header);
    const config = (path) => this.device.configValue(path);
    // The wording of these two refusals on a real device is not documented.
    if (config('HttpClient Mode') !== 'On') throw xapiError(1, 'HttpClient is disabled');
    if (Url.startsWith('http:') && config('HttpClient AllowHTTP') !== 'True') {
      throw xapiError(1, 'HTTP is not allowed');
    }
    if (this.inFlight >= this.maxConnections) throw xapiError(1, NO_CONNECTIONS);
    const request = {
      method: 'POST', url: Url, path: new URL(Url).pathname, headers, body: body ?? '',
    };
    this.requests.push({ ...request, params: args });
    this.inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    let timer;
    try {
      const insecure = AllowInsecureHTTPS === 'True' &&
        config('HttpClient AllowInsecureHTTPS') === 'True';
      const answer = this.network
        ? networkRequest(request, { insecure, timeoutS: Timeout })
        : Promise.resolve().then(() => this.handler(request));
      const timeout = new Promise((resolve) => {
        const expired = { reject: { code: 1, message: 'Timeout' } };
        timer = setTimeout(() => resolve(expired), Timeout * 1000);
      });
      const reply = await Promise.race([answer, timeout]);
      if (reply.reject) {
        const { code = 1, message, data } = reply.reject;
        throw xapiError(code, message, data);
      }
      const status = reply.status ?? 200;
      const Headers = headerList(reply.headers ?? { 'content-type': 'application/json' });
      if (status < 200 || status > 299) {
        const data = { StatusCode: String(status), Headers };
        throw xapiError(1, 'Unknown error',
          this.rejectionForm === 'json' ? JSON.stringify(data) : data);
      }
      const text = typeof reply.body === 'string' ? reply.body : JSON.stringify(reply.body ?? '');
      const result = { status: 'OK', StatusCode: String(status), Headers };
      if (ResultBody === 'PlainText') result.Body = text;
      if (ResultBody === 'Base64') result.Body = Buffer.from(text, 'utf8').toString('base64');
      return result;
    } finally {
      clearTimeout(timer);
      this.inFlight -= 1;
    }
  }
}

class FakeDevice {
  constructor() {
    this.http = new FakeHttpClient(this);
    this.reset();
  }

  /** Factory state: default configuration and statuses, no panels, nothing recorded. */
  reset() {
    this.configs = new Map(Object.entries(CONFIG_DEFAULTS).map(([path, [value]]) => [path, value]));
    this.statuses = new Map(Object.entries(STATUS_DEFAULTS));
    this.statusErrors = new Map();
    this.listeners = [];
    this.commands = [];
    this.configLog = [];
    /** What the macro did, in order: {kind: 'command' | 'config', path, args | value}. */
    this.actions = [];
    /** (path, args) → milliseconds the device takes before applying a command (0: at once). */
    this.commandLatency = () => 0;
    this.panels = new Map();
    this.http.reset();
  }

  // --- what the macro reaches through xapi -----------------------------------------------

  async command(path, args = {}, body = undefined) {
    this.commands.push({ path, args, body });
    this.actions.push({ kind: 'command', path, args });
    const latency = this.commandLatency(path, args);
    if (latency > 0) await new Promise((resolve) => setTimeout(resolve, latency));
    if (!COMMANDS.has(path)) throw noMatch();
    if (path === 'HttpClient Post') return this.http.post(args, body);
    if (path === 'UserInterface Extensions Panel Save') {
      if (!args.PanelId || typeof body !== 'string') throw badParams('PanelId and XML body');
      const previous = this.panels.get(args.PanelId);
      this.panels.set(args.PanelId, { xml: body, visibility: previous?.visibility ?? 'Auto' });
    } else if (path === 'UserInterface Extensions Panel Update') {
      const panel = this.panels.get(args.PanelId);
      if (!panel) throw xapiError(1, `No panel with PanelId ${args.PanelId}`);
      if (args.Visibility !== undefined) {
        if (!['Auto', 'Hidden'].includes(args.Visibility)) throw badParams('Visibility');
        panel.visibility = args.Visibility;
      }
    } else {
      for (const key of ['Title', 'Text']) {
        if (args[key] !== undefined && String(args[key]).length > 255) throw badParams(key);
      }
    }
    return { status: 'OK' };
  }

  async getConfig(path) {
    if (!this.configs.has(path)) throw noMatch();
    return this.configs.get(path);
  }

  async setConfigFromMacro(path, value) {
    this.actions.push({ kind: 'config', path, value });
    this.assignConfig(path, value);
  }

  async getStatus(path) {
    if (this.statusErrors.has(path)) throw this.statusErrors.get(path);
    if (!this.statuses.has(path)) throw noMatch();
    return this.statuses.get(path);
  }

  listen(kind, parts, callback, once) {
    const entry = { kind, parts, callback, once };
    this.listeners.push(entry);
    return () => {
      this.listeners = this.listeners.filter((other) => other !== entry);
    };
  }

  // --- the test's side ----------------------------------------------------------------------

  configValue(path) {
    return this.configs.get(path);
  }

  /** An administrator (or another API client) changes a configuration. */
  setConfig(path, value) {
    this.assignConfig(path, value);
  }

  status(path) {
    return this.statuses.get(path);
  }

  setStatus(path, value) {
    this.statusErrors.delete(path);
    const changed = this.statuses.get(path) !== value;
    this.statuses.set(path, value);
    if (changed) this.fire('Status', path, value);
  }

  /** Make `xStatus <path>` reject, e.g. with xapiError(3, ...) as a non-Desk device does. */
  failStatus(path, error) {
    this.statusErrors.set(path, error);
  }

  /** An event as the device (or any API client with the User role) would raise it. */
  emit(path, payload) {
    this.fire('Event', path, payload);
  }

  /** What a runtime restart does to subscriptions. */
  dropListeners() {
    this.listeners = [];
  }

  listenerCount() {
    return this.listeners.length;
  }

  commandsTo(path) {
    return this.commands.filter((entry) => entry.path === path);
  }

  lastAlert() {
    const alerts = this.commandsTo('UserInterface Message Alert Display');
    return alerts.length ? alerts[alerts.length - 1].args.Text : undefined;
  }

  visiblePanels() {
    return [...this.panels].filter(([, panel]) => panel.visibility === 'Auto').map(([id]) => id);
  }

  // --- internals ------------------------------------------------------------------------------

  assignConfig(path, value) {
    const known = CONFIG_DEFAULTS[path];
    if (!known) throw noMatch();
    if (!known[1].includes(value)) throw badParams(`${path}: ${value}`);
    this.configLog.push({ path, value });
    const changed = this.configs.get(path) !== value;
    this.configs.set(path, value);
    if (changed) this.fire('Config', path, value);
  }

  fire(kind, path, value) {
    const parts = path.split(' ');
    for (const entry of [...this.listeners]) {
      if (entry.kind !== kind || entry.parts.length > parts.length) continue;
      if (!entry.parts.every((part, i) => part === parts[i])) continue;
      if (entry.once) this.listeners = this.listeners.filter((other) => other !== entry);
      later(() => entry.callback(nest(parts.slice(entry.parts.length), value)));
    }
  }
}

export const fake = new FakeDevice();

function node(kind, parts) {
  return new Proxy(function xapiNode() {}, {
    get(_target, prop) {
      if (typeof prop !== 'string' || prop === 'then') return undefined;
      const path = parts.join(' ');
      if (prop === 'get' && kind === 'Config') return () => fake.getConfig(path);
      if (prop === 'get' && kind === 'Status') return () => fake.getStatus(path);
      if (prop === 'set' && kind === 'Config') {
        return (value) => fake.setConfigFromMacro(path, value);
      }
      if ((prop === 'on' || prop === 'once') && kind !== 'Command') {
        return (callback) => fake.listen(kind, parts, callback, prop === 'once');
      }
      return node(kind, [...parts, prop]);
    },
    apply(_target, _this, args) {
      if (kind !== 'Command') {
        throw new TypeError(`xapi.${kind}.${parts.join('.')} is not a command`);
      }
      return fake.command(parts.join(' '), args[0], args[1]);
    },
  });
}

const xapi = {
  Command: node('Command', []),
  Config: node('Config', []),
  Status: node('Status', []),
  Event: node('Event', []),
  /** Read by the macro: under Node the test decides when to call start(overrides). */
  manualStart: true,
};

export default xapi;
