package ws

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
)

// BenchmarkEventToWebSocketBroadcast and BenchmarkEventToWebSocketTargeted measure event
// publish → WebSocket client latency through the real broker, the handler and loopback TCP, with
// 1,000 and 10,000 sockets connected at once:
//
//	Broadcast  every socket is subscribed to the one customer the events are for: each event is
//	           delivered to all sockets; p50/p99 are over every (event, socket) delivery.
//	Targeted   every socket is its own customer (one binding each): each event goes to one
//	           socket, a different one each time; p50/p99 are over events.
//
// The clients run in a child process (this test binary again, as TestWSFleetHelper), since this
// machine's hard open-file limit (20,000) cannot hold both ends of 10,000 sockets in one process.
// Each op publishes one event (with broker confirm) and waits until the child reports every
// delivery arrived, so ns/op is the time to reach all subscribers. Latency is measured from the
// envelope's timestamp, set just before the publish, to the client's read (same host clock).
func BenchmarkEventToWebSocketBroadcast(b *testing.B) { benchEventToWebSocket(b, true) }

// BenchmarkEventToWebSocketTargeted: see BenchmarkEventToWebSocketBroadcast.
func BenchmarkEventToWebSocketTargeted(b *testing.B) { benchEventToWebSocket(b, false) }

func benchEventToWebSocket(b *testing.B, broadcast bool) {
	for _, n := range []int{1000, 10000} {
		s := newStack(b, Options{SendBuffer: 1024})
		fl := startFleet(b, s.url, n, broadcast)
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) { fl.run(b, s) })
		fl.quit(b)
		if err := s.stop(b); err != nil {
			b.Errorf("Run: %v", err)
		}
		s.closeServer()
	}
}

// fleetCustomer is the customer of socket i ("" prefix: broadcast uses the prefix alone).
func fleetCustomer(prefix string, broadcast bool, i int) string {
	if broadcast {
		return prefix
	}
	return prefix + "-" + strconv.Itoa(i)
}

// fleet is the parent's handle on the child process holding the client sockets.
type fleet struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	lines     chan string
	n         int
	broadcast bool
	prefix    string
	seq       int64
}

func startFleet(b *testing.B, url string, n int, broadcast bool) *fleet {
	b.Helper()
	fl := &fleet{n: n, broadcast: broadcast, prefix: strings.ReplaceAll(uuid.NewString(), "-", ""), lines: make(chan string, 1024)}
	fl.cmd = exec.Command(os.Args[0], "-test.run=^TestWSFleetHelper$", "-test.count=1")
	fl.cmd.Env = append(os.Environ(), "VOIPBIN_WS_FLEET=1", "FLEET_URL="+url, "FLEET_N="+strconv.Itoa(n),
		"FLEET_PREFIX="+fl.prefix, "FLEET_BROADCAST="+strconv.FormatBool(broadcast))
	fl.cmd.Stderr = os.Stderr
	out, err := fl.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if fl.stdin, err = fl.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := fl.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(fl.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "FLEET "); ok {
				fl.lines <- line
			}
		}
	}()
	start := time.Now()
	if line := fl.expect(b, "READY", 5*time.Minute); line != "READY" {
		b.Fatalf("fleet: %s", line)
	}
	b.Logf("%d sockets connected and subscribed in %s", n, time.Since(start).Round(time.Millisecond))
	return fl
}

// expect returns the next line starting with word (or an ERROR line).
func (fl *fleet) expect(b *testing.B, word string, timeout time.Duration) string {
	b.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-fl.lines:
			if !ok {
				_ = fl.cmd.Wait()
				b.Fatalf("fleet process ended while waiting for %s", word)
			}
			if strings.HasPrefix(line, word) || strings.HasPrefix(line, "ERROR") {
				return line
			}
		case <-deadline:
			b.Fatalf("fleet: no %s within %s", word, timeout)
		}
	}
}

func (fl *fleet) send(b *testing.B, cmd string) {
	b.Helper()
	if _, err := io.WriteString(fl.stdin, cmd+"\n"); err != nil {
		b.Fatal(err)
	}
}

func (fl *fleet) run(b *testing.B, s *stack) {
	fl.send(b, "RESET")
	fl.expect(b, "RESET", time.Minute)
	callID := uuid.NewString()
	now := time.Now().UTC()
	b.ResetTimer()
	for op := range b.N {
		fl.seq++
		customer := fleetCustomer(fl.prefix, fl.broadcast, op%fl.n)
		data := callapi.EventData{Call: callapi.Call{ID: callID, CustomerID: customer,
			Source:      callapi.Address{Type: "tel", Target: "+15551230000"},
			Destination: callapi.Address{Type: "tel", Target: "+15557654321", TargetName: "bench"},
			Status:      "progressing", Direction: "outgoing", TMCreate: now, TMUpdate: now}, CallID: callID}
		ev, err := event.New("call.updated", customer, "call", callID, fl.seq, data)
		if err != nil {
			b.Fatal(err)
		}
		ev.Timestamp = time.Now().UTC()
		if err := s.tryPublish(event.ExchangeCall, ev, false); err != nil {
			b.Fatal(err)
		}
		want := "DONE " + strconv.FormatInt(fl.seq, 10)
		if line := fl.expect(b, "DONE", time.Minute); line != want {
			b.Fatalf("fleet: %q, want %q", line, want)
		}
	}
	b.StopTimer()
	fl.send(b, "REPORT")
	var count, p50, p99 int64
	line := fl.expect(b, "REPORT", time.Minute)
	if _, err := fmt.Sscanf(line, "REPORT %d %d %d", &count, &p50, &p99); err != nil {
		b.Fatalf("fleet report %q: %v", line, err)
	}
	b.ReportMetric(float64(p50)/1e6, "p50-ms")
	b.ReportMetric(float64(p99)/1e6, "p99-ms")
	b.ReportMetric(float64(count)/float64(b.N), "deliveries/op")
	if dropped := s.metric(b, "ws_events_dropped_total", "reason", dropSlowConsumer); dropped > 0 {
		b.Errorf("%v events dropped for slow consumers during the benchmark", dropped)
	}
}

