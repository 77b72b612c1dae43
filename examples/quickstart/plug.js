'use strict';
// The quickstart's Node.js program: a smart plug that measures its power draw.
//
// It talks to MQTT only through the bridge (clients/node/iot2mqtt_sv.js): it claims the device
// `plug`, reports its state, says `ready`, answers commands, and sends a telemetry reading
// every POWER_INTERVAL seconds (a measurement period, not a wait for anything).

const { Client } = require('iot2mqtt_sv');

const DEVICE = 'plug';
const state = { on: false, power_w: 0, online: true };

function check(values) {
  for (const [key, value] of Object.entries(values)) {
    if (key === 'on' && typeof value === 'boolean') continue;
    throw new Error(`plug: unsupported value ${key}=${JSON.stringify(value)} (on: bool)`);
  }
}

const client = new Client({
  devices: [DEVICE],
  onCommand: (cmd) => {
    check(cmd.values);
    Object.assign(state, cmd.values);
    state.power_w = state.on ? 1800 : 0;
    client.state(DEVICE, state);
    console.log(`plug: applied ${JSON.stringify(cmd.values)}`);
    return { ...state };
  },
  onGet: () => client.state(DEVICE, state),
});

client.connect();
client.state(DEVICE, state);
client.ready();
console.error('plug: ready, waiting for commands');

const interval = Number(process.env.POWER_INTERVAL || 15) * 1000;
setInterval(() => {
  const jitter = state.on ? Math.round(Math.random() * 40) - 20 : 0;
  client.telemetry(DEVICE, { power_w: state.power_w + jitter });
}, interval);

// SIGTERM from the supervisor: leave quietly (the bridge publishes `offline` for the instance).
process.on('SIGTERM', () => {
  client.close();
  process.exit(0);
});
