package iot2mqttsv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeBridge accepts one connection at a time and hands its lines to the test.
func fakeBridge(t *testing.T) (string, chan net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bridge.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	return path, conns
}

func readJSON(t *testing.T, r *bufio.Reader) map[string]any {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("bad line %q: %v", line, err)
	}
	return m
}

func TestHelloCommandResultAndReconnect(t *testing.T) {
	path, conns := fakeBridge(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := New(Options{
		Path:    path,
		Devices: []string{"d1"},
		OnCommand: func(cmd Command) (any, error) {
			if cmd.Values["fail"] == true {
				return nil, errors.New("refused")
			}
			return cmd.Values, nil
		},
	})
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	srv := <-conns
	r := bufio.NewReader(srv)
	hello := readJSON(t, r)
	if hello["op"] != "hello" || hello["devices"].([]any)[0] != "d1" {
		t.Fatalf("unexpected hello %v", hello)
	}
	if err := c.State("d1", map[string]any{"on": true}); err != nil {
		t.Fatal(err)
	}
	st := readJSON(t, r)
	if st["op"] != "state" || st["device_id"] != "d1" {
		t.Fatalf("unexpected state %v", st)
	}
	srv.Write([]byte(`{"op":"cmd","device_id":"d1","cmd_id":"c1","values":{"x":1},"timeout":5000,"timestamp":"t"}` + "\n"))
	res := readJSON(t, r)
	if res["op"] != "cmd_result" || res["cmd_id"] != "c1" || res["status"] != "success" {
		t.Fatalf("unexpected result %v", res)
	}
	srv.Write([]byte(`{"op":"cmd","device_id":"d1","cmd_id":"c2","values":{"fail":true},"timeout":5000,"timestamp":"t"}` + "\n"))
	res = readJSON(t, r)
	if res["status"] != "error" || res["error"] != "refused" {
		t.Fatalf("unexpected result %v", res)
	}
	// The bridge restarts: the client reconnects and says hello again.
	srv.Close()
	srv2 := <-conns
	hello = readJSON(t, bufio.NewReader(srv2))
	if hello["op"] != "hello" {
		t.Fatalf("no hello after reconnect: %v", hello)
	}
}
