// Package iot2mqttsv is a client for the iot2mqtt-sv bridge socket (standard library only).
//
// It connects to $IOT2MQTT_SV_BRIDGE_SOCKET (default /run/iot2mqtt-sv/bridge.sock), speaks the
// newline-delimited JSON protocol of docs/protocol.md, reconnects with backoff when the bridge
// restarts (re-sending hello and subscriptions) and calls your handlers for cmd, get,
// meta_request and message.
//
//	c := iot2mqttsv.New(iot2mqttsv.Options{
//		Devices: []string{"lamp1"},
//		OnCommand: func(cmd iot2mqttsv.Command) (any, error) {
//			return cmd.Values, setLamp(cmd.Values)
//		},
//	})
//	if err := c.Connect(ctx); err != nil { ... }
//	c.State("lamp1", map[string]any{"on": true, "online": true})
//	c.Ready()
//	c.Run(ctx) // dispatches until ctx is done
//
// Send methods do not wait for the reply; refused requests are passed to OnError.
package iot2mqttsv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// DefaultSocket is used when $IOT2MQTT_SV_BRIDGE_SOCKET is not set.
const DefaultSocket = "/run/iot2mqtt-sv/bridge.sock"

// Command is a "cmd" from the bridge: answer it by returning from OnCommand.
type Command struct {
	DeviceID  string         `json:"device_id"`
	CmdID     string         `json:"cmd_id"`
	Values    map[string]any `json:"values"`
	Timeout   int64          `json:"timeout"`
	Timestamp string         `json:"timestamp"`
}

// Incoming is any message from the bridge, decoded loosely.
type Incoming struct {
	Op         string          `json:"op"`
	ID         json.RawMessage `json:"id,omitempty"`
	Code       string          `json:"code,omitempty"`
	Message    string          `json:"message,omitempty"`
	DeviceID   string          `json:"device_id,omitempty"`
	Properties []string        `json:"properties,omitempty"`
	Type       string          `json:"type,omitempty"`
	Topic      string          `json:"topic,omitempty"`
	Payload    json.RawMessage `json:"payload,omitempty"`
	Retain     bool            `json:"retain,omitempty"`
}

// Options configure a Client. Every handler is optional.
type Options struct {
	// Path of the bridge socket; default $IOT2MQTT_SV_BRIDGE_SOCKET or DefaultSocket.
	Path string
	// Devices handled; nil means all devices.
	Devices []string
	// Meta: this client answers meta/request/* itself.
	Meta bool
	// OnCommand executes a command; a nil error reports success with the returned result.
	OnCommand func(Command) (any, error)
	// OnGet is called for "get" (answer with State).
	OnGet func(Incoming)
	// OnMetaRequest is called for "meta_request" (with Meta set).
	OnMetaRequest func(Incoming)
	// OnMessage is called for messages on raw subscriptions.
	OnMessage func(Incoming)
	// OnError is called for "error" replies.
	OnError func(Incoming)
}

// Client is one connection to the bridge. Its methods are safe for concurrent use.
type Client struct {
	opts   Options
	mu     sync.Mutex
	conn   net.Conn
	reader *bufio.Reader
	subs   []string
	nextID int64
}

// New makes a client; call Connect, then Run.
func New(opts Options) *Client {
	if opts.Path == "" {
		opts.Path = os.Getenv("IOT2MQTT_SV_BRIDGE_SOCKET")
	}
	if opts.Path == "" {
		opts.Path = DefaultSocket
	}
	return &Client{opts: opts}
}

// ErrNotConnected is returned by send methods before Connect succeeded.
var ErrNotConnected = errors.New("iot2mqttsv: not connected to the bridge")

// Connect dials the socket, retrying with backoff until ctx is done, then says hello.
func (c *Client) Connect(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		conn, err := net.Dial("unix", c.opts.Path)
		if err == nil {
			c.mu.Lock()
			if c.conn != nil {
				c.conn.Close()
			}
			c.conn = conn
			c.reader = bufio.NewReaderSize(conn, 64*1024)
			subs := append([]string(nil), c.subs...)
			c.mu.Unlock()
			hello := map[string]any{"op": "hello", "meta": c.opts.Meta}
			if c.opts.Devices != nil {
				hello["devices"] = c.opts.Devices
			}
			if err := c.send(hello); err != nil {
				return err
			}
			for _, s := range subs {
				if err := c.send(map[string]any{"op": "subscribe", "topic": s}); err != nil {
					return err
				}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		if delay *= 2; delay > 5*time.Second {
			delay = 5 * time.Second
		}
	}
}

// Close ends the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

func (c *Client) send(msg map[string]any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ErrNotConnected
	}
	c.nextID++
	msg["id"] = c.nextID
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(append(b, '\n'))
	return err
}

