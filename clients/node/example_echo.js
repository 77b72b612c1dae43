'use strict';
// Example program: handles device d1, reports a state, answers every command with its values.
// Used by the bridge's integration tests (`the_node_client_round_trips_a_command`).
const { Client } = require('./iot2mqtt_sv');

const client = new Client({ devices: ['d1'], onCommand: (cmd) => cmd.values });
client.connect();
client.state('d1', { client: 'node', online: true });
