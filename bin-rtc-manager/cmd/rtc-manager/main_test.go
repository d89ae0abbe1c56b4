package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-rtc-manager/internal/carrier"
	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// node is an rtc manager running in this process against the real broker and Redis.
type node struct {
	id     string
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer

	stopOnce sync.Once
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func nodeEnv(t *testing.T, rabbitURL, nodeID, trunk string, extra map[string]string) (map[string]string, string) {
	sipAddr := "127.0.0.1:0"
	env := map[string]string{
		"RABBITMQ_ADDRESS": rabbitURL, "REDIS_ADDRESS": testenv.RedisAddress(), "ADMIN_ADDRESS": "127.0.0.1:0",
		"NODE_ID": nodeID, "SIP_LISTEN_ADDRESS": sipAddr, "RTC_TEL_TRUNK_URI": "sip:{number}@" + trunk, "LOG_LEVEL": "debug",
		"RTC_SIP_ALLOWED_NETWORKS": "127.0.0.0/8", // sipp peers on loopback, as in the local stack
	}
	for k, v := range extra {
		env[k] = v
	}
	return env, sipAddr
}

// waitServing waits until a node consumes both the shared queue and its own.
func waitServing(t *testing.T, rtc *rtcapi.Client, nodeID string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, "node "+nodeID+" to serve its queues", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := rtc.GetDialog(ctx, nodeID, "probe")
		if !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
			return false
		}
		return apierr.HasReason(rtc.Hangup(ctx, "", "probe"), rtcapi.ErrReasonDialogNotFound)
	})
}

func startNode(t *testing.T, rabbitURL, trunk string, extra map[string]string) *node {
	t.Helper()
	return startNodeID(t, rabbitURL, testenv.Name("node"), trunk, extra)
}

func startNodeID(t *testing.T, rabbitURL, id, trunk string, extra map[string]string) *node {
	t.Helper()
	n := &node{id: id, done: make(chan error, 1), logs: &syncBuffer{}}
	env, _ := nodeEnv(t, rabbitURL, n.id, trunk, extra)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- run(ctx, nil, func(k string) string { return env[k] }, n.logs) }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("node %s logs:\n%s", n.id, n.logs.String())
		}
	})
	return n
}

