package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Receiver is the Flask webhook endpoint of the webhook manager's tests, a customer's program
// that verifies both signatures.
type Receiver struct {
	URL  string // the hook URL to register
	base string
}

// ReceivedDelivery is one request the receiver got.
type ReceivedDelivery struct {
	EventID          string `json:"event_id"`
	EventType        string `json:"event_type"`
	Sequence         int64  `json:"sequence"`
	CallID           string `json:"call_id"`
	VerifiedVoipbin  bool   `json:"verified_voipbin"`
	VerifiedStandard bool   `json:"verified_standard"`
	Status           int    `json:"status"`
}

// StartReceiver starts the Flask receiver on a random port.
func StartReceiver(t testing.TB) *Receiver {
	t.Helper()
	script := filepath.Join(repoRoot(), "bin-webhook-manager/cmd/webhook-manager/testdata/receiver.py")
	cmd := exec.Command("/usr/bin/python3", script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start receiver (needs python3-flask): %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var first struct {
		Port int `json:"port"`
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || json.Unmarshal([]byte(line), &first) != nil {
		t.Fatalf("receiver did not report its port: %q %v", line, err)
	}
	base := "http://127.0.0.1:" + itoa(first.Port)
	return &Receiver{URL: base + "/hook", base: base}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// Configure sets the secret to verify with.
func (r *Receiver) Configure(t testing.TB, secret string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"secret": secret})
	resp, err := http.Post(r.base+"/_config", "application/json", strings.NewReader(string(b)))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("configure receiver: %v", err)
	}
	resp.Body.Close()
}

// Received lists what arrived so far.
func (r *Receiver) Received(t testing.TB) []ReceivedDelivery {
	t.Helper()
	resp, err := http.Get(r.base + "/_received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []ReceivedDelivery
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Subscriber is the Python websocket-client subscriber of the WebSocket tests.
type Subscriber struct {
	mu     sync.Mutex
	frames []map[string]any
	done   chan struct{}
}

// Subscribe connects a Python WebSocket client with token to the stack and subscribes to topics;
// it returns once the subscription is acknowledged.
func (s *Stack) Subscribe(t testing.TB, token string, topics ...string) *Subscriber {
	t.Helper()
	script := filepath.Join(repoRoot(), "bin-api-manager/internal/ws/testdata/ws_client.py")
	args := []string{script, "--url", "ws" + strings.TrimPrefix(s.API, "http") + "/v1.0/ws", "--token", token,
		"--count", "1000", "--timeout", "120"}
	for _, tp := range topics {
		args = append(args, "--topic", tp)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ws client (needs python3-websocket): %v", err)
	}
	sub := &Subscriber{done: make(chan struct{})}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	acked := make(chan map[string]any, 1)
	go func() {
		defer close(sub.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		first := true
		for sc.Scan() {
			var f map[string]any
			if json.Unmarshal(sc.Bytes(), &f) != nil {
				continue
			}
			if first {
				first = false
				acked <- f
				continue
			}
			sub.mu.Lock()
			sub.frames = append(sub.frames, f)
			sub.mu.Unlock()
		}
	}()
	select {
	case f := <-acked:
		if f["type"] != "ack" {
			t.Fatalf("subscription not acknowledged: %v", f)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to the subscribe frame")
	}
	return sub
}

// Events returns the event envelopes received so far.
func (s *Subscriber) Events() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.frames...)
}
