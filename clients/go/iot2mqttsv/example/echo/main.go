// Command echo handles device d1, reports a state and answers every command with its values.
// Used by the bridge's integration tests (the_go_client_round_trips_a_command).
package main

import (
	"context"
	"log"
	"time"

	"github.com/iot2mqtt/iot2mqtt-sv/clients/go/iot2mqttsv"
)

func main() {
	c := iot2mqttsv.New(iot2mqttsv.Options{
		Devices:   []string{"d1"},
		OnCommand: func(cmd iot2mqttsv.Command) (any, error) { return cmd.Values, nil },
	})
	ctx := context.Background()
	dial, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := c.Connect(dial); err != nil {
		log.Fatal(err)
	}
	if err := c.State("d1", map[string]any{"client": "go", "online": true}); err != nil {
		log.Fatal(err)
	}
	log.Fatal(c.Run(ctx))
}
