package ws

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/testenv"
)

// fakeAuth stands in for the gateway's authenticator: "cust:<id>" is a customer, "admin" a
// superadmin, anything else invalid. It reads the credential where the real one does.
type fakeAuth struct{}

func (fakeAuth) Authenticate(r *http.Request) (Identity, error) {
	tok := r.URL.Query().Get("token")
	if tok == "" {
		tok = r.URL.Query().Get("accesskey")
	}
	if tok == "" {
		tok, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	if tok == "" {
		if c, err := r.Cookie("token"); err == nil {
			tok = c.Value
		}
	}
	switch {
	case tok == "":
		return Identity{}, apierr.New(apierr.Unauthenticated, "AUTHENTICATION_REQUIRED", "credentials are required")
	case tok == "admin":
		return Identity{Superadmin: true}, nil
	case strings.HasPrefix(tok, "cust:"):
		return Identity{CustomerID: strings.TrimPrefix(tok, "cust:")}, nil
	}
	return Identity{}, apierr.New(apierr.Unauthenticated, "INVALID_CREDENTIALS", "invalid token")
}

// stack is the endpoint served over loopback, consuming the real broker.
type stack struct {
	h    *Handler
	srv  *httptest.Server
	conn *amqp.Conn
	reg  *prometheus.Registry
	url  string // ws://…/v1.0/ws

	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	runErr   error
	srvOnce  sync.Once
}

// closeServer stops the HTTP server (after stop, which closed the connections).
func (s *stack) closeServer() { s.srvOnce.Do(s.srv.Close) }

func newStack(t testing.TB, opts Options) *stack {
	t.Helper()
	return newStackOn(t, testenv.Rabbit(t), opts, nil)
}

// newStackOn serves a handler consuming conn; prepare, if given, may adjust the handler before
// anything runs.
func newStackOn(t testing.TB, conn *amqp.Conn, opts Options, prepare func(*Handler)) *stack {
	t.Helper()
	s := &stack{conn: conn, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	s.h = NewHandler(Deps{Conn: conn, Log: testenv.Logger(t), Registerer: s.reg, Auth: AuthFunc(fakeAuth{}.Authenticate), Options: opts})
	if prepare != nil {
		prepare(s.h)
	}
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	go func() { s.done <- s.h.Run(ctx) }()
	// What the gateway's middleware does before the route: a request id in the context.
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if id == "" {
			id = telemetry.NewRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		s.h.ServeHTTP(w, r.WithContext(telemetry.WithRequestID(r.Context(), id)))
	}))
	s.url = "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/v1.0/ws"
	t.Cleanup(func() {
		if err := s.stop(t); err != nil {
			t.Errorf("Run: %v", err)
		}
		s.closeServer()
	})
	testenv.Eventually(t, 20*time.Second, "the event stream to be ready", func() bool { return s.h.Check(ctx) == nil })
	return s
}

// stop ends Run (closing every connection) and returns its error; later calls return the same.
func (s *stack) stop(t testing.TB) error {
	t.Helper()
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case s.runErr = <-s.done:
		case <-time.After(30 * time.Second):
			s.runErr = errors.New("Run did not return within 30 s of its context ending")
		}
	})
	return s.runErr
}

func (s *stack) publish(t testing.TB, exchange string, ev event.Event) {
	t.Helper()
	if err := s.tryPublish(exchange, ev, false); err != nil {
		t.Fatalf("publish %s: %v", ev.EventType, err)
	}
}

// tryPublish publishes ev; mandatory makes it fail with amqp.ErrUnroutable when no queue is bound.
func (s *stack) tryPublish(exchange string, ev event.Event, mandatory bool) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.conn.Publish(ctx, exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{ContentType: "application/json", MessageId: ev.EventID, Body: body},
		amqp.PublishOptions{Mandatory: mandatory})
}

