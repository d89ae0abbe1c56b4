package main

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/cache"
	"voipbin/bin-call-manager/internal/call"
	"voipbin/bin-call-manager/internal/config"
	"voipbin/bin-call-manager/internal/mysql"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

func TestCreateGetHangupThroughRPC(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	sipDest := callapi.Address{Type: callapi.AddressSIP, Target: "bob@example.com:5070", Name: "Bob"}
	calls, err := h.client.Create(ctx, callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"),
		Destinations: []callapi.Address{tel("+15550000002"), sipDest}, Metadata: map[string]any{"order": "A-17"}, Timeout: 30})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("%d calls, want 2", len(calls))
	}
	for i, c := range calls {
		if c.Status != callapi.StatusDialing || c.CustomerID != h.customerA || c.Direction != callapi.DirectionOutgoing ||
			c.Metadata["order"] != "A-17" || c.TMCreate.IsZero() || uuid.Validate(c.ID) != nil {
			t.Fatalf("call %d = %+v", i, c)
		}
	}
	if calls[1].Destination != sipDest {
		t.Fatalf("destination = %+v, want %+v", calls[1].Destination, sipDest)
	}

	gates, _ := h.billing.snapshot()
	if len(gates) != 2 || gates[0].CallID != calls[0].ID || gates[0].DestinationType != "tel" ||
		gates[1].CallID != calls[1].ID || gates[1].DestinationType != "sip" || gates[1].CustomerID != h.customerA {
		t.Fatalf("gate requests = %+v", gates)
	}
	dials, _ := h.rtc.snapshot()
	if len(dials) != 2 {
		t.Fatalf("%d dials, want 2", len(dials))
	}
	for _, d := range dials {
		if d.DialTimeout != 30 || d.MaxDuration != 3600 || d.CustomerID != h.customerA || d.Source.Target != "+15550000001" {
			t.Fatalf("dial request = %+v", d)
		}
	}

	a := calls[0]
	created := h.waitEvents(a.ID, callapi.EventCreated)
	if d := data(t, created[0]); d.Status != callapi.StatusDialing || created[0].CustomerID != h.customerA {
		t.Fatalf("call.created = %+v / %+v", created[0], d)
	}

	got, err := h.client.Get(ctx, h.customerA, a.ID)
	if err != nil || got.ID != a.ID || got.Status != callapi.StatusDialing {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := h.client.Get(ctx, "", a.ID); err != nil {
		t.Fatalf("superadmin Get: %v", err)
	}
	_, err = h.client.Get(ctx, h.customerB, a.ID)
	wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
	_, err = h.client.Get(ctx, h.customerA, uuid.NewString())
	wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
	_, err = h.client.Get(ctx, h.customerA, "not-a-uuid")
	wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
	_, err = h.client.Hangup(ctx, h.customerB, a.ID)
	wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)

	// Ringing, then a local hang-up: canceling, CANCEL through the owning node, and the end
	// comes from rtc.
	h.publishRTC(h.customerA, rtcapi.EventRinging, rtcapi.Event{CallID: a.ID, NodeID: h.rtc.node, At: h.clock.Now(), SIPCode: 180})
	h.waitEvents(a.ID, callapi.EventCreated, callapi.EventRinging)
	hung, err := h.client.Hangup(ctx, h.customerA, a.ID)
	if err != nil || hung.Status != callapi.StatusCanceling {
		t.Fatalf("Hangup = %+v, %v; want canceling", hung, err)
	}
	if hs := h.rtc.hangupsOf(a.ID); !reflect.DeepEqual(hs, []hangupReq{{Node: h.rtc.node, CallID: a.ID}}) {
		t.Fatalf("rtc hangups = %+v, want one on node %s", hs, h.rtc.node)
	}
	h.waitEvents(a.ID, callapi.EventCreated, callapi.EventRinging, callapi.EventUpdated)
	h.publishRTC(h.customerA, rtcapi.EventEnded, rtcapi.Event{CallID: a.ID, NodeID: h.rtc.node, At: h.clock.Now(),
		SIPCode: 487, Cause: 127, By: callapi.HangupByLocal})
	evs := h.waitEvents(a.ID, callapi.EventCreated, callapi.EventRinging, callapi.EventUpdated, callapi.EventEnded)
	ended := data(t, evs[3])
	if ended.Status != callapi.StatusHangup || ended.HangupReason != callapi.ReasonCancel || ended.HangupBy != callapi.HangupByLocal ||
		ended.HangupCause != 127 || ended.SIPCode != 487 || ended.Duration != 0 || ended.TMHangup == nil || ended.TMRinging == nil {
		t.Fatalf("call.ended data = %+v", ended)
	}

	_, err = h.client.Hangup(ctx, h.customerA, a.ID)
	wantAPIErr(t, err, apierr.FailedPrecondition, callapi.ErrReasonCallStateInvalid)
	got, err = h.client.Get(ctx, h.customerA, a.ID)
	if err != nil || got.Status != callapi.StatusHangup || got.HangupReason != callapi.ReasonCancel {
		t.Fatalf("Get after the end = %+v, %v", got, err)
	}

	// Every transition is counted and the RPC latency is measured per route.
	if n := h.counter("call_created_total", nil); n != 2 {
		t.Errorf("call_created_total = %v, want 2", n)
	}
	if n := h.counter("call_ended_total", map[string]string{"reason": "cancel", "by": "local"}); n != 1 {
		t.Errorf("call_ended_total{cancel,local} = %v, want 1", n)
	}
	if n := h.counter("call_transitions_total", map[string]string{"from": "ringing", "to": "canceling"}); n != 1 {
		t.Errorf("call_transitions_total{ringing→canceling} = %v, want 1", n)
	}
	if n := h.counter("rpc_server_handling_seconds", map[string]string{"route": callapi.RouteCreate}); n != 1 {
		t.Errorf("rpc_server_handling_seconds{POST /v1/calls} count = %v, want 1", n)
	}
}

