package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"voipbin/bin-api-manager/internal/ws"
	"voipbin/pkg/testenv"
)

// TestRunClosesTheSocketOfADeletedKey proves main's wiring of revocation: the authentication
// cache runs, the WebSocket is handed its credential's check, and a revocation re-checks the
// sockets at once — a socket opened with an access key is closed with 4003 when the key is deleted.
func TestRunClosesTheSocketOfADeletedKey(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env(t, map[string]string{"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin",
			"WS_CREDENTIAL_CHECK_INTERVAL": "10s"}), &out) // the periodic check is too slow to pass the test
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("run did not stop")
		}
	})
	addr := waitListening(t, &out, done)
	call := func(method, path, token, body string) map[string]any {
		req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return m
	}
	token := call("POST", "/auth/login", "", `{"username":"admin","password":"admin"}`)["token"].(string)
	key := call("POST", "/v1.0/accesskeys", token, `{"name":"ci","expire":3600}`)

	var c *websocket.Conn
	testenv.Eventually(t, 20*time.Second, "the WebSocket upgrade", func() bool {
		var err error
		c, _, err = websocket.DefaultDialer.Dial("ws://"+addr+"/v1.0/ws?accesskey="+key["token"].(string), nil)
		return err == nil
	})
	defer c.Close()
	start := time.Now()
	call("DELETE", "/v1.0/accesskeys/"+key["id"].(string), token, "")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != ws.CloseCredentialsRevoked || !strings.HasPrefix(ce.Text, ws.ReasonCredentialsRevoked) {
		t.Fatalf("read after the key's deletion: %v, want close 4003", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("closed %s after the deletion", took)
	}
}
