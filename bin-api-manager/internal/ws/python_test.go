package ws

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/event"
)

const python = "/usr/bin/python3"

// requirePython fails (never skips) without the third-party client: the test exists to prove
// interoperability with it.
func requirePython(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(python, "-c", "import websocket").CombinedOutput(); err != nil {
		t.Fatalf("%s with websocket-client is required: %v %s (apt-get install -y python3-websocket)", python, err, out)
	}
}

// pyClient runs testdata/ws_client.py and streams its stdout lines.
type pyClient struct {
	cmd    *exec.Cmd
	lines  chan map[string]any
	stderr bytes.Buffer
	exited chan struct{}
	err    error
}

func startPython(t *testing.T, args ...string) *pyClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	p := &pyClient{lines: make(chan map[string]any, 100), exited: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, python, append([]string{"testdata/ws_client.py"}, args...)...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"unparsable": sc.Text()}
			}
			p.lines <- m
		}
		close(p.lines)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() { <-p.exited })
	return p
}

func (p *pyClient) line(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m, ok := <-p.lines:
		if !ok {
			<-p.exited
			t.Fatalf("python client ended early (%v): %s", p.err, p.stderr.String())
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("no line from the python client in 30 s; stderr: %s", p.stderr.String())
	}
	return nil
}

// exitCode waits for the client to end.
func (p *pyClient) exitCode(t *testing.T) int {
	t.Helper()
	for range p.lines { // drain whatever is left
	}
	<-p.exited
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("python client: %v", p.err)
	}
	return 0
}

func TestPythonWebsocketClientReceivesACallsEvents(t *testing.T) {
	requirePython(t)
	s := newStack(t, Options{})
	cust, other := uuid.NewString(), uuid.NewString()
	call := uuid.NewString()

	p := startPython(t, "--url", s.url, "--token", "cust:"+cust, "--topic", "customer_id:"+cust+":call:*", "--count", "5", "--timeout", "30")
	if ack := p.line(t); ack["type"] != "ack" || ack["id"] != "sub-1" {
		t.Fatalf("first line = %v, want the ack of sub-1", ack)
	}
	types := []string{"call.created", "call.ringing", "call.answered", "call.updated", "call.ended"}
	for i, typ := range types {
		s.publish(t, event.ExchangeCall, callEvent(t, other, uuid.NewString(), typ, 1)) // not this customer's
		s.publish(t, event.ExchangeCall, callEvent(t, cust, call, typ, int64(i+1)))
	}
	for i, typ := range types {
		f := p.line(t)
		data, _ := f["data"].(map[string]any)
		if f["event_type"] != typ || data["call_id"] != call || f["sequence"] != float64(i+1) {
			t.Errorf("line %d = %v, want %s of call %s #%d", i+1, f, typ, call, i+1)
		}
	}
	if code := p.exitCode(t); code != 0 {
		t.Errorf("python client exit status %d, want 0; stderr: %s", code, p.stderr.String())
	}
}

func TestPythonWebsocketClientCrossCustomerRefused(t *testing.T) {
	requirePython(t)
	s := newStack(t, Options{})
	cust, other := uuid.NewString(), uuid.NewString()
	foreign := "customer_id:" + other + ":call"

	t.Run("with an id", func(t *testing.T) {
		p := startPython(t, "--url", s.url, "--token", "cust:"+cust, "--topic", foreign)
		if f := p.line(t); f["type"] != "error" || f["id"] != "sub-1" || f["reason"] != ReasonPermissionDenied {
			t.Errorf("answer = %v, want error sub-1 PERMISSION_DENIED", f)
		}
		if code := p.exitCode(t); code != 3 {
			t.Errorf("exit status %d, want 3 (refused)", code)
		}
	})
	t.Run("without an id", func(t *testing.T) {
		p := startPython(t, "--url", s.url, "--token", "cust:"+cust, "--topic", foreign, "--no-id", "--count", "1")
		f := p.line(t)
		reason, _ := f["reason"].(string)
		if f["type"] != "close" || f["code"] != float64(1008) || !strings.HasPrefix(reason, "PERMISSION_DENIED: ") || !strings.Contains(reason, other) {
			t.Errorf("line = %v, want close 1008 PERMISSION_DENIED naming %s", f, other)
		}
		if code := p.exitCode(t); code != 2 {
			t.Errorf("exit status %d, want 2 (closed by the server)", code)
		}
	})
	t.Run("bad credentials", func(t *testing.T) {
		p := startPython(t, "--url", s.url, "--bearer", "nope", "--topic", foreign)
		if f := p.line(t); f["type"] != "http_error" || f["status"] != float64(401) {
			t.Errorf("line = %v, want http_error 401", f)
		}
		if code := p.exitCode(t); code != 4 {
			t.Errorf("exit status %d, want 4", code)
		}
	})
}
