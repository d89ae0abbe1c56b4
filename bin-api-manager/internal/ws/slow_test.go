package ws

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

func TestSlowClientDroppedWithoutDelayingFastOne(t *testing.T) {
	const writeTimeout = 10 * time.Second
	// Small buffers make "slow" quick to reach: 32 frames here plus what the two kernels hold.
	s := newStack(t, Options{SendBuffer: 32, SocketWriteBuffer: 16 << 10, WriteTimeout: writeTimeout})
	cust := uuid.NewString()
	topic := "customer_id:" + cust + ":call"

	// The slow client subscribes, then stops reading, with a small receive window.
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slow, _, err := d.DialContext(ctx, s.url+"?token=cust:"+cust, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if err := slow.WriteJSON(map[string]any{"type": "subscribe", "id": "slow", "topics": []string{topic}}); err != nil {
		t.Fatal(err)
	}
	var ack map[string]any
	if err := slow.ReadJSON(&ack); err != nil || ack["type"] != "ack" {
		t.Fatalf("slow client's ack: %v %v", ack, err)
	}

	fast := s.dial(t, "cust:"+cust)
	fast.subscribe(topic)

	// Publish large events; the fast client must get every one promptly, in order.
	const n = 300
	pad := strings.Repeat("x", 8<<10)
	sent := make([]time.Time, n)
	var sentMu sync.Mutex
	ids := make([]string, n)
	go func() {
		for i := range n {
			ev, err := event.New("call.updated", cust, "call", uuid.NewString(), 1, map[string]any{"i": i, "pad": pad})
			if err != nil {
				t.Error(err)
				return
			}
			sentMu.Lock()
			sent[i], ids[i] = time.Now(), ev.EventID
			sentMu.Unlock()
			if err := s.tryPublish(event.ExchangeCall, ev, false); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	}()
	var worst time.Duration
	for i := range n {
		f := fast.next(30 * time.Second)
		at := time.Now()
		sentMu.Lock()
		lat, want := at.Sub(sent[i]), ids[i]
		sentMu.Unlock()
		if f["event_id"] != want {
			t.Fatalf("fast client frame %d = %v, want event %s", i, f["event_id"], want)
		}
		worst = max(worst, lat)
	}
	t.Logf("fast client: %d events of 8 KiB, worst publish→receive latency %s", n, worst)
	// A fan-out that waited for the stalled client would hold the fast one for the write
	// deadline; the bound leaves room for a loaded machine.
	if worst >= writeTimeout/2 {
		t.Errorf("fast client's worst latency %s: the slow client delayed it", worst)
	}

	eventually(t, "the slow client to be disconnected", func() bool {
		return s.metric(t, "ws_events_dropped_total", "reason", dropSlowConsumer) >= 1
	})
	// Reading again, the slow client drains what the kernel held and then finds the reason.
	_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	var closeErr *websocket.CloseError
	for got := 0; ; got++ {
		_, data, err := slow.ReadMessage()
		if err != nil {
			if !errors.As(err, &closeErr) {
				t.Fatalf("slow client ended with %v after %d frames, want a close frame", err, got)
			}
			break
		}
		var m map[string]any
		if json.Unmarshal(data, &m) != nil || m["event_type"] != "call.updated" {
			t.Fatalf("slow client frame %d is not an event envelope: %.80s", got, data)
		}
	}
	if closeErr.Code != websocket.ClosePolicyViolation || !strings.HasPrefix(closeErr.Text, ReasonSlowConsumer) {
		t.Errorf("slow client closed with %d %q, want 1008 SLOW_CONSUMER…", closeErr.Code, closeErr.Text)
	}
	eventually(t, "the disconnection to be counted", func() bool {
		return s.metric(t, "ws_disconnections_total", "reason", causeSlowConsumer) == 1
	})
	// The fast client is untouched and still served.
	fast.subscribe("customer_id:" + cust + ":billing_account")
	eventually(t, "ws_connections to be 1 (the fast client)", func() bool { return s.metric(t, "ws_connections") == 1 })
}

func TestSubscriptionsSurviveABrokerReconnection(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	s := newStackOn(t, testenv.DialRabbit(t, url), Options{}, nil)
	cust := uuid.NewString()
	c := s.dial(t, "cust:"+cust)
	c.subscribe("customer_id:" + cust + ":call")
	ev := callEvent(t, cust, uuid.NewString(), "call.created", 1)
	s.publish(t, event.ExchangeCall, ev)
	if f := c.next(10 * time.Second); f["event_id"] != ev.EventID {
		t.Fatalf("before the reconnection got %v", f)
	}

	testenv.CloseAllConnections(t, vhost)
	// The events published while the queue is being re-made are lost (the stream is live only);
	// once it is back, the binding the client holds is in place again without a new subscribe.
	received := func() bool {
		select {
		case f := <-c.frames:
			var m map[string]any
			return json.Unmarshal(f, &m) == nil && m["event_type"] == "call.ringing"
		default:
		}
		_ = s.tryPublish(event.ExchangeCall, callEvent(t, cust, uuid.NewString(), "call.ringing", 2), false)
		return false
	}
	testenv.Eventually(t, 30*time.Second, "events to flow again after the reconnection", received)

	// New subscriptions bind on the new queue.
	other := uuid.NewString()
	c2 := s.dial(t, "cust:"+other)
	c2.subscribe("customer_id:" + other + ":call")
	ev2 := callEvent(t, other, uuid.NewString(), "call.created", 1)
	s.publish(t, event.ExchangeCall, ev2)
	if f := c2.next(10 * time.Second); f["event_id"] != ev2.EventID {
		t.Errorf("after the reconnection, a new subscriber got %v", f)
	}
}
