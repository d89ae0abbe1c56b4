package ws

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

// TestClientToldOfAnEventGapAfterABrokerReconnection force-closes the broker connections of the
// test's own virtual host (as a broker restart would): the socket stays open, and once the event
// stream is back the subscribed client receives one events_gap frame before any later event, so
// it knows to re-read state; events then flow without a new subscribe. A connection holding no
// topic missed nothing and is told nothing.
func TestClientToldOfAnEventGapAfterABrokerReconnection(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	s := newStackOn(t, testenv.DialRabbit(t, url), Options{}, nil)
	cust := uuid.NewString()
	c := s.dial(t, "cust:"+cust)
	c.subscribe("customer_id:" + cust + ":call")
	idleCust := uuid.NewString()
	idle := s.dial(t, "cust:"+idleCust)
	ev := callEvent(t, cust, uuid.NewString(), "call.created", 1)
	s.publish(t, event.ExchangeCall, ev)
	if f := c.next(10 * time.Second); f["event_id"] != ev.EventID {
		t.Fatalf("before the interruption got %v", f)
	}

	closedAt := time.Now().Add(-time.Second) // the broker's clock and ours may differ a little
	testenv.CloseAllConnections(t, vhost)
	f := c.next(30 * time.Second)
	if f["type"] != FrameEventsGap || f["reason"] != "event stream interrupted" {
		t.Fatalf("first frame after the interruption = %v, want the events_gap frame", f)
	}
	since, err := time.Parse(time.RFC3339Nano, f["since"].(string))
	if err != nil || since.Before(closedAt) || since.After(time.Now()) {
		t.Fatalf("since = %v (%v), want the time of the interruption (after %s)", f["since"], err, closedAt)
	}
	if len(f) != 3 {
		t.Errorf("gap frame %v has other keys than type, reason and since", f)
	}

	ev2 := callEvent(t, cust, uuid.NewString(), "call.created", 1)
	s.publish(t, event.ExchangeCall, ev2)
	if f := c.next(10 * time.Second); f["event_id"] != ev2.EventID {
		t.Fatalf("after the gap frame got %v, want the next event", f)
	}
	// The idle connection's first frame is the ack of its subscribe: no gap frame was queued.
	idle.subscribe("customer_id:" + idleCust + ":call")
	if got := s.metric(t, "ws_event_gaps_total"); got != 1 {
		t.Errorf("ws_event_gaps_total = %v, want 1", got)
	}
}