func (n *node) stop(t *testing.T) {
	t.Helper()
	n.stopOnce.Do(func() {
		n.cancel()
		select {
		case err := <-n.done:
			if err != nil {
				t.Errorf("run() = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("node did not stop in 30 s")
		}
	})
}

// events collects rtc.events of one customer.
type events struct {
	mu  sync.Mutex
	all []event.Event
}

func (e *events) byCall(callID string) []event.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []event.Event
	for _, ev := range e.all {
		if ev.ResourceID == callID {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events) ended(callID string) (rtcapi.Event, bool) {
	for _, ev := range e.byCall(callID) {
		if ev.EventType == rtcapi.EventEnded {
			var d rtcapi.Event
			_ = json.Unmarshal(ev.Data, &d)
			return d, true
		}
	}
	return rtcapi.Event{}, false
}

func subscribe(t *testing.T, conn *amqp.Conn, customerID string) *events {
	t.Helper()
	q := testenv.Name("rtc_events_test")
	e := &events{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = conn.Consume(ctx, amqp.ConsumeSpec{AutoAck: true, Setup: func(ch *amqp.Channel) (string, error) {
			if err := ch.ExchangeDeclare(event.ExchangeRTC, "topic", true, false, false, false, nil); err != nil {
				return "", err
			}
			if _, err := ch.QueueDeclare(q, false, true, true, false, nil); err != nil {
				return "", err
			}
			if err := ch.QueueBind(q, event.CustomerKey(customerID), event.ExchangeRTC, false, nil); err != nil {
				return "", err
			}
			once.Do(func() { close(ready) })
			return q, nil
		}}, func(_ context.Context, d amqp.Delivery) {
			var ev event.Event
			if err := json.Unmarshal(d.Body, &ev); err != nil {
				t.Errorf("undecodable event: %s", d.Body)
				return
			}
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("event queue not ready")
	}
	return e
}

func startCarrier(t *testing.T) *carrier.Server {
	t.Helper()
	s, err := carrier.New("127.0.0.1:0", testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

type world struct {
	conn     *amqp.Conn
	rtc      *rtcapi.Client
	customer string
	events   *events
	sim      *carrier.Server
	url      string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	url, _ := testenv.RabbitVhost(t) // a broker of our own: the shared rtc queue is not shared with other tests
	conn := testenv.DialRabbit(t, url)
	client := rpc.NewClient(conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(client.Close)
	w := &world{conn: conn, rtc: rtcapi.NewClient(client), customer: uuid.NewString(), sim: startCarrier(t), url: url}
	w.events = subscribe(t, conn, w.customer)
	return w
}

// node starts a node on the world's broker and waits until it serves.
func (w *world) node(t *testing.T, extra map[string]string) *node {
	t.Helper()
	n := startNode(t, w.url, w.sim.Addr(), extra)
	waitServing(t, w.rtc, n.id)
	return n
}

func (w *world) dial(t *testing.T, dst callapi.Address, dialTimeout int) (string, rtcapi.DialResponse) {
	t.Helper()
	callID := testenv.Name("call")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := w.rtc.Dial(ctx, rtcapi.DialRequest{CallID: callID, CustomerID: w.customer,
		Source: callapi.Address{Type: "tel", Target: "+15550001111"}, Destination: dst, DialTimeout: dialTimeout})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return callID, resp
}

func (w *world) waitEnded(t *testing.T, callID string, timeout time.Duration) rtcapi.Event {
	t.Helper()
	var end rtcapi.Event
	testenv.Eventually(t, timeout, "rtc.ended of "+callID, func() bool {
		var ok bool
		end, ok = w.events.ended(callID)
		return ok
	})
	return end
}

// check asserts the event types in order with sequence 1, 2, … and the ended event's outcome.
func (w *world) check(t *testing.T, callID string, types []string, want rtcapi.Event, talk time.Duration) {
	t.Helper()
	end := w.waitEnded(t, callID, 30*time.Second)
	evs := w.events.byCall(callID)
	var got []string
	var answeredAt time.Time
	for i, ev := range evs {
		got = append(got, ev.EventType)
		if ev.Sequence != int64(i+1) {
			t.Errorf("event %d (%s, id %s) has sequence %d, want %d", i, ev.EventType, ev.EventID, ev.Sequence, i+1)
		}
		if ev.CustomerID != w.customer || ev.ResourceType != "call" || ev.ResourceID != callID || ev.EventID == "" {
			t.Errorf("bad envelope %+v", ev)
		}
		if ev.EventType == rtcapi.EventAnswered {
			var d rtcapi.Event
			_ = json.Unmarshal(ev.Data, &d)
			answeredAt = d.At
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(types) {
		t.Errorf("events = %v, want %v", got, types)
	}
	if end.SIPCode != want.SIPCode || end.Cause != want.Cause || end.By != want.By || end.Reason != want.Reason || end.CallID != callID {
		t.Errorf("ended = %+v, want sip_code %d cause %d by %q reason %q", end, want.SIPCode, want.Cause, want.By, want.Reason)
	}
	if talk > 0 {
		if d := end.At.Sub(answeredAt); d < talk-100*time.Millisecond || d > talk+2*time.Second {
			t.Errorf("answered for %s, want about %s", d, talk)
		}
	}
}

var (
	ringAnswerEnd = []string{rtcapi.EventRinging, rtcapi.EventAnswered, rtcapi.EventEnded}
	ringEnd       = []string{rtcapi.EventRinging, rtcapi.EventEnded}
)

func tel(n string) callapi.Address { return callapi.Address{Type: "tel", Target: n} }

func TestCallsThroughRPC(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, nil)

	hangup := func(t *testing.T, nodeID, callID string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.rtc.Hangup(ctx, nodeID, callID); err != nil {
			t.Fatalf("Hangup: %v", err)
		}
	}
	waitType := func(t *testing.T, callID, typ string) {
		testenv.Eventually(t, 10*time.Second, typ, func() bool {
			for _, ev := range w.events.byCall(callID) {
				if ev.EventType == typ {
					return true
				}
			}
			return false
		})
	}

	tests := []struct {
		name     string
		scenario string // sipp scenario, or "" for the carrier simulator
		args     []string
		number   string // carrier number
		timeout  int
		act      func(t *testing.T, callID string, resp rtcapi.DialResponse)
		types    []string
		want     rtcapi.Event
		talk     time.Duration
	}{
		{name: "sipp answers then hangs up", scenario: "uas_answer_bye.xml", args: []string{"-d", "1000"}, types: ringAnswerEnd,
			want: rtcapi.Event{SIPCode: 200, Cause: 16, By: "remote"}, talk: time.Second},
		{name: "sipp busy", scenario: "uas_busy.xml", types: ringEnd, want: rtcapi.Event{SIPCode: 486, Cause: 17, By: "remote"}},
		{name: "sipp 503", scenario: "uas_503.xml", types: []string{rtcapi.EventEnded}, want: rtcapi.Event{SIPCode: 503, Cause: 41, By: "remote"}},
		{name: "sipp no answer", scenario: "uas_noanswer.xml", timeout: 1, types: ringEnd,
			want: rtcapi.Event{SIPCode: 487, Cause: 19, By: "local", Reason: "noanswer"}},
		{name: "local hangup before answer", scenario: "uas_noanswer.xml", types: ringEnd,
			act: func(t *testing.T, callID string, resp rtcapi.DialResponse) {
				waitType(t, callID, rtcapi.EventRinging)
				hangup(t, resp.NodeID, callID)
			}, want: rtcapi.Event{SIPCode: 487, Cause: 16, By: "local"}},
		{name: "local hangup after answer", scenario: "uas_answer_wait.xml", types: ringAnswerEnd,
			act: func(t *testing.T, callID string, resp rtcapi.DialResponse) {
				waitType(t, callID, rtcapi.EventAnswered)
				hangup(t, resp.NodeID, callID)
			}, want: rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}},
		{name: "carrier answers and hangs up after 1 s", number: "+1200000001", types: ringAnswerEnd,
			want: rtcapi.Event{SIPCode: 200, Cause: 16, By: "remote"}, talk: time.Second},
		{name: "carrier busy", number: "+1486000000", types: ringEnd, want: rtcapi.Event{SIPCode: 486, Cause: 17, By: "remote"}},
		{name: "carrier 404", number: "+1404000000", types: []string{rtcapi.EventEnded}, want: rtcapi.Event{SIPCode: 404, Cause: 1, By: "remote"}},
		{name: "carrier 403", number: "+1403000000", types: ringEnd, want: rtcapi.Event{SIPCode: 403, Cause: 21, By: "remote"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dst := tel(tt.number)
			var peer *siptest.Sipp
			if tt.scenario != "" {
				peer = siptest.StartSipp(t, tt.scenario, false, tt.args...)
				dst = callapi.Address{Type: "sip", Target: "+15550009999@" + peer.Addr}
			}
			callID, resp := w.dial(t, dst, tt.timeout)
			if resp.NodeID != n.id || resp.SIPCallID == "" {
				t.Errorf("Dial() = %+v, want node %s and a SIP Call-ID", resp, n.id)
			}
			if tt.act != nil {
				tt.act(t, callID, resp)
			}
			w.check(t, callID, tt.types, tt.want, tt.talk)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d, err := w.rtc.GetDialog(ctx, n.id, callID)
			if err != nil || d.State != "ended" || d.SIPCallID != resp.SIPCallID {
				t.Errorf("GetDialog() = %+v, %v; want ended", d, err)
			}
			if peer != nil {
				peer.Wait(t, 20*time.Second)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name   string
		req    rtcapi.DialRequest
		reason string
	}{
		{"bad tel number", rtcapi.DialRequest{CallID: "c1", CustomerID: "x", Destination: tel("12345")}, apierr.ReasonInvalidArgument},
		{"bad sip target", rtcapi.DialRequest{CallID: "c1", CustomerID: "x", Destination: callapi.Address{Type: "sip", Target: "no host"}}, apierr.ReasonInvalidArgument},
		{"bad type", rtcapi.DialRequest{CallID: "c1", CustomerID: "x", Destination: callapi.Address{Type: "fax", Target: "1"}}, apierr.ReasonInvalidArgument},
		{"no call id", rtcapi.DialRequest{CustomerID: "x", Destination: tel("+15550001111")}, apierr.ReasonInvalidArgument},
		{"bad source", rtcapi.DialRequest{CallID: "c1", CustomerID: "x", Source: tel("nope"), Destination: tel("+15550001111")}, apierr.ReasonInvalidArgument},
		{"source name with CR LF", rtcapi.DialRequest{CallID: "c1", CustomerID: "x",
			Source: callapi.Address{Type: "tel", Target: "+15550001111", Name: "x\r\nRoute: <sip:evil>"}, Destination: tel("+15550001111")}, apierr.ReasonInvalidArgument},
		// Loopback is allowed (RTC_SIP_ALLOWED_NETWORKS), the trunk is not: it is reached as tel only.
		{"the trunk as a sip destination", rtcapi.DialRequest{CallID: "c1", CustomerID: "x",
			Destination: callapi.Address{Type: "sip", Target: "+1200000003@" + w.sim.Addr()}}, apierr.ReasonInvalidArgument},
		{"a private sip destination", rtcapi.DialRequest{CallID: "c1", CustomerID: "x",
			Destination: callapi.Address{Type: "sip", Target: "bob@10.0.0.1"}}, apierr.ReasonInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := w.rtc.Dial(ctx, tt.req)
			if !apierr.HasReason(err, tt.reason) {
				t.Errorf("Dial() error = %v, want reason %s", err, tt.reason)
			}
		})
	}
	if err := w.rtc.Hangup(ctx, n.id, "no-such-call"); !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
		t.Errorf("Hangup(unknown) = %v, want %s", err, rtcapi.ErrReasonDialogNotFound)
	}
	if err := w.rtc.Hangup(ctx, "", "no-such-call"); !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
		t.Errorf("Hangup(unknown, shared queue) = %v, want %s", err, rtcapi.ErrReasonDialogNotFound)
	}
	if _, err := w.rtc.GetDialog(ctx, "node-that-does-not-exist", "x"); !apierr.HasReason(err, apierr.ReasonServiceUnavailable) {
		t.Errorf("GetDialog(dead node) = %v, want %s at once", err, apierr.ReasonServiceUnavailable)
	}
	// A redelivered dial answers as the first did and sends no second INVITE.
	callID := testenv.Name("call")
	req := rtcapi.DialRequest{CallID: callID, CustomerID: w.customer, Destination: tel("+1200000001")}
	first, err := w.rtc.Dial(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := w.rtc.Dial(ctx, req)
	if err != nil || again != first {
		t.Errorf("second Dial() = %+v, %v; want %+v", again, err, first)
	}
	w.check(t, callID, ringAnswerEnd, rtcapi.Event{SIPCode: 200, Cause: 16, By: "remote"}, time.Second)
}

// Shutdown ends live dialogs cleanly and publishes their outcomes before run returns.
func TestGracefulShutdownEndsDialogs(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, nil)
	ringing, _ := w.dial(t, tel("+1180000000"), 0)
	talking, _ := w.dial(t, tel("+1200000000"), 0)
	testenv.Eventually(t, 10*time.Second, "one ringing and one answered call", func() bool {
		return len(w.events.byCall(ringing)) == 1 && len(w.events.byCall(talking)) == 2
	})
	n.stop(t)
	w.check(t, ringing, ringEnd, rtcapi.Event{SIPCode: 487, Cause: 16, By: "local"}, 0)
	w.check(t, talking, ringAnswerEnd, rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}, 0)
	testenv.Eventually(t, 5*time.Second, "the carrier to see the BYE", func() bool { return w.sim.Active() == 0 })
}

// The max duration ends an answered call with a BYE and reason timeout.
func TestMaxDuration(t *testing.T) {
	w := newWorld(t)
	w.node(t, map[string]string{"RTC_MAX_DURATION": "1s"})
	callID, _ := w.dial(t, tel("+1200000000"), 0)
	w.check(t, callID, ringAnswerEnd, rtcapi.Event{SIPCode: 200, Cause: 16, By: "local", Reason: "timeout"}, time.Second)
}

// The quota through the real RPC: a dial carries a 1 s quota, the owning node's queue raises it to
// 3 s (a lower one after that changes nothing), and the node ends the call itself 3 s after the
// answer with balance_exhausted; a quota for an ended dialog is DIALOG_NOT_FOUND.
func TestQuotaThroughRPC(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, nil)
	callID := testenv.Name("call")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.rtc.Dial(ctx, rtcapi.DialRequest{CallID: callID, CustomerID: w.customer,
		Source: callapi.Address{Type: "tel", Target: "+15550001111"}, Destination: tel("+1200000000"), Quota: 1}); err != nil {
		t.Fatalf("Dial: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "the answer", func() bool {
		d, err := w.rtc.GetDialog(ctx, n.id, callID)
		return err == nil && d.State == "answered"
	})
	for _, q := range []int{3, 2} {
		if err := w.rtc.Extend(ctx, n.id, callID, q); err != nil {
			t.Fatalf("Extend(%d): %v", q, err)
		}
	}
	if d, err := w.rtc.GetDialog(ctx, n.id, callID); err != nil || d.Quota != 3 {
		t.Fatalf("GetDialog = %+v, %v; want quota 3", d, err)
	}
	w.check(t, callID, ringAnswerEnd, rtcapi.Event{SIPCode: 200, Cause: 16, By: "local", Reason: "balance_exhausted"}, 3*time.Second)
	if err := w.rtc.Extend(ctx, n.id, callID, 10); !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
		t.Fatalf("Extend after the end = %v, want DIALOG_NOT_FOUND", err)
	}
}

// A node killed mid-call leaves its dialog in Redis; another node ends it on a hang-up sent to
// the shared queue, after finding the owner's queue gone.
func TestDeadNodeDialogIsEndedByAnother(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	w := newWorld(t)
	bin := filepath.Join(t.TempDir(), "rtc-manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ownerID := testenv.Name("owner")
	env, _ := nodeEnv(t, w.url, ownerID, w.sim.Addr(), nil)
	cmd := exec.Command(bin)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("owner logs:\n%s", logs.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var callID string
	var resp rtcapi.DialResponse
	testenv.Eventually(t, 20*time.Second, "the owner to take a dial", func() bool {
		callID = testenv.Name("call")
		var err error
		resp, err = w.rtc.Dial(ctx, rtcapi.DialRequest{CallID: callID, CustomerID: w.customer, Destination: tel("+1200000000")})
		return err == nil
	})
	if resp.NodeID != ownerID {
		t.Fatalf("dialled by %s, want %s", resp.NodeID, ownerID)
	}
	testenv.Eventually(t, 10*time.Second, "answer", func() bool { return len(w.events.byCall(callID)) == 2 })

	other := w.node(t, nil)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	if w.sim.Active() != 1 {
		t.Fatalf("carrier has %d calls up, want the dead node's 1", w.sim.Active())
	}
	// The broker drops the owner's exclusive queue once it sees the connection gone.
	testenv.Eventually(t, 20*time.Second, "the owner's queue to vanish", func() bool {
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := w.rtc.GetDialog(pctx, ownerID, callID)
		// (not the client's breaker, opened by the timeouts while the queue was still there)
		return apierr.HasReason(err, apierr.ReasonServiceUnavailable) && !strings.Contains(err.Error(), "circuit open")
	})
	if err := w.rtc.Hangup(ctx, "", callID); err != nil {
		t.Fatalf("Hangup via the shared queue: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "the carrier to get the BYE", func() bool { return w.sim.Active() == 0 })
	w.check(t, callID, ringAnswerEnd, rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}, 0)
	evs := w.events.byCall(callID)
	var last rtcapi.Event
	_ = json.Unmarshal(evs[len(evs)-1].Data, &last)
	if last.NodeID != ownerID {
		t.Logf("ended event names node %s (the dialog's owner is %s)", last.NodeID, ownerID)
	}
	if d, err := w.rtc.GetDialog(ctx, other.id, callID); err != nil || d.State != "ended" {
		t.Errorf("GetDialog via the other node = %+v, %v; want ended", d, err)
	}
}