func TestCreateLogsLetAnOperatorFollowTheCall(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.create(h.customerA, tel("+15550000002"))[0]
	h.waitEvents(c.ID, callapi.EventCreated)
	want := []struct{ msg, key, value string }{
		{"creating calls for customer", "customer_id", h.customerA},
		{"call created", "call_id", c.ID},
		{"publishing call.created", "call_id", c.ID},
		{"call dialled", "call_id", c.ID},
	}
	lines := h.logs.lines()
	last := -1
	for _, w := range want {
		found := -1
		for i, l := range lines {
			if l["msg"] == w.msg && l[w.key] == w.value && l["customer_id"] == h.customerA {
				found = i
				break
			}
		}
		switch {
		case found < 0:
			t.Errorf("no log line %q with %s=%s and customer_id", w.msg, w.key, w.value)
		case found < last:
			t.Errorf("log line %q comes before the one above it", w.msg)
		default:
			last = found
		}
	}
}

func TestListPagingAndFilters(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	var mine []callapi.Call
	for i := range 7 {
		h.clock.Advance(time.Millisecond)
		mine = append(mine, h.create(h.customerA, tel("+1555000010"+string(rune('0'+i))))...)
	}
	h.create(h.customerB, tel("+15550000200"))
	// newest first
	want := make([]string, 0, len(mine))
	for i := len(mine) - 1; i >= 0; i-- {
		want = append(want, mine[i].ID)
	}

	var walked []string
	token, pages := "", 0
	for {
		page, err := h.client.List(ctx, callapi.ListQuery{CustomerID: h.customerA, PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, c := range page.Result {
			walked = append(walked, c.ID)
		}
		if page.NextPageToken == "" {
			break
		}
		token = page.NextPageToken
	}
	if pages != 3 || !reflect.DeepEqual(walked, want) {
		t.Fatalf("cursor walk: %d pages %v, want 3 pages %v", pages, walked, want)
	}

	page, err := h.client.List(ctx, callapi.ListQuery{CustomerID: h.customerA, Limit: 2, Offset: 4})
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{page.Result[0].ID, page.Result[1].ID}; len(page.Result) != 2 || !reflect.DeepEqual(got, want[4:6]) || page.NextPageToken != "" {
		t.Fatalf("limit/offset page = %+v, want %v", page, want[4:6])
	}

	// An exact last page has no next token.
	page, err = h.client.List(ctx, callapi.ListQuery{CustomerID: h.customerA, PageSize: 7})
	if err != nil || len(page.Result) != 7 || page.NextPageToken != "" {
		t.Fatalf("page of exactly all: %d calls, token %q, %v", len(page.Result), page.NextPageToken, err)
	}

	// Filters: end one call, then list by status; superadmin sees both customers.
	h.publishRTC(h.customerA, rtcapi.EventEnded, rtcapi.Event{CallID: mine[0].ID, SIPCode: 486, Cause: 17, By: "remote"})
	h.waitEvents(mine[0].ID, callapi.EventCreated, callapi.EventEnded)
	tests := []struct {
		name string
		q    callapi.ListQuery
		want int
	}{
		{"hangup of A", callapi.ListQuery{CustomerID: h.customerA, Status: "hangup"}, 1},
		{"dialing of A", callapi.ListQuery{CustomerID: h.customerA, Status: "dialing"}, 6},
		{"outgoing of B", callapi.ListQuery{CustomerID: h.customerB, Direction: "outgoing"}, 1},
		{"incoming of A", callapi.ListQuery{CustomerID: h.customerA, Direction: "incoming"}, 0},
		{"superadmin", callapi.ListQuery{PageSize: 100}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, err := h.client.List(ctx, tt.q)
			if err != nil || len(page.Result) != tt.want {
				t.Fatalf("List(%+v) = %d calls, %v; want %d", tt.q, len(page.Result), err, tt.want)
			}
		})
	}

	bad := []struct {
		name  string
		route string
		field string
	}{
		{"page_size over 100", "/v1/calls?page_size=101", "page_size"},
		{"page_size not a number", "/v1/calls?page_size=ten", "page_size"},
		{"garbage token", "/v1/calls?page_token=%21%21", "page_token"},
		{"mixed paging", "/v1/calls?page_size=10&offset=5", "page_token"},
		{"unknown status", "/v1/calls?status=busy", "status"},
		{"customer not a uuid", "/v1/calls?customer_id=me", "customer_id"},
	}
	caller := prefixCaller{c: rpc.NewClient(h.conn, testenv.Logger(t), rpc.ClientOptions{}), prefix: h.prefix}
	defer caller.c.(*rpc.Client).Close()
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := rpc.Do(ctx, caller, callapi.Queue, "GET", tt.route, nil, nil)
			e := wantAPIErr(t, err, apierr.InvalidArgument, apierr.ReasonInvalidArgument)
			if len(e.Details) != 1 || e.Details[0]["field"] != tt.field {
				t.Fatalf("details = %v, want field %s", e.Details, tt.field)
			}
		})
	}
}

