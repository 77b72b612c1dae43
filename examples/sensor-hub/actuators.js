'use strict';
// The sensor hub's actuator service (program `actuators`): relay-driven fans.
//
// It handles the fans `gen` assigned to it in $HUB_RUN_DIR/hub.json, talking to MQTT only
// through the bridge. Its HTTP server on 127.0.0.1:$HEALTH_PORT serves only /health, for the
// supervisor's readiness and liveness probes: 200 once the relays are set up and the bridge socket
// is connected, 503 otherwise. No data goes over HTTP.

const fs = require('fs');
const http = require('http');
const path = require('path');
const { Client } = require('iot2mqtt_sv');

const hub = JSON.parse(
  fs.readFileSync(path.join(process.env.HUB_RUN_DIR || '/run/sensor-hub', 'hub.json'), 'utf8'),
);
const fans = hub.handlers.actuators;
const state = Object.fromEntries(fans.map((id) => [id, { on: false, speed: 0, online: true }]));

function apply(deviceId, values) {
  const next = { ...state[deviceId] };
  for (const [key, value] of Object.entries(values)) {
    if (key === 'on' && typeof value === 'boolean') next.on = value;
    else if (key === 'speed' && Number.isInteger(value) && value >= 0 && value <= 3) next.speed = value;
    else throw new Error(`${deviceId}: unsupported value ${key}=${JSON.stringify(value)} (on: bool, speed: 0-3)`);
  }
  // A fan switched on without a speed runs at 1; switched off it stops.
  if (next.on && next.speed === 0) next.speed = 1;
  if (!next.on) next.speed = 0;
  state[deviceId] = next;
  return next;
}

const client = new Client({
  devices: fans,
  onCommand: (cmd) => {
    const next = apply(cmd.device_id, cmd.values);
    client.state(cmd.device_id, next);
    console.log(`actuators: ${cmd.device_id} ${JSON.stringify(cmd.values)}`);
    return next;
  },
  onGet: (msg) => client.state(msg.device_id, state[msg.device_id]),
});
client.connect();
for (const id of fans) client.state(id, state[id]);

const port = Number(process.env.HEALTH_PORT || 18765);
http
  .createServer((req, res) => {
    const healthy = req.url === '/health' && client.connected;
    res.writeHead(req.url === '/health' ? (healthy ? 200 : 503) : 404, {
      'content-type': 'application/json',
    });
    res.end(JSON.stringify({ healthy, fans: fans.length }));
  })
  .listen(port, '127.0.0.1', () => console.error(`actuators: ${fans.join(', ')}; health on 127.0.0.1:${port}`));

process.on('SIGTERM', () => {
  client.close();
  process.exit(0);
});