// State publishes a device's state (merged into its last full state by the bridge).
func (c *Client) State(deviceID string, state map[string]any) error {
	return c.send(map[string]any{"op": "state", "device_id": deviceID, "state": state})
}

// Event publishes a device event.
func (c *Client) Event(deviceID, event string, data any) error {
	return c.send(map[string]any{"op": "event", "device_id": deviceID, "event": event, "data": data})
}

// Error publishes a device error; severity is info, warning, error or critical.
func (c *Client) Error(deviceID, code, message, severity string) error {
	if severity == "" {
		severity = "error"
	}
	return c.send(map[string]any{"op": "error", "device_id": deviceID, "error_code": code, "message": message, "severity": severity})
}

// Discovered publishes devices found by a scan on {B}/v1/instances/{I}/discovered.
func (c *Client) Discovered(devices []map[string]any) error {
	return c.send(map[string]any{"op": "discovered", "devices": devices})
}

// HADiscovery adds or replaces a Home Assistant discovery config of a device (entity may be
// empty); a nil config removes it.
func (c *Client) HADiscovery(deviceID, component, entity string, config map[string]any) error {
	msg := map[string]any{"op": "ha_discovery", "device_id": deviceID, "component": component, "config": config}
	if entity != "" {
		msg["entity"] = entity
	}
	return c.send(msg)
}

// Telemetry publishes device metrics.
func (c *Client) Telemetry(deviceID string, metrics map[string]any) error {
	return c.send(map[string]any{"op": "telemetry", "device_id": deviceID, "metrics": metrics})
}

// DevicesList publishes meta/devices_list (a JSON array).
func (c *Client) DevicesList(devices []map[string]any) error {
	return c.send(map[string]any{"op": "devices_list", "devices": devices})
}

// CmdResult answers a command explicitly (OnCommand does it for you).
func (c *Client) CmdResult(deviceID, cmdID string, err error, result any) error {
	msg := map[string]any{"op": "cmd_result", "device_id": deviceID, "cmd_id": cmdID, "status": "success"}
	if err != nil {
		msg["status"] = "error"
		msg["error"] = err.Error()
	} else if result != nil {
		msg["result"] = result
	}
	return c.send(msg)
}

// Ready reports readiness (readiness kind "bridge").
func (c *Client) Ready() error {
	return c.send(map[string]any{"op": "ready"})
}

// Publish sends a raw message (inside the instance tree or the program's bridge_publish).
func (c *Client) Publish(topic string, payload any, retain bool) error {
	return c.send(map[string]any{"op": "publish", "topic": topic, "payload": payload, "retain": retain})
}

// Subscribe adds a raw subscription, renewed after reconnects; messages go to OnMessage.
func (c *Client) Subscribe(topic string) error {
	c.mu.Lock()
	c.subs = append(c.subs, topic)
	c.mu.Unlock()
	return c.send(map[string]any{"op": "subscribe", "topic": topic})
}

// Run reads and dispatches messages until ctx is done, reconnecting when the bridge goes away.
func (c *Client) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	for {
		c.mu.Lock()
		r := c.reader
		c.mu.Unlock()
		var line []byte
		var err error
		if r == nil {
			err = ErrNotConnected
		} else {
			line, err = r.ReadBytes('\n')
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := c.Connect(ctx); err != nil {
				return err
			}
			continue
		}
		var in Incoming
		if json.Unmarshal(line, &in) != nil {
			continue
		}
		c.dispatch(in, line)
	}
}

func (c *Client) dispatch(in Incoming, line []byte) {
	switch in.Op {
	case "cmd":
		if c.opts.OnCommand == nil {
			return
		}
		var cmd Command
		if json.Unmarshal(line, &cmd) != nil {
			return
		}
		result, err := c.opts.OnCommand(cmd)
		_ = c.CmdResult(cmd.DeviceID, cmd.CmdID, err, result)
	case "get":
		if c.opts.OnGet != nil {
			c.opts.OnGet(in)
		}
	case "meta_request":
		if c.opts.OnMetaRequest != nil {
			c.opts.OnMetaRequest(in)
		}
	case "message":
		if c.opts.OnMessage != nil {
			c.opts.OnMessage(in)
		}
	case "error":
		if c.opts.OnError != nil {
			c.opts.OnError(in)
		}
	}
}