// routable reports whether an event of customer on exchange would reach some queue now.
func (s *stack) routable(t testing.TB, exchange, customer string) bool {
	t.Helper()
	ev := callEvent(t, customer, uuid.NewString(), "call.updated", 1)
	err := s.tryPublish(exchange, ev, true)
	if err != nil && !errors.Is(err, amqp.ErrUnroutable) {
		t.Fatalf("mandatory publish: %v", err)
	}
	return err == nil
}

func (s *stack) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return metricValue(t, s.reg, name, labels...)
}

// metricValue reads a gauge or counter; labels are name/value pairs.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func callEvent(t testing.TB, customer, callID, typ string, seq int64) event.Event {
	t.Helper()
	ev, err := event.New(typ, customer, "call", callID, seq, map[string]any{"id": callID, "call_id": callID,
		"customer_id": customer, "status": strings.TrimPrefix(typ, "call.")})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func billingEvent(t testing.TB, customer, typ string, seq int64) event.Event {
	t.Helper()
	ev, err := event.New(typ, customer, "billing_account", "acc-"+customer[:8], seq, map[string]any{"balance": 1000000})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// client is a WebSocket client that reads in the background.
type client struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan []byte
	closed chan struct{}
	err    error // the read error that ended it, set before closed is closed
}

func (s *stack) dial(t testing.TB, token string) *client {
	t.Helper()
	c, resp, err := s.tryDial(token, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	return newClient(t, c)
}

func (s *stack) tryDial(token string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	u := s.url
	if token != "" {
		u += "?token=" + token
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return websocket.DefaultDialer.DialContext(ctx, u, hdr)
}

func newClient(t testing.TB, ws *websocket.Conn) *client {
	c := &client{t: t, ws: ws, frames: make(chan []byte, 10000), closed: make(chan struct{})}
	t.Cleanup(func() { _ = ws.Close() })
	go func() {
		defer close(c.closed)
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			c.frames <- data
		}
	}()
	return c
}

func (c *client) send(v any) {
	c.t.Helper()
	if err := c.ws.WriteJSON(v); err != nil {
		c.t.Fatalf("send frame: %v", err)
	}
}

// next returns the next frame as a JSON object.
func (c *client) next(timeout time.Duration) map[string]any {
	c.t.Helper()
	select {
	case data := <-c.frames:
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			c.t.Fatalf("frame is not a JSON object: %q", data)
		}
		return m
	case <-c.closed:
		c.t.Fatalf("connection ended while waiting for a frame: %v", c.err)
	case <-time.After(timeout):
		c.t.Fatalf("no frame within %s", timeout)
	}
	return nil
}

// subscribe sends a subscribe frame with an id and waits for its ack.
func (c *client) subscribe(topics ...string) {
	c.t.Helper()
	id := uuid.NewString()
	c.send(map[string]any{"type": "subscribe", "id": id, "topics": topics})
	if got := c.next(10 * time.Second); got["type"] != "ack" || got["id"] != id {
		c.t.Fatalf("answer to subscribe %v = %v, want ack %s", topics, got, id)
	}
}

// closeError waits for the connection to end and returns the close frame the server sent.
func (c *client) closeError(timeout time.Duration) *websocket.CloseError {
	c.t.Helper()
	select {
	case <-c.closed:
	case <-time.After(timeout):
		c.t.Fatalf("connection still open after %s", timeout)
	}
	var ce *websocket.CloseError
	if !errors.As(c.err, &ce) {
		c.t.Fatalf("connection ended with %v, want a close frame", c.err)
	}
	return ce
}

// eventTypes reads n frames and returns their event types, failing on anything but an envelope.
func (c *client) events(n int) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	for range n {
		f := c.next(10 * time.Second)
		if _, ok := f["event_type"]; !ok {
			c.t.Fatalf("frame %v is not an event envelope", f)
		}
		out = append(out, f)
	}
	return out
}

// eventually polls cond for up to 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, what, cond)
}
