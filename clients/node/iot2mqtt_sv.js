'use strict';
/**
 * Client for the iot2mqtt-sv bridge socket (Node.js standard library only).
 *
 * Connects to $IOT2MQTT_SV_BRIDGE_SOCKET (default /run/iot2mqtt-sv/bridge.sock), speaks the
 * newline-delimited JSON protocol of docs/protocol.md, reconnects with backoff when the bridge
 * restarts (re-sending hello and subscriptions; messages written while disconnected are queued),
 * and calls your handlers for cmd, get, meta_request and message.
 *
 *   const { Client } = require('./iot2mqtt_sv');
 *   const client = new Client({
 *     devices: ['lamp1'],
 *     onCommand: async (cmd) => { await setDevice(cmd.device_id, cmd.values); return { ok: 1 }; },
 *   });
 *   client.connect();
 *   client.state('lamp1', { on: true, online: true });
 *   client.ready();
 *
 * A handler's return value becomes a cmd_result "success"; a thrown error (or rejected promise)
 * becomes "error". Refused requests go to onError (default: console.error).
 */

const net = require('net');

const DEFAULT_SOCKET = '/run/iot2mqtt-sv/bridge.sock';

class Client {
  constructor(opts = {}) {
    this.path = opts.path || process.env.IOT2MQTT_SV_BRIDGE_SOCKET || DEFAULT_SOCKET;
    this.devices = opts.devices;
    this.meta = !!opts.meta;
    this.onCommand = opts.onCommand;
    this.onGet = opts.onGet;
    this.onMetaRequest = opts.onMetaRequest;
    this.onMessage = opts.onMessage;
    this.onError = opts.onError || ((reply) => console.error('iot2mqtt_sv:', JSON.stringify(reply)));
    this.subs = [];
    this.queue = [];
    this.nextId = 0;
    this.sock = null;
    this.connected = false;
    this.closed = false;
    this.delay = 100;
    this.buf = '';
  }

  connect() {
    const sock = net.createConnection(this.path);
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      this.connected = true;
      this.delay = 100;
      const hello = { op: 'hello', meta: this.meta };
      if (this.devices !== undefined) hello.devices = this.devices;
      this._write(hello);
      for (const topic of this.subs) this._write({ op: 'subscribe', topic });
      const pending = this.queue;
      this.queue = [];
      for (const msg of pending) this._write(msg);
    });
    sock.on('data', (chunk) => {
      this.buf += chunk;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        let msg;
        try {
          msg = JSON.parse(line);
        } catch (_) {
          continue;
        }
        this._dispatch(msg);
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.connected = false;
      this.buf = '';
      if (this.closed) return;
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 5000);
    });
    return this;
  }

  close() {
    this.closed = true;
    if (this.sock) this.sock.end();
  }

  _write(msg) {
    this.nextId += 1;
    const line = JSON.stringify(Object.assign({}, msg, { id: this.nextId })) + '\n';
    this.sock.write(line);
    return this.nextId;
  }

  _send(msg) {
    if (!this.connected) {
      this.queue.push(msg);
      return null;
    }
    return this._write(msg);
  }

  state(deviceId, state, replace = false) {
    return this._send({ op: 'state', device_id: deviceId, state, replace });
  }

  event(deviceId, event, data = null) {
    return this._send({ op: 'event', device_id: deviceId, event, data });
  }

  error(deviceId, errorCode, message, severity = 'error', retryInfo = undefined) {
    const msg = { op: 'error', device_id: deviceId, error_code: errorCode, message, severity };
    if (retryInfo !== undefined) msg.retry_info = retryInfo;
    return this._send(msg);
  }

  discovered(devices) {
    return this._send({ op: 'discovered', devices });
  }

  // Adds or replaces a Home Assistant discovery config; config null removes it.
  haDiscovery(deviceId, component, config, entity = undefined) {
    const msg = { op: 'ha_discovery', device_id: deviceId, component, config };
    if (entity !== undefined) msg.entity = entity;
    return this._send(msg);
  }

  telemetry(deviceId, metrics) {
    return this._send({ op: 'telemetry', device_id: deviceId, metrics });
  }

  devicesList(devices) {
    return this._send({ op: 'devices_list', devices });
  }

  cmdResult(deviceId, cmdId, status, { result, error } = {}) {
    const msg = { op: 'cmd_result', device_id: deviceId, cmd_id: cmdId, status };
    if (result !== undefined) msg.result = result;
    if (error !== undefined) msg.error = error;
    return this._send(msg);
  }

  ready() {
    return this._send({ op: 'ready' });
  }

  publish(topic, payload, { qos, retain = false } = {}) {
    const msg = { op: 'publish', topic, payload, retain };
    if (qos !== undefined) msg.qos = qos;
    return this._send(msg);
  }

  subscribe(topic) {
    this.subs.push(topic);
    return this._send({ op: 'subscribe', topic });
  }

  _dispatch(msg) {
    switch (msg.op) {
      case 'cmd':
        if (!this.onCommand) return;
        Promise.resolve()
          .then(() => this.onCommand(msg))
          .then(
            (result) => this.cmdResult(msg.device_id, msg.cmd_id, 'success', { result: result === undefined ? null : result }),
            (err) => this.cmdResult(msg.device_id, msg.cmd_id, 'error', { error: String(err && err.message ? err.message : err) }),
          );
        break;
      case 'get':
        if (this.onGet) this.onGet(msg);
        break;
      case 'meta_request':
        if (this.onMetaRequest) this.onMetaRequest(msg);
        break;
      case 'message':
        if (this.onMessage) this.onMessage(msg);
        break;
      case 'error':
        this.onError(msg);
        break;
      default:
        break;
    }
  }
}

module.exports = { Client, DEFAULT_SOCKET };