func TestInsufficientBalanceWritesNothing(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	h.billing.setBudget(h.customerB, 0)
	_, err := h.client.Create(ctx, callapi.CreateRequest{CustomerID: h.customerB, Source: tel("+15550000001"),
		Destinations: []callapi.Address{tel("+15550000002"), tel("+15550000003")}})
	e := wantAPIErr(t, err, apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance)
	if len(e.Details) != 1 || e.Details[0]["required"] != 60000.0 {
		t.Fatalf("402 details = %v, want billing's details passed through", e.Details)
	}
	if n := h.count("SELECT COUNT(*) FROM call_calls"); n != 0 {
		t.Fatalf("%d calls written after a 402", n)
	}
	if n := h.count("SELECT COUNT(*) FROM call_outbox"); n != 0 {
		t.Fatalf("%d events written after a 402", n)
	}
	if dials, _ := h.rtc.snapshot(); len(dials) != 0 {
		t.Fatalf("dialled %d calls after a 402", len(dials))
	}
	gates, released := h.billing.snapshot()
	if len(gates) != 1 || len(released) != 0 {
		t.Fatalf("gates %d, releases %v; want one refused gate and nothing to release", len(gates), released)
	}
}

func TestRefusalOfALaterDestinationReleasesTheEarlierOnes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.billing.setBudget(h.customerA, 1) // the first destination passes, the second is refused
	_, err := h.client.Create(context.Background(), callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"),
		Destinations: []callapi.Address{tel("+15550000002"), tel("+15550000003")}})
	wantAPIErr(t, err, apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance)
	gates, released := h.billing.snapshot()
	if len(gates) != 2 || !reflect.DeepEqual(released, []string{gates[0].CallID}) {
		t.Fatalf("gates %+v, released %v; want the first call's reservation released", gates, released)
	}
	if n := h.count("SELECT COUNT(*) FROM call_calls"); n != 0 {
		t.Fatalf("%d calls written after a 402", n)
	}
	if dials, _ := h.rtc.snapshot(); len(dials) != 0 {
		t.Fatalf("dialled %d calls after a 402", len(dials))
	}
}

