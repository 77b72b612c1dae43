"""Example program: handles device d1, reports a state, answers every command with its values.

Used by the bridge's integration tests (`the_python_client_round_trips_a_command`).
"""

from iot2mqtt_sv import Client


def on_command(cmd):
    return cmd["values"]


client = Client(devices=["d1"], on_command=on_command)
client.connect(timeout=20)
client.state("d1", {"client": "python3", "online": True})
client.run_forever()
