package ws

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

func TestUpgradeRefusedWithErrorEnvelope(t *testing.T) {
	s := newStack(t, Options{})
	cust := uuid.NewString()
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	with := func(h http.Header, kv ...string) http.Header {
		out := h.Clone()
		if out == nil {
			out = http.Header{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out.Set(kv[i], kv[i+1])
		}
		return out
	}
	tests := []struct {
		name       string
		method     string
		query      string
		header     http.Header
		wantStatus int
		wantState  string
		wantReason string
	}{
		{name: "no credential", query: "", header: upgrade, wantStatus: 401, wantState: "UNAUTHENTICATED", wantReason: "AUTHENTICATION_REQUIRED"},
		{name: "bad token", query: "?token=nope", header: upgrade, wantStatus: 401, wantState: "UNAUTHENTICATED", wantReason: "INVALID_CREDENTIALS"},
		{name: "bad bearer", header: with(upgrade, "Authorization", "Bearer nope"), wantStatus: 401, wantState: "UNAUTHENTICATED", wantReason: "INVALID_CREDENTIALS"},
		{name: "not an upgrade", query: "?token=cust:" + cust, wantStatus: 400, wantState: "INVALID_ARGUMENT", wantReason: ReasonHandshakeInvalid},
		{name: "not GET", method: http.MethodPost, query: "?token=cust:" + cust, header: upgrade, wantStatus: 405, wantState: "METHOD_NOT_ALLOWED", wantReason: "METHOD_NOT_ALLOWED"},
		{name: "cross-origin with the token cookie", header: with(upgrade, "Origin", "https://evil.example", "Cookie", "token=cust:"+cust),
			wantStatus: 403, wantState: "PERMISSION_DENIED", wantReason: ReasonOriginNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, s.srv.URL+"/v1.0/ws"+tt.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = tt.header.Clone()
			if req.Header == nil {
				req.Header = http.Header{}
			}
			req.Header.Set("X-Request-Id", "req-"+strings.ReplaceAll(tt.name, " ", "-"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			e := body["error"]
			if resp.StatusCode != tt.wantStatus || e["status"] != tt.wantState || e["reason"] != tt.wantReason {
				t.Errorf("got %d %v/%v, want %d %s/%s", resp.StatusCode, e["status"], e["reason"], tt.wantStatus, tt.wantState, tt.wantReason)
			}
			if got, want := e["request_id"], req.Header.Get("X-Request-Id"); got != want {
				t.Errorf("request_id = %v, want %q", got, want)
			}
			if msg, _ := e["message"].(string); msg == "" || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("message %q, content type %q: want a message and application/json", msg, resp.Header.Get("Content-Type"))
			}
		})
	}

	t.Run("credentials accepted", func(t *testing.T) {
		for name, dial := range map[string]func() (*websocket.Conn, *http.Response, error){
			"token query": func() (*websocket.Conn, *http.Response, error) { return s.tryDial("cust:"+cust, nil) },
			"bearer header": func() (*websocket.Conn, *http.Response, error) {
				return s.tryDial("", http.Header{"Authorization": {"Bearer cust:" + cust}})
			},
			"cookie, same origin": func() (*websocket.Conn, *http.Response, error) {
				return s.tryDial("", http.Header{"Cookie": {"token=cust:" + cust}, "Origin": {s.srv.URL}})
			},
			"explicit token, cross-origin": func() (*websocket.Conn, *http.Response, error) {
				return s.tryDial("cust:"+cust, http.Header{"Origin": {"https://dashboard.example"}})
			},
			"explicit token and cookie, cross-origin": func() (*websocket.Conn, *http.Response, error) {
				return s.tryDial("cust:"+cust, http.Header{"Origin": {"https://dashboard.example"}, "Cookie": {"token=cust:" + cust}})
			},
		} {
			c, resp, err := dial()
			if err != nil {
				t.Errorf("%s: dial: %v (%v)", name, err, resp)
				continue
			}
			newClient(t, c).subscribe("customer_id:" + cust + ":call")
		}
	})
}

// envelopeKeys are the only keys a client that reads events ever sees.
var envelopeKeys = []string{"customer_id", "data", "event_id", "event_type", "resource_id", "resource_type", "sequence", "timestamp"}

func TestSubscriberReceivesOnlyItsEventsAsEnvelopes(t *testing.T) {
	s := newStack(t, Options{})
	a, b := uuid.NewString(), uuid.NewString()
	call := uuid.NewString()
	c := s.dial(t, "cust:"+a)
	c.subscribe("customer_id:" + a + ":call")
	other := s.dial(t, "cust:"+b)
	other.subscribe("customer_id:" + b + ":billing_account")

	var published []event.Event
	for i, typ := range []string{"call.created", "call.ringing", "call.answered", "call.ended"} {
		ev := callEvent(t, a, call, typ, int64(i+1))
		published = append(published, ev)
		s.publish(t, event.ExchangeCall, ev)
		// Around them, events this subscriber must not see: another customer's call, its own
		// billing (not a call topic).
		s.publish(t, event.ExchangeCall, callEvent(t, b, uuid.NewString(), typ, 1))
		s.publish(t, event.ExchangeBilling, billingEvent(t, a, "billing.charged", int64(i+1)))
	}
	got := c.events(4)
	for i, f := range got {
		keys := make([]string, 0, len(f))
		for k := range f {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, envelopeKeys) {
			t.Errorf("frame %d keys = %v, want exactly the envelope's %v", i, keys, envelopeKeys)
		}
		want := published[i]
		data, _ := f["data"].(map[string]any)
		if f["event_id"] != want.EventID || f["event_type"] != want.EventType || f["customer_id"] != a ||
			f["resource_id"] != call || f["sequence"] != float64(i+1) || data["call_id"] != call {
			t.Errorf("frame %d = %v, want envelope of %s #%d", i, f, want.EventType, i+1)
		}
	}
	// A marker proves nothing else was queued before it.
	marker := callEvent(t, a, call, "call.updated", 5)
	s.publish(t, event.ExchangeCall, marker)
	if f := c.next(10 * time.Second); f["event_id"] != marker.EventID {
		t.Errorf("after the four call events, got %v, want the marker", f)
	}
	// The writer counts a frame once its write returned, which may be after the client read it.
	eventually(t, "ws_events_delivered_total to reach 5", func() bool { return s.metric(t, "ws_events_delivered_total") >= 5 })
	if got := s.metric(t, "ws_connections"); got != 2 {
		t.Errorf("ws_connections = %v, want 2", got)
	}
	if got := s.metric(t, "ws_subscriptions"); got != 2 {
		t.Errorf("ws_subscriptions = %v, want 2", got)
	}
}

func TestTopicFormsOnTheRealBroker(t *testing.T) {
	s := newStack(t, Options{})
	a, b := uuid.NewString(), uuid.NewString()
	x, y := uuid.NewString(), uuid.NewString()
	type evspec struct {
		name     string
		exchange string
		ev       event.Event
	}
	specs := []evspec{
		{"aX.created", event.ExchangeCall, callEvent(t, a, x, "call.created", 1)},
		{"aY.created", event.ExchangeCall, callEvent(t, a, y, "call.created", 1)},
		{"bX.created", event.ExchangeCall, callEvent(t, b, x, "call.created", 1)},
		{"a.charged", event.ExchangeBilling, billingEvent(t, a, "billing.charged", 1)},
		{"aX.ended", event.ExchangeCall, callEvent(t, a, x, "call.ended", 2)},
	}
	tests := []struct {
		token, topic string
		want         []string
	}{
		{"cust:" + a, "customer_id:" + a + ":call", []string{"aX.created", "aY.created", "aX.ended"}},
		{"cust:" + a, "customer_id:" + a + ":call:*", []string{"aX.created", "aY.created", "aX.ended"}},
		{"cust:" + a, "customer_id:" + a + ":call:" + x, []string{"aX.created", "aX.ended"}},
		{"cust:" + a, "customer_id:" + a + ":*", []string{"aX.created", "aY.created", "a.charged", "aX.ended"}},
		{"cust:" + a, "customer_id:" + a + ":billing_account", []string{"a.charged"}},
		{"cust:" + a, "customer_id:" + a + ":billing", []string{"a.charged"}},
		{"admin", "customer_id:*:call:" + x, []string{"aX.created", "bX.created", "aX.ended"}},
		{"admin", "customer_id:" + b + ":call", []string{"bX.created"}},
	}
	clients := make([]*client, len(tests))
	for i, tt := range tests {
		clients[i] = s.dial(t, tt.token)
		clients[i].subscribe(tt.topic)
	}
	for _, sp := range specs {
		s.publish(t, sp.exchange, sp.ev)
	}
	// Then one marker per customer and resource that every topic above matches at least once.
	markers := []event.Event{callEvent(t, a, x, "call.updated", 3), callEvent(t, b, x, "call.updated", 2), billingEvent(t, a, "billing.account_updated", 2)}
	for _, m := range markers {
		ex := event.ExchangeCall
		if m.ResourceType == "billing_account" {
			ex = event.ExchangeBilling
		}
		s.publish(t, ex, m)
	}
	names := map[string]string{}
	for _, sp := range specs {
		names[sp.ev.EventID] = sp.name
	}
	isMarker := map[string]bool{}
	for _, m := range markers {
		isMarker[m.EventID] = true
	}
	for i, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			c := clients[i]
			var got []string
			for {
				f := c.next(10 * time.Second)
				id, _ := f["event_id"].(string)
				if isMarker[id] {
					break // markers come last; the first one ends what the specs could bring
				}
				got = append(got, names[id])
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("received %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCrossCustomerSubscriptionRefused(t *testing.T) {
	s := newStack(t, Options{})
	a, b := uuid.NewString(), uuid.NewString()

	t.Run("with an id: error frame, connection kept", func(t *testing.T) {
		c := s.dial(t, "cust:"+a)
		c.send(map[string]any{"type": "subscribe", "id": "s1", "topics": []string{"customer_id:" + a + ":call", "customer_id:" + b + ":call"}})
		f := c.next(10 * time.Second)
		if f["type"] != "error" || f["id"] != "s1" || f["reason"] != ReasonPermissionDenied || !strings.Contains(f["message"].(string), b) {
			t.Fatalf("answer = %v, want error s1 PERMISSION_DENIED naming %s", f, b)
		}
		if s.routable(t, event.ExchangeCall, b) {
			t.Error("the refused customer's events are bound to this instance")
		}
		if s.routable(t, event.ExchangeCall, a) {
			t.Error("a refused frame applied its other, allowed topic: frames are all or nothing")
		}
		c.send(map[string]any{"type": "subscribe", "id": 2, "topics": []string{"customer_id:*:call"}})
		if f := c.next(10 * time.Second); f["type"] != "error" || f["id"] != float64(2) || f["reason"] != ReasonPermissionDenied {
			t.Fatalf("answer to the every-customer topic = %v, want error 2 PERMISSION_DENIED", f)
		}
		c.subscribe("customer_id:" + a + ":call")
		ev := callEvent(t, a, uuid.NewString(), "call.created", 1)
		s.publish(t, event.ExchangeCall, ev)
		if f := c.next(10 * time.Second); f["event_id"] != ev.EventID {
			t.Errorf("after the refusal, got %v, want the own event", f)
		}
	})

	t.Run("without an id: close 1008 with a reason", func(t *testing.T) {
		c := s.dial(t, "cust:"+a)
		c.send(map[string]any{"type": "subscribe", "topics": []string{"customer_id:" + b + ":call:*"}})
		ce := c.closeError(10 * time.Second)
		if ce.Code != websocket.ClosePolicyViolation || !strings.HasPrefix(ce.Text, "PERMISSION_DENIED: ") {
			t.Errorf("close = %d %q, want 1008 PERMISSION_DENIED: …", ce.Code, ce.Text)
		}
		eventually(t, "the refused connection to be counted", func() bool {
			return s.metric(t, "ws_disconnections_total", "reason", causePolicy) >= 1
		})
	})

	t.Run("superadmin may subscribe to any customer", func(t *testing.T) {
		c := s.dial(t, "admin")
		c.subscribe("customer_id:" + b + ":call")
		ev := callEvent(t, b, uuid.NewString(), "call.created", 1)
		s.publish(t, event.ExchangeCall, ev)
		if f := c.next(10 * time.Second); f["event_id"] != ev.EventID {
			t.Errorf("superadmin got %v, want the event of %s", f, b)
		}
	})
}

func TestFrameErrors(t *testing.T) {
	s := newStack(t, Options{MaxTopics: 3, MaxFrameBytes: 1024})
	a := uuid.NewString()
	own := "customer_id:" + a + ":call"
	tests := []struct {
		name       string
		frame      any // a JSON value, or []byte sent as text, or websocket.BinaryMessage payload via binary
		binary     bool
		wantError  string // reason of an error frame (frames with an id)
		wantClose  int    // close code (frames without an id)
		wantReason string // prefix of the close text
	}{
		{name: "not JSON", frame: []byte("hello"), wantClose: 1008, wantReason: ReasonInvalidFrame},
		{name: "unknown type with id", frame: map[string]any{"type": "publish", "id": "f", "topics": []string{own}}, wantError: ReasonInvalidFrame},
		{name: "unknown type without id", frame: map[string]any{"type": "publish", "topics": []string{own}}, wantClose: 1008, wantReason: ReasonInvalidFrame},
		{name: "malformed topic with id", frame: map[string]any{"type": "subscribe", "id": "f", "topics": []string{"calls"}}, wantError: ReasonInvalidTopic},
		{name: "malformed topic without id", frame: map[string]any{"type": "subscribe", "topics": []string{"customer_id:" + a}}, wantClose: 1008, wantReason: ReasonInvalidTopic},
		{name: "malformed unsubscribe with id", frame: map[string]any{"type": "unsubscribe", "id": "f", "topics": []string{"x:y"}}, wantError: ReasonInvalidTopic},
		{name: "no topics with id", frame: map[string]any{"type": "subscribe", "id": "f", "topics": []string{}}, wantError: ReasonInvalidFrame},
		{name: "too many topics with id", frame: map[string]any{"type": "subscribe", "id": "f",
			"topics": []string{own + ":1", own + ":2", own + ":3", own + ":4"}}, wantError: ReasonTooManyTopics},
		{name: "binary frame", frame: []byte(`{"type":"subscribe"}`), binary: true, wantClose: 1003, wantReason: ReasonInvalidFrame},
		{name: "frame too large", frame: []byte(`{"type":"subscribe","topics":["` + strings.Repeat("x", 2000) + `"]}`), wantClose: 1009},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.dial(t, "cust:"+a)
			switch f := tt.frame.(type) {
			case []byte:
				typ := websocket.TextMessage
				if tt.binary {
					typ = websocket.BinaryMessage
				}
				if err := c.ws.WriteMessage(typ, f); err != nil {
					t.Fatal(err)
				}
			default:
				c.send(f)
			}
			if tt.wantError != "" {
				f := c.next(10 * time.Second)
				if f["type"] != "error" || f["id"] != "f" || f["reason"] != tt.wantError {
					t.Fatalf("answer = %v, want error f %s", f, tt.wantError)
				}
				c.subscribe(own) // still usable
				return
			}
			ce := c.closeError(10 * time.Second)
			if ce.Code != tt.wantClose || !strings.HasPrefix(ce.Text, tt.wantReason) {
				t.Errorf("close = %d %q, want %d %s…", ce.Code, ce.Text, tt.wantClose, tt.wantReason)
			}
		})
	}

	t.Run("topic limit spans frames", func(t *testing.T) {
		c := s.dial(t, "cust:"+a)
		c.subscribe(own+":1", own+":2")
		c.subscribe(own+":2", own+":3") // :2 again is no new topic
		c.send(map[string]any{"type": "subscribe", "id": "f", "topics": []string{own + ":4"}})
		if f := c.next(10 * time.Second); f["type"] != "error" || f["reason"] != ReasonTooManyTopics {
			t.Fatalf("fourth topic: %v, want error TOO_MANY_TOPICS", f)
		}
	})
}

func TestUnsubscribeAndBindingReferenceCounts(t *testing.T) {
	s := newStack(t, Options{})
	a := uuid.NewString()
	calls, billing := "customer_id:"+a+":call", "customer_id:"+a+":billing_account"

	c1 := s.dial(t, "cust:"+a)
	c1.subscribe(calls, billing)
	c2 := s.dial(t, "cust:"+a)
	c2.subscribe(calls)
	if got := s.metric(t, "ws_bindings"); got != 1 {
		t.Errorf("ws_bindings with two connections of one customer = %v, want 1", got)
	}

	// c1 drops the call topic: it must stop getting call events, and keep billing ones.
	c1.send(map[string]any{"type": "unsubscribe", "id": "u1", "topics": []string{calls + ":*"}}) // same topic, other spelling
	if f := c1.next(10 * time.Second); f["type"] != "ack" || f["id"] != "u1" {
		t.Fatalf("unsubscribe answer = %v, want ack u1", f)
	}
	callEv := callEvent(t, a, uuid.NewString(), "call.created", 1)
	billEv := billingEvent(t, a, "billing.charged", 1)
	s.publish(t, event.ExchangeCall, callEv)
	s.publish(t, event.ExchangeBilling, billEv)
	if f := c1.next(10 * time.Second); f["event_id"] != billEv.EventID {
		t.Errorf("c1 after unsubscribing calls got %v, want only the billing event", f["event_type"])
	}
	if f := c2.next(10 * time.Second); f["event_id"] != callEv.EventID {
		t.Errorf("c2 got %v, want the call event", f["event_type"])
	}

	// Closing connections gives their references back; the last one unbinds the customer.
	_ = c2.ws.Close()
	eventually(t, "c2 to be gone", func() bool { return s.metric(t, "ws_connections") == 1 })
	if !s.routable(t, event.ExchangeCall, a) {
		t.Fatal("customer unbound while c1 still holds a topic")
	}
	c1.send(map[string]any{"type": "unsubscribe", "id": "u2", "topics": []string{billing}})
	if f := c1.next(10 * time.Second); f["type"] != "ack" {
		t.Fatalf("unsubscribe answer = %v, want ack", f)
	}
	if s.routable(t, event.ExchangeCall, a) || s.routable(t, event.ExchangeBilling, a) {
		t.Error("customer still bound after every topic of it was dropped")
	}
	if got := s.metric(t, "ws_bindings"); got != 0 {
		t.Errorf("ws_bindings = %v, want 0", got)
	}
	if got := s.metric(t, "ws_subscriptions"); got != 0 {
		t.Errorf("ws_subscriptions = %v, want 0", got)
	}
	// Unsubscribing what is not held is a no-op that still answers.
	c1.send(map[string]any{"type": "unsubscribe", "id": "u3", "topics": []string{calls}})
	if f := c1.next(10 * time.Second); f["type"] != "ack" {
		t.Errorf("unsubscribe of a topic not held = %v, want ack", f)
	}

	// A connection that ends without unsubscribing releases too.
	c3 := s.dial(t, "cust:"+a)
	c3.subscribe(calls)
	if !s.routable(t, event.ExchangeCall, a) {
		t.Fatal("customer not bound after a subscribe was acked")
	}
	_ = c3.ws.Close()
	eventually(t, "the closed connection's binding to go", func() bool { return !s.routable(t, event.ExchangeCall, a) })
}

func TestPingKeepsAliveAndReadDeadlineDropsSilentClients(t *testing.T) {
	s := newStack(t, Options{PingInterval: 50 * time.Millisecond, ReadTimeout: 400 * time.Millisecond})
	a := uuid.NewString()

	// Handlers are set before the client starts reading.
	aliveWS, _, err := s.tryDial("cust:"+a, nil)
	if err != nil {
		t.Fatal(err)
	}
	pings := make(chan struct{}, 1000)
	aliveWS.SetPingHandler(func(data string) error {
		pings <- struct{}{}
		return aliveWS.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	alive := newClient(t, aliveWS)
	silent, _, err := s.tryDial("cust:"+a, nil)
	if err != nil {
		t.Fatal(err)
	}
	silent.SetPingHandler(func(string) error { return nil }) // reads, but never answers a ping
	silentC := newClient(t, silent)

	// Twenty pings take 1 s, well past the 400 ms read deadline: pongs must have extended it.
	for i := range 20 {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatalf("ping %d did not come", i+1)
		}
	}
	alive.subscribe("customer_id:" + a + ":call")

	ce := silentC.closeError(10 * time.Second)
	if ce.Code != websocket.CloseGoingAway || !strings.HasPrefix(ce.Text, ReasonReadTimeout) {
		t.Errorf("silent client closed with %d %q, want 1001 READ_TIMEOUT…", ce.Code, ce.Text)
	}
	eventually(t, "the read timeout to be counted", func() bool {
		return s.metric(t, "ws_disconnections_total", "reason", causeReadTimeout) == 1
	})
}

func TestShutdownClosesConnections(t *testing.T) {
	s := newStack(t, Options{})
	a := uuid.NewString()
	c := s.dial(t, "cust:"+a)
	c.subscribe("customer_id:" + a + ":call")
	if err := s.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	ce := c.closeError(10 * time.Second)
	if ce.Code != websocket.CloseGoingAway || !strings.HasPrefix(ce.Text, ReasonShuttingDown) {
		t.Errorf("close = %d %q, want 1001 SHUTTING_DOWN…", ce.Code, ce.Text)
	}
	_, resp, err := s.tryDial("cust:"+a, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after shutdown: %v, %v; want 503", err, resp)
	}
	if got := s.metric(t, "ws_connections"); got != 0 {
		t.Errorf("ws_connections after shutdown = %v, want 0", got)
	}
}

func TestBindingRefusedByTheBroker(t *testing.T) {
	fb := newFakeBinder()
	fb.failOn[event.ExchangeCall] = true
	s := newStackOn(t, testenv.Rabbit(t), Options{}, func(h *Handler) {
		h.bindings = newBindings(fb, h.opts.Exchanges, func(d int) { h.metrics.bindings.Add(float64(d)) })
	})
	a := uuid.NewString()
	topic := "customer_id:" + a + ":call"

	c := s.dial(t, "cust:"+a)
	c.send(map[string]any{"type": "subscribe", "id": "b1", "topics": []string{topic}})
	if f := c.next(10 * time.Second); f["type"] != "error" || f["id"] != "b1" || f["reason"] != ReasonServiceUnavailable {
		t.Fatalf("answer = %v, want error b1 SERVICE_UNAVAILABLE", f)
	}
	if bound, _ := fb.snapshot(); len(bound) != 0 {
		t.Errorf("bindings left after the refusal: %v", bound)
	}
	if got := s.metric(t, "ws_subscriptions"); got != 0 {
		t.Errorf("ws_subscriptions = %v, want 0", got)
	}

	c2 := s.dial(t, "cust:"+a)
	c2.send(map[string]any{"type": "subscribe", "topics": []string{topic}})
	ce := c2.closeError(10 * time.Second)
	if ce.Code != websocket.CloseTryAgainLater || !strings.HasPrefix(ce.Text, ReasonServiceUnavailable) {
		t.Errorf("close = %d %q, want 1013 SERVICE_UNAVAILABLE…", ce.Code, ce.Text)
	}

	// Once the broker takes bindings again, the same connection subscribes.
	fb.mu.Lock()
	fb.failOn = map[string]bool{}
	fb.mu.Unlock()
	c.subscribe(topic)
	if got := s.metric(t, "ws_bindings"); got != 1 {
		t.Errorf("ws_bindings = %v, want 1", got)
	}
}

func TestNotReadyUntilTheQueueIsConsumed(t *testing.T) {
	conn := testenv.Rabbit(t)
	// Another service's queue bound to everything on call.events (as webhook-manager's is) must
	// not make this instance look ready.
	foreign := testenv.Name("foreign")
	ctx := context.Background()
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(foreign, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	testenv.DeleteQueuesAtCleanup(t, conn, foreign)
	for _, ex := range []string{event.ExchangeCall, ProbeExchange} {
		if err := event.DeclareExchange(ch, ex); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.QueueBind(foreign, "#", event.ExchangeCall, false, nil); err != nil {
		t.Fatal(err)
	}

	h := NewHandler(Deps{Conn: conn, Log: testenv.Logger(t), Auth: AuthFunc(fakeAuth{}.Authenticate)})
	srv := httptest.NewServer(h)
	defer srv.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1.0/ws?token=cust:" + uuid.NewString()
	if err := h.Check(ctx); err == nil {
		t.Fatal("Check before Run: want an error")
	}
	_, resp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upgrade before Run: %v %v, want 503", err, resp)
	}
	var body map[string]map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if body["error"]["reason"] != ReasonEventStreamNotYet || resp.Header.Get("Retry-After") == "" {
		t.Errorf("refusal before Run = %v (Retry-After %q), want %s with Retry-After", body, resp.Header.Get("Retry-After"), ReasonEventStreamNotYet)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	eventually(t, "Check to pass once Run consumes", func() bool { return h.Check(ctx) == nil })
	// Nothing reached the other service's queue: probes go to their own exchange.
	if msg, ok, err := ch.Get(foreign, true); err != nil || ok {
		t.Errorf("foreign queue got %q (%v), want nothing", msg.RoutingKey, err)
	}
	c, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("upgrade once ready: %v", err)
	}
	c.Close()
}