func TestInvalidRequestsAreRefusedBeforeAnything(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	caller := prefixCaller{c: rpc.NewClient(h.conn, testenv.Logger(t), rpc.ClientOptions{}), prefix: h.prefix}
	defer caller.c.(*rpc.Client).Close()
	tests := []struct {
		name   string
		body   any
		reason string
		field  string
	}{
		{"not JSON", json.RawMessage(`"x"`), apierr.ReasonInvalidJSONBody, ""},
		{"unknown field", map[string]any{"customer_id": h.customerA, "colour": "red"}, apierr.ReasonInvalidJSONBody, ""},
		{"bad tel", callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"),
			Destinations: []callapi.Address{tel("12345")}}, apierr.ReasonInvalidArgument, "destinations[0].target"},
		{"bad sip", callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"),
			Destinations: []callapi.Address{{Type: "sip", Target: "bob"}}}, apierr.ReasonInvalidArgument, "destinations[0].target"},
		{"no destinations", callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001")}, apierr.ReasonInvalidArgument, "destinations"},
		{"source name with CR LF", callapi.CreateRequest{CustomerID: h.customerA,
			Source:       callapi.Address{Type: "tel", Target: "+15550000001", Name: "x\"\r\nP-Asserted-Identity: <sip:boss@evil>"},
			Destinations: []callapi.Address{tel("+15550000002")}}, apierr.ReasonInvalidArgument, "source.name"},
		{"no customer", callapi.CreateRequest{Source: tel("+15550000001"), Destinations: []callapi.Address{tel("+15550000002")}},
			apierr.ReasonInvalidArgument, "customer_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rpc.Do(ctx, caller, callapi.Queue, "POST", "/v1/calls", tt.body, nil)
			e := wantAPIErr(t, err, apierr.InvalidArgument, tt.reason)
			if tt.field != "" && (len(e.Details) != 1 || e.Details[0]["field"] != tt.field) {
				t.Fatalf("details = %v, want field %s", e.Details, tt.field)
			}
		})
	}
	if gates, _ := h.billing.snapshot(); len(gates) != 0 {
		t.Fatalf("%d gate requests for invalid calls", len(gates))
	}
	if n := h.count("SELECT COUNT(*) FROM call_calls"); n != 0 {
		t.Fatalf("%d calls written", n)
	}
}

func TestDialRefusedEndsTheCallAsFailed(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.rtc.mu.Lock()
	h.rtc.refuse["+15550000666"] = true
	h.rtc.mu.Unlock()
	calls := h.create(h.customerA, tel("+15550000666"), tel("+15550000002"))
	failed, ok := calls[0], calls[1]
	if failed.Status != callapi.StatusHangup || failed.HangupReason != callapi.ReasonFailed || failed.HangupBy != callapi.HangupByLocal {
		t.Fatalf("refused call = %+v, want hangup/failed/local", failed)
	}
	if ok.Status != callapi.StatusDialing {
		t.Fatalf("the other call = %s, want dialing", ok.Status)
	}
	evs := h.waitEvents(failed.ID, callapi.EventCreated, callapi.EventEnded)
	if d := data(t, evs[1]); d.HangupReason != callapi.ReasonFailed || d.HangupCause != call.CauseTemporaryFailure {
		t.Fatalf("call.ended = %+v", d)
	}
	// A refusal is rtc's own answer: nothing to hang up.
	if hs := h.rtc.hangupsOf(failed.ID); len(hs) != 0 {
		t.Fatalf("hangups after a refused dial: %+v", hs)
	}
	if n := h.counter("call_ended_total", map[string]string{"reason": "failed"}); n != 1 {
		t.Fatalf("call_ended_total{failed} = %v, want 1", n)
	}
}

func TestRTCUnreachableEndsTheCallAsFailed(t *testing.T) {
	h := newHarness(t, harnessOpts{noRTC: true})
	start := time.Now()
	c := h.create(h.customerA, tel("+15550000002"))[0]
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("create with rtc unreachable took %v", took)
	}
	if c.Status != callapi.StatusHangup || c.HangupReason != callapi.ReasonFailed {
		t.Fatalf("call = %s/%s, want hangup/failed", c.Status, c.HangupReason)
	}
	h.waitEvents(c.ID, callapi.EventCreated, callapi.EventEnded)
	got, err := h.client.Get(context.Background(), h.customerA, c.ID)
	if err != nil || got.Status != callapi.StatusHangup {
		t.Fatalf("Get = %+v, %v", got, err)
	}
}