func (fl *fleet) quit(b *testing.B) {
	_ = fl.stdin.Close()
	done := make(chan error, 1)
	go func() {
		for range fl.lines {
		}
		done <- fl.cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			b.Errorf("fleet process: %v", err)
		}
	case <-time.After(2 * time.Minute):
		_ = fl.cmd.Process.Kill()
		b.Error("fleet process did not exit")
	}
}

// TestWSFleetHelper is the client side of the BenchmarkEventToWebSocket benchmarks, run only as their child
// process: it connects FLEET_N sockets, subscribes each, prints "FLEET READY", prints
// "FLEET DONE <seq>" once every expected delivery of an event arrived, and answers the RESET and
// REPORT commands read from stdin until stdin closes.
func TestWSFleetHelper(t *testing.T) {
	if os.Getenv("VOIPBIN_WS_FLEET") != "1" {
		t.Skip("helper process of the BenchmarkEventToWebSocket benchmarks")
	}
	n, _ := strconv.Atoi(os.Getenv("FLEET_N"))
	broadcast := os.Getenv("FLEET_BROADCAST") == "true"
	prefix, url := os.Getenv("FLEET_PREFIX"), os.Getenv("FLEET_URL")
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, "FLEET "+format+"\n", args...)
		_ = out.Flush()
	}

	conns := make([]*websocket.Conn, n)
	d := websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 512, HandshakeTimeout: time.Minute,
		NetDialContext: (&net.Dialer{}).DialContext}
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for failed.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := fleetConnect(d, url, fleetCustomer(prefix, broadcast, i))
				if err != nil {
					failed.Store(fmt.Sprintf("socket %d: %v", i, err))
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if msg := failed.Load(); msg != nil {
		say("ERROR %s", msg)
		t.Fatal(msg)
	}

	want := 1
	if broadcast {
		want = n
	}
	var mu sync.Mutex
	counts := map[int64]int{}
	latencies := make([][]time.Duration, n)
	var readers sync.WaitGroup
	for i, c := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				at := time.Now()
				seq, sent, ok := fleetParse(data)
				if !ok {
					continue
				}
				latencies[i] = append(latencies[i], at.Sub(sent))
				mu.Lock()
				counts[seq]++
				done := counts[seq] == want
				if done {
					delete(counts, seq)
				}
				mu.Unlock()
				if done {
					say("DONE %d", seq)
				}
			}
		}()
	}
	say("READY")

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "RESET": // only sent between events, when every reader is idle
			for i := range latencies {
				latencies[i] = latencies[i][:0]
			}
			say("RESET")
		case "REPORT":
			var all []time.Duration
			for _, l := range latencies {
				all = append(all, l...)
			}
			slices.Sort(all)
			pct := func(p float64) int64 {
				if len(all) == 0 {
					return 0
				}
				return int64(all[min(len(all)-1, int(p*float64(len(all))))])
			}
			say("REPORT %d %d %d", len(all), pct(0.50), pct(0.99))
		}
	}
	for _, c := range conns {
		_ = c.Close()
	}
	readers.Wait()
}

func fleetConnect(d websocket.Dialer, url, customer string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := d.DialContext(ctx, url+"?token=cust:"+customer, nil)
	if err != nil {
		return nil, err
	}
	if err := c.WriteJSON(map[string]any{"type": "subscribe", "id": 1, "topics": []string{"customer_id:" + customer + ":call"}}); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, ack, err := c.ReadMessage()
	if err == nil && !bytes.Contains(ack, []byte(`"ack"`)) {
		err = fmt.Errorf("subscribe answered %s", ack)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, c.SetReadDeadline(time.Time{})
}

var (
	seqField  = []byte(`"sequence":`)
	timeField = []byte(`"timestamp":"`)
)

// fleetParse reads the sequence and timestamp of an envelope without decoding all of it, so the
// clients spend little of the CPU they share with the server.
func fleetParse(data []byte) (seq int64, sent time.Time, ok bool) {
	i := bytes.Index(data, seqField)
	j := bytes.Index(data, timeField)
	if i < 0 || j < 0 {
		return 0, time.Time{}, false
	}
	rest := data[i+len(seqField):]
	k := bytes.IndexAny(rest, ",}")
	if k < 0 {
		return 0, time.Time{}, false
	}
	seq, err := strconv.ParseInt(string(rest[:k]), 10, 64)
	if err != nil {
		return 0, time.Time{}, false
	}
	ts := data[j+len(timeField):]
	k = bytes.IndexByte(ts, '"')
	if k < 0 {
		return 0, time.Time{}, false
	}
	sent, err = time.Parse(time.RFC3339Nano, string(ts[:k]))
	return seq, sent, err == nil
}