func TestDuplicatedAndOutOfOrderRTCEventsChangeNothing(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.create(h.customerA, tel("+15550000002"))[0]
	t0 := h.clock.Now()
	node := h.rtc.node
	ev := func(d time.Duration) rtcapi.Event { return rtcapi.Event{CallID: c.ID, NodeID: node, At: t0.Add(d)} }
	ended := ev(64500 * time.Millisecond)
	ended.SIPCode, ended.Cause, ended.By = 200, 16, callapi.HangupByRemote
	lateEnded := ended
	lateEnded.SIPCode, lateEnded.Cause, lateEnded.At = 486, 17, t0.Add(70*time.Second)

	steps := []struct {
		typ string
		ev  rtcapi.Event
	}{
		{rtcapi.EventRinging, ev(time.Second)},
		{rtcapi.EventRinging, ev(time.Second)}, // a duplicate with a new event id
		{rtcapi.EventAnswered, ev(3 * time.Second)},
		{rtcapi.EventRinging, ev(2 * time.Second)}, // late
		{rtcapi.EventAnswered, ev(3 * time.Second)},
		{rtcapi.EventEnded, ended},
		{rtcapi.EventAnswered, ev(3 * time.Second)}, // late
		{rtcapi.EventEnded, lateEnded},              // a second end
		{rtcapi.EventRinging, ev(time.Second)},
	}
	for _, s := range steps {
		h.publishRTC(h.customerA, s.typ, s.ev)
	}
	testenv.Eventually(t, 10*time.Second, "every rtc event handled", func() bool { return h.rtcHandled() == float64(len(steps)) })
	evs := h.waitEvents(c.ID, callapi.EventCreated, callapi.EventRinging, callapi.EventAnswered, callapi.EventEnded)
	if n := h.count("SELECT COUNT(*) FROM call_outbox"); n != 4 {
		t.Fatalf("outbox has %d events, want 4", n)
	}
	d := data(t, evs[3])
	if d.HangupReason != callapi.ReasonNormal || d.HangupBy != callapi.HangupByRemote || d.HangupCause != 16 ||
		d.SIPCode != 200 || d.Duration != 61 {
		t.Fatalf("call.ended = reason %s by %s cause %d sip %d duration %d; want normal/remote/16/200/61",
			d.HangupReason, d.HangupBy, d.HangupCause, d.SIPCode, d.Duration)
	}
	if !d.TMProgressing.Equal(t0.Add(3*time.Second).Truncate(time.Microsecond)) || !d.TMRinging.Equal(t0.Add(time.Second).Truncate(time.Microsecond)) {
		t.Fatalf("timestamps ringing %v progressing %v, want rtc's", d.TMRinging, d.TMProgressing)
	}
	got, err := h.client.Get(context.Background(), h.customerA, c.ID)
	if err != nil || got.Duration != 61 || got.Status != callapi.StatusHangup {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	// An event for a call this service does not have is dropped, not retried forever.
	h.publishRTC(h.customerA, rtcapi.EventRinging, rtcapi.Event{CallID: uuid.NewString(), NodeID: node})
	testenv.Eventually(t, 10*time.Second, "the unknown call's event handled", func() bool {
		return h.counter("call_rtc_events_total", map[string]string{"outcome": "unknown_call"}) == 1
	})
}

func TestReaperEndsCallsPastTheirDeadline(t *testing.T) {
	h := newHarness(t, harnessOpts{call: func(c *config.Call) { c.ProbeInterval = time.Hour }})
	answered := h.create(h.customerA, tel("+15550000002"))[0]
	h.publishRTC(h.customerA, rtcapi.EventAnswered, rtcapi.Event{CallID: answered.ID, NodeID: h.rtc.node, At: h.clock.Now()})
	h.waitEvents(answered.ID, callapi.EventCreated, callapi.EventAnswered)

	h.clock.Advance(time.Hour) // dial timeout + max duration + grace have not all passed
	testenv.Eventually(t, 10*time.Second, "a reaper pass", func() bool { return h.count("SELECT COUNT(*) FROM call_calls WHERE tm_check > ?", h.clock.Now()) == 1 })
	if h.endedEvents(answered.ID) != 0 {
		t.Fatal("ended before its deadline")
	}
	h.clock.Advance(3 * time.Minute)
	evs := h.waitEvents(answered.ID, callapi.EventCreated, callapi.EventAnswered, callapi.EventEnded)
	d := data(t, evs[2])
	if d.HangupReason != callapi.ReasonTimeout || d.HangupBy != callapi.HangupByLocal || d.Duration < 3600 {
		t.Fatalf("call.ended = %s/%s duration %d, want timeout/local ≥3600", d.HangupReason, d.HangupBy, d.Duration)
	}
	testenv.Eventually(t, 5*time.Second, "rtc told to hang up", func() bool { return len(h.rtc.hangupsOf(answered.ID)) == 1 })
	// A late rtc.ended changes nothing: exactly one call.ended.
	h.publishRTC(h.customerA, rtcapi.EventEnded, rtcapi.Event{CallID: answered.ID, NodeID: h.rtc.node, Cause: 16})
	testenv.Eventually(t, 10*time.Second, "the late ended handled", func() bool { return h.rtcHandled() == 2 })
	if n := h.count("SELECT COUNT(*) FROM call_outbox WHERE routing_key LIKE '%call.ended'"); n != 1 {
		t.Fatalf("%d call.ended written, want 1", n)
	}
	if n := h.counter("call_reaped_total", map[string]string{"why": "deadline"}); n != 1 {
		t.Fatalf("call_reaped_total{deadline} = %v", n)
	}
}

func TestReaperEndsCallsWhoseNodeIsGone(t *testing.T) {
	probe := 30 * time.Second
	h := newHarness(t, harnessOpts{})
	alive := h.create(h.customerA, tel("+15550000002"))[0]
	lost := h.create(h.customerA, tel("+15550000003"))[0]
	h.rtc.forget(lost.ID) // the node answers but has no such dialog

	passes := func(n int) {
		for range n {
			h.clock.Advance(probe)
			before := h.rtcProbes()
			testenv.Eventually(t, 10*time.Second, "a probe pass", func() bool { return h.rtcProbes() >= before+2 })
		}
	}
	passes(1)
	if h.endedEvents(lost.ID) != 0 {
		t.Fatal("ended after one failed probe; want two in a row")
	}
	passes(1)
	evs := h.waitEvents(lost.ID, callapi.EventCreated, callapi.EventEnded)
	if d := data(t, evs[1]); d.HangupReason != callapi.ReasonFailed || d.HangupBy != callapi.HangupByLocal {
		t.Fatalf("call.ended = %s/%s, want failed/local", d.HangupReason, d.HangupBy)
	}
	if h.endedEvents(alive.ID) != 0 {
		t.Fatal("a call whose node has it was ended")
	}

	// Now the node dies: its queue vanishes and probes are UNAVAILABLE.
	h.stopNode()
	h.clock.Advance(probe)
	testenv.Eventually(t, 10*time.Second, "a failed probe recorded", func() bool {
		return h.count("SELECT probe_failures FROM call_calls WHERE id = UNHEX(REPLACE(?, '-', ''))", alive.ID) == 1
	})
	h.clock.Advance(probe)
	evs = h.waitEvents(alive.ID, callapi.EventCreated, callapi.EventEnded)
	if d := data(t, evs[1]); d.HangupReason != callapi.ReasonFailed {
		t.Fatalf("call.ended = %s, want failed", d.HangupReason)
	}
	if n := h.counter("call_reaped_total", map[string]string{"why": "node_gone"}); n != 2 {
		t.Fatalf("call_reaped_total{node_gone} = %v, want 2", n)
	}
}

func (h *harness) rtcProbes() int {
	h.rtc.mu.Lock()
	defer h.rtc.mu.Unlock()
	return h.rtc.probes
}

func TestReaperEndsCallsThatWereNeverDialled(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	// The process died between the insert and the dial: a call with no node.
	now := h.clock.Now()
	orphan := call.New(call.NewParams{ID: uuid.NewString(), CustomerID: h.customerA, Source: tel("+15550000001"),
		Destination: tel("+15550000002"), DialTimeout: time.Minute, Deadline: now.Add(2 * time.Hour), FirstCheck: now}, now)
	if _, err := mysql.NewCallStore(h.db).Create(context.Background(), []*call.Call{orphan}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Second) // a dial may still be under way: left alone
	testenv.Eventually(t, 10*time.Second, "a reaper pass", func() bool { return h.count("SELECT COUNT(*) FROM call_calls WHERE tm_check > ?", h.clock.Now()) == 1 })
	if h.endedEvents(orphan.ID) != 0 {
		t.Fatal("ended while its dial could still be under way")
	}
	h.clock.Advance(time.Minute)
	h.waitEvents(orphan.ID, callapi.EventCreated, callapi.EventEnded)
	testenv.Eventually(t, 5*time.Second, "any node told to hang up", func() bool {
		return reflect.DeepEqual(h.rtc.hangupsOf(orphan.ID), []hangupReq{{Node: "", CallID: orphan.ID}})
	})
}

func TestHangupWhenRTCCannotEndTheDialogEndsTheCallAsFailed(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.create(h.customerA, tel("+15550000002"))[0]
	h.stopNode() // owning node gone
	h.stopShared(t)
	got, err := h.client.Hangup(context.Background(), h.customerA, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != callapi.StatusHangup || got.HangupReason != callapi.ReasonFailed || got.HangupBy != callapi.HangupByLocal {
		t.Fatalf("Hangup = %s/%s/%s, want hangup/failed/local", got.Status, got.HangupReason, got.HangupBy)
	}
	h.waitEvents(c.ID, callapi.EventCreated, callapi.EventUpdated, callapi.EventEnded)
}

func TestHangupThatRacesTheDialReachesTheNode(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	hold := make(chan struct{})
	h.rtc.mu.Lock()
	h.rtc.hold = hold
	h.rtc.mu.Unlock()
	created := make(chan []callapi.Call, 1)
	go func() {
		calls, err := h.client.Create(ctx, callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"),
			Destinations: []callapi.Address{tel("+15550000002")}})
		if err != nil {
			t.Error(err)
		}
		created <- calls
	}()
	var id string
	testenv.Eventually(t, 10*time.Second, "the dial to be under way", func() bool {
		dials, _ := h.rtc.snapshot()
		if len(dials) == 1 {
			id = dials[0].CallID
		}
		return id != ""
	})
	// No node known yet: the hang-up goes to any node.
	got, err := h.client.Hangup(ctx, h.customerA, id)
	if err != nil || got.Status != callapi.StatusCanceling {
		t.Fatalf("Hangup during the dial = %+v, %v", got, err)
	}
	close(hold)
	calls := <-created
	if len(calls) != 1 || calls[0].Status != callapi.StatusCanceling {
		t.Fatalf("Create returned %+v, want the call canceling", calls)
	}
	// Once the dial names the node, the hang-up is sent to it too.
	testenv.Eventually(t, 5*time.Second, "the hang-up re-sent to the node", func() bool {
		return reflect.DeepEqual(h.rtc.hangupsOf(id), []hangupReq{{Node: "", CallID: id}, {Node: h.rtc.node, CallID: id}})
	})
}

func TestDeleteHangsUpThenHides(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	live, done := h.create(h.customerA, tel("+15550000002"))[0], h.create(h.customerA, tel("+15550000003"))[0]
	h.publishRTC(h.customerA, rtcapi.EventEnded, rtcapi.Event{CallID: done.ID, SIPCode: 486, Cause: 17})
	h.waitEvents(done.ID, callapi.EventCreated, callapi.EventEnded)

	_, err := h.client.Delete(ctx, h.customerB, live.ID)
	wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
	got, err := h.client.Delete(ctx, h.customerA, live.ID)
	if err != nil || got.Status != callapi.StatusCanceling {
		t.Fatalf("Delete(live) = %+v, %v; want canceling", got, err)
	}
	if len(h.rtc.hangupsOf(live.ID)) != 1 {
		t.Fatal("deleting a live call did not hang it up")
	}
	if _, err := h.client.Delete(ctx, h.customerA, done.ID); err != nil {
		t.Fatalf("Delete(ended): %v", err)
	}
	for _, id := range []string{live.ID, done.ID} {
		_, err := h.client.Get(ctx, h.customerA, id)
		wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
		_, err = h.client.Delete(ctx, h.customerA, id)
		wantAPIErr(t, err, apierr.NotFound, callapi.ErrReasonCallNotFound)
	}
	page, err := h.client.List(ctx, callapi.ListQuery{CustomerID: h.customerA})
	if err != nil || len(page.Result) != 0 {
		t.Fatalf("List after deletes = %d calls, %v", len(page.Result), err)
	}
	// The deleted live call still gets its one call.ended.
	h.publishRTC(h.customerA, rtcapi.EventEnded, rtcapi.Event{CallID: live.ID, SIPCode: 487, Cause: 127, By: "local"})
	h.waitEvents(live.ID, callapi.EventCreated, callapi.EventUpdated, callapi.EventEnded)
}

func TestCacheIsWrittenThroughAndReadThrough(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	rdb := testenv.Redis(t)
	c := h.create(h.customerA, tel("+15550000002"))[0]
	t.Cleanup(func() { rdb.Del(context.Background(), cache.Key(c.ID)) })
	cached := func() map[string]any {
		b, err := rdb.Get(ctx, cache.Key(c.ID)).Bytes()
		if err != nil {
			return nil
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	if m := cached(); m == nil || m["status"] != "dialing" || m["customer_id"] != h.customerA {
		t.Fatalf("after create, call:%s = %v", c.ID, m)
	}
	h.publishRTC(h.customerA, rtcapi.EventRinging, rtcapi.Event{CallID: c.ID, NodeID: h.rtc.node})
	testenv.Eventually(t, 10*time.Second, "the cache to follow the ringing", func() bool {
		m := cached()
		return m != nil && m["status"] == "ringing"
	})

	// Reads come from Redis: a planted newer entry is what Get returns.
	m := cached()
	m["status"], m["version"] = "progressing", 1000.0
	b, _ := json.Marshal(m)
	rdb.Set(ctx, cache.Key(c.ID), b, time.Minute)
	if got, err := h.client.Get(ctx, h.customerA, c.ID); err != nil || got.Status != callapi.StatusProgressing {
		t.Fatalf("Get = %s, %v; want the cached progressing", got.Status, err)
	}

	// A miss reads MySQL and fills the cache.
	rdb.Del(ctx, cache.Key(c.ID))
	if got, err := h.client.Get(ctx, h.customerA, c.ID); err != nil || got.Status != callapi.StatusRinging {
		t.Fatalf("Get after a miss = %s, %v; want ringing from MySQL", got.Status, err)
	}
	if m := cached(); m == nil || m["status"] != "ringing" {
		t.Fatalf("the miss did not fill the cache: %v", m)
	}
	if !strings.Contains(h.counterNames(), "call_cache_operations_total") || h.counter("call_cache_operations_total", map[string]string{"op": "get", "result": "hit"}) < 1 {
		t.Fatal("no cache hit counted")
	}
}

func (h *harness) counterNames() string {
	mfs, _ := h.reg.Gather()
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	return strings.Join(names, " ")
}

func TestRedisDownReadsAndWritesGoOnThroughMySQL(t *testing.T) {
	h := newHarness(t, harnessOpts{redisAddr: closedAddr(t)})
	ctx := context.Background()
	c := h.create(h.customerA, tel("+15550000002"))[0]
	got, err := h.client.Get(ctx, h.customerA, c.ID)
	if err != nil || got.Status != callapi.StatusDialing {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	h.publishRTC(h.customerA, rtcapi.EventAnswered, rtcapi.Event{CallID: c.ID, NodeID: h.rtc.node})
	h.waitEvents(c.ID, callapi.EventCreated, callapi.EventAnswered)
	if got, err := h.client.Get(ctx, h.customerA, c.ID); err != nil || got.Status != callapi.StatusProgressing {
		t.Fatalf("Get after answer = %s, %v", got.Status, err)
	}
	got, err = h.client.Hangup(ctx, h.customerA, c.ID)
	if err != nil || got.Status != callapi.StatusTerminating {
		t.Fatalf("Hangup = %+v, %v", got, err)
	}
	page, err := h.client.List(ctx, callapi.ListQuery{CustomerID: h.customerA})
	if err != nil || len(page.Result) != 1 {
		t.Fatalf("List = %+v, %v", page, err)
	}
	if n := h.counter("call_cache_operations_total", map[string]string{"result": "error"}); n == 0 {
		t.Fatal("no cache errors counted with Redis down")
	}
}

// A call the reaper ends is dated the last moment it was known alive (the last probe that found
// it live), not the moment it is reaped, and its duration (so its charge) follows from that.
func TestReaperDatesTheEndByTheLastProbeThatFoundTheCallAlive(t *testing.T) {
	probe := 30 * time.Second
	h := newHarness(t, harnessOpts{})
	c := h.create(h.customerA, tel("+15550000002"))[0]
	answeredAt := h.clock.Now()
	h.publishRTC(h.customerA, rtcapi.EventAnswered, rtcapi.Event{CallID: c.ID, NodeID: h.rtc.node, At: answeredAt})
	h.waitEvents(c.ID, callapi.EventCreated, callapi.EventAnswered)

	for range 2 { // two probes find the call live on its node
		h.clock.Advance(probe)
		before := h.rtcProbes()
		testenv.Eventually(t, 10*time.Second, "a probe", func() bool { return h.rtcProbes() > before })
	}
	lastAlive := answeredAt.Add(2 * probe).UTC().Truncate(time.Microsecond)
	testenv.Eventually(t, 10*time.Second, "the live probe recorded", func() bool {
		return h.count("SELECT COUNT(*) FROM call_calls WHERE id = UNHEX(REPLACE(?, '-', '')) AND tm_alive = ?", c.ID, lastAlive.UTC()) == 1
	})

	h.stopNode() // the node dies: the next probes fail, and two in a row end the call
	h.clock.Advance(probe)
	testenv.Eventually(t, 10*time.Second, "a failed probe recorded", func() bool {
		return h.count("SELECT probe_failures FROM call_calls WHERE id = UNHEX(REPLACE(?, '-', ''))", c.ID) == 1
	})
	h.clock.Advance(probe)
	evs := h.waitEvents(c.ID, callapi.EventCreated, callapi.EventAnswered, callapi.EventEnded)
	d := data(t, evs[2])
	if d.HangupReason != callapi.ReasonFailed || d.TMHangup == nil || !d.TMHangup.Equal(lastAlive) || d.Duration != 60 {
		t.Fatalf("call.ended = %s at %v duration %d; want failed at the last live probe %s (reaped at %s), duration 60",
			d.HangupReason, d.TMHangup, d.Duration, lastAlive, h.clock.Now())
	}
	got, err := h.client.Get(context.Background(), h.customerA, c.ID)
	if err != nil || got.Duration != 60 || !got.TMHangup.Equal(lastAlive) {
		t.Fatalf("Get = %+v, %v; want duration 60, tm_hangup %s", got, err, lastAlive)
	}
}
