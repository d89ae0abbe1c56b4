package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"voipbin/pkg/callapi"
	"voipbin/pkg/telemetry"
)

func callBody(dests ...string) map[string]any {
	var ds []map[string]string
	for _, d := range dests {
		typ := "tel"
		if strings.Contains(d, "@") {
			typ = "sip"
		}
		ds = append(ds, map[string]string{"type": typ, "target": d})
	}
	return map[string]any{"source": map[string]string{"type": "tel", "target": "+15551230000"}, "destinations": ds}
}

type createdCalls struct {
	Calls []callapi.Call `json:"calls"`
}

type callList struct {
	Result        []callapi.Call `json:"result"`
	NextPageToken string         `json:"next_page_token"`
}

func TestCallRoutes(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")

	b := h.must(201, "POST", "/v1.0/calls", c.token, map[string]any{
		"source":       map[string]string{"type": "tel", "target": "+15551230000", "name": "Support"},
		"destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}, {"type": "sip", "target": "alice@sip.example.com:5070"}},
		"metadata":     map[string]any{"order": 42}, "timeout": 30,
	})
	created := decodeJSON[createdCalls](t, b)
	if len(created.Calls) != 2 || created.Calls[0].CustomerID != c.id {
		t.Fatalf("created = %s", b)
	}
	h.calls.mu.Lock()
	req := h.calls.creates[0]
	h.calls.mu.Unlock()
	if req.CustomerID != c.id || req.Timeout != 30 || req.Source.Name != "Support" || req.Metadata["order"] != 42.0 {
		t.Fatalf("the call manager got %+v", req)
	}
	id := created.Calls[0].ID

	// GET with ETag, then 304.
	resp, b := h.do("GET", "/v1.0/calls/"+id, c.token, nil)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" || decodeJSON[callapi.Call](t, b).ID != id {
		t.Fatalf("get: %d etag %q %s", resp.StatusCode, etag, b)
	}
	if resp, b := h.do("GET", "/v1.0/calls/"+id, c.token, nil, "If-None-Match", etag); resp.StatusCode != 304 || len(b) != 0 || resp.Header.Get("ETag") != etag {
		t.Fatalf("If-None-Match: %d %q", resp.StatusCode, b)
	}
	if resp, _ := h.do("GET", "/v1.0/calls/"+id, c.token, nil, "If-None-Match", `"stale"`); resp.StatusCode != 200 {
		t.Fatalf("stale If-None-Match: %d", resp.StatusCode)
	}

	// PATCH status hangup; other values are refused.
	e := h.expectError(400, "INVALID_ARGUMENT", "PATCH", "/v1.0/calls/"+id, c.token, map[string]string{"status": "ringing"})
	if e.Details[0]["field"] != "status" {
		t.Fatalf("details = %v", e.Details)
	}
	got := decodeJSON[callapi.Call](t, h.must(200, "PATCH", "/v1.0/calls/"+id, c.token, map[string]string{"status": "hangup"}))
	if got.Status != callapi.StatusTerminating {
		t.Fatalf("after PATCH: %s", got.Status)
	}
	// ETag changes with the call.
	if resp, _ := h.do("GET", "/v1.0/calls/"+id, c.token, nil, "If-None-Match", etag); resp.StatusCode != 200 {
		t.Fatalf("old ETag after a change: %d", resp.StatusCode)
	}
	second := created.Calls[1].ID
	h.must(200, "POST", "/v1.0/calls/"+second+"/hangup", c.token, nil)
	h.must(200, "DELETE", "/v1.0/calls/"+second, c.token, nil)
	h.expectError(404, "CALL_NOT_FOUND", "GET", "/v1.0/calls/"+second, c.token, nil)
	h.expectError(404, "CALL_NOT_FOUND", "GET", "/v1.0/calls/"+uuid.NewString(), c.token, nil)

	// Errors of the manager pass through with their reason and details.
	e = h.expectError(402, "INSUFFICIENT_BALANCE", "POST", "/v1.0/calls", c.token, callBody(targetPoor))
	if e.Details[0]["required"] != 600000.0 {
		t.Fatalf("details = %v", e.Details)
	}
	h.expectError(500, "INTERNAL_ERROR", "POST", "/v1.0/calls", c.token, callBody(targetPanic))

	// A superadmin must name the customer.
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/calls", h.root, callBody("+15557654321"))
	body := callBody("+15557654321")
	body["customer_id"] = c.id
	if got := decodeJSON[createdCalls](t, h.must(201, "POST", "/v1.0/calls", h.root, body)); got.Calls[0].CustomerID != c.id {
		t.Fatalf("superadmin's call for %s went to %s", c.id, got.Calls[0].CustomerID)
	}
	other := h.newCustomer("other")
	body["customer_id"] = other.id
	h.expectError(403, "PERMISSION_DENIED", "POST", "/v1.0/calls", c.token, body)
}

func TestListCalls(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	other := h.newCustomer("other")
	for i := range 5 {
		h.must(201, "POST", "/v1.0/calls", c.token, callBody(fmt.Sprintf("+1555000%04d", i)))
	}
	h.must(201, "POST", "/v1.0/calls", other.token, callBody("+15559999999"))

	// Cursor paging ends with an empty token; every call once, newest first, only our own.
	var all []callapi.Call
	token := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?page_size=2&page_token="+token, c.token, nil))
		all = append(all, page.Result...)
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if len(all) != 5 || all[0].Destination.Target != "+15550000004" {
		t.Fatalf("paged %d calls, first %v", len(all), all)
	}
	for _, call := range all {
		if call.CustomerID != c.id {
			t.Fatalf("another customer's call in the list: %+v", call)
		}
	}
	page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?limit=2&offset=4", c.token, nil))
	if len(page.Result) != 1 {
		t.Fatalf("limit/offset page = %d calls", len(page.Result))
	}
	if page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?status=hangup", c.token, nil)); len(page.Result) != 0 {
		t.Fatalf("status filter: %d", len(page.Result))
	}
	if page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?direction=outgoing&status=dialing", c.token, nil)); len(page.Result) != 5 {
		t.Fatalf("direction filter: %d", len(page.Result))
	}
	// Naming another customer finds nothing; a superadmin sees any.
	if page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?customer_id="+other.id, c.token, nil)); len(page.Result) != 0 {
		t.Fatalf("another customer's list: %d calls", len(page.Result))
	}
	if page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls?customer_id="+other.id, h.root, nil)); len(page.Result) != 1 {
		t.Fatalf("superadmin's list of other: %d calls", len(page.Result))
	}
	if page := decodeJSON[callList](t, h.must(200, "GET", "/v1.0/calls", h.root, nil)); len(page.Result) != 6 {
		t.Fatalf("superadmin's list of all: %d calls", len(page.Result))
	}
	for _, q := range []string{"page_size=0", "page_size=101", "page_size=x", "limit=500", "offset=-1", "status=flying",
		"direction=sideways", "customer_id=nope", "page_token=abc&offset=1"} {
		h.expectError(400, "INVALID_ARGUMENT", "GET", "/v1.0/calls?"+q, c.token, nil)
	}
}

func TestIdempotencyKey(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	other := h.newCustomer("other")
	key := "order-" + uuid.NewString()

	resp1, b1 := h.do("POST", "/v1.0/calls", c.token, callBody("+15557654321"), "Idempotency-Key", key)
	if resp1.StatusCode != 201 {
		t.Fatalf("first: %d %s", resp1.StatusCode, b1)
	}
	// The same body, even written differently, replays the answer and places nothing.
	reordered := `{"destinations":[{"target":"+15557654321","type":"tel"}],  "source":{"target":"+15551230000","type":"tel"}}`
	resp2, b2 := h.do("POST", "/v1.0/calls", c.token, reordered, "Idempotency-Key", key)
	if resp2.StatusCode != 201 || string(b2) != string(b1) || resp2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %s, want 201 %s", resp2.StatusCode, b2, b1)
	}
	if n := h.calls.createCount(); n != 1 {
		t.Fatalf("the call manager placed %d calls, want 1", n)
	}
	e := h.expectError(409, "IDEMPOTENCY_KEY_REUSED", "POST", "/v1.0/calls", c.token, callBody("+15550000001"), "Idempotency-Key", key)
	if e.Status != "FAILED_PRECONDITION" {
		t.Fatalf("status = %s", e.Status)
	}
	// Keys belong to their customer.
	h.must(201, "POST", "/v1.0/calls", other.token, callBody("+15557654321"), "Idempotency-Key", key)
	// A failed request releases its key: a retry is served.
	poor := "poor-" + uuid.NewString()
	h.expectError(402, "INSUFFICIENT_BALANCE", "POST", "/v1.0/calls", c.token, callBody(targetPoor), "Idempotency-Key", poor)
	h.expectError(402, "INSUFFICIENT_BALANCE", "POST", "/v1.0/calls", c.token, callBody(targetPoor), "Idempotency-Key", poor)
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/calls", c.token, callBody("+15557654321"), "Idempotency-Key", "has space")

	// Concurrent duplicates: exactly one call.
	before := h.calls.createCount()
	burst := "burst-" + uuid.NewString()
	var wg sync.WaitGroup
	codes := make([]int, 8)
	for i := range codes {
		wg.Go(func() {
			resp, _ := h.do("POST", "/v1.0/calls", c.token, callBody("+15551112222"), "Idempotency-Key", burst)
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()
	if n := h.calls.createCount() - before; n != 1 {
		t.Fatalf("a burst of one key placed %d calls (codes %v)", n, codes)
	}
	for _, code := range codes {
		if code != 201 && code != 409 {
			t.Fatalf("burst codes %v, want 201 or 409 (in flight)", codes)
		}
	}
}

func TestRequestIDReachesTheCallManager(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	resp, _ := h.do("POST", "/v1.0/calls", c.token, callBody("+15557654321"), "X-Request-Id", "trace-42_abc")
	if resp.StatusCode != 201 || resp.Header.Get("X-Request-Id") != "trace-42_abc" {
		t.Fatalf("%d, X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	if ids := h.calls.requestIDs(); len(ids) != 1 || ids[0] != "trace-42_abc" {
		t.Fatalf("the call manager saw request ids %v", ids)
	}
	h.calls.mu.Lock()
	customerHeader := h.calls.seen[0].customerID
	h.calls.mu.Unlock()
	if customerHeader != c.id {
		t.Fatalf("customer_id header = %q", customerHeader)
	}
	// An invalid id is replaced by a generated one, which travels the same way.
	for _, bad := range []string{"has space", strings.Repeat("x", 65), "semi;colon"} {
		resp, _ := h.do("GET", "/v1.0/calls", c.token, nil, "X-Request-Id", bad)
		got := resp.Header.Get("X-Request-Id")
		if got == bad || !telemetry.ValidRequestID(got) {
			t.Fatalf("X-Request-Id %q echoed as %q", bad, got)
		}
		ids := h.calls.requestIDs()
		if ids[len(ids)-1] != got {
			t.Fatalf("the call manager saw %q, the client %q", ids[len(ids)-1], got)
		}
	}
	// Every layer logged the request id: access log, authentication, RPC sent and reply, the placement.
	want := map[string]bool{"http request": false, "authenticated": false, "rpc request sent": false, "rpc reply": false, "call placed": false}
	for _, l := range h.logs.lines() {
		if l["request_id"] != "trace-42_abc" {
			continue
		}
		msg, _ := l["msg"].(string)
		if _, ok := want[msg]; ok {
			want[msg] = true
		}
		if msg == "http request" {
			if l["route"] != "/v1.0/calls" || l["status"] != 201.0 || l["customer_id"] != c.id || l["method"] != "POST" || l["duration_ms"] == nil {
				t.Errorf("access log line = %v", l)
			}
		}
		if msg == "call placed" && l["call_id"] == nil {
			t.Errorf("call placed without call_id: %v", l)
		}
	}
	for msg, ok := range want {
		if !ok {
			t.Errorf("no %q log line with the request id", msg)
		}
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	big := `{"source":{"type":"tel","target":"+15551230000"},"destinations":[{"type":"tel","target":"+15557654321"}],"metadata":{"x":"` +
		strings.Repeat("a", 1<<20) + `"}}`
	sip := func(target string) map[string]any { return callBody(target) }
	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		wantStatus int
		wantReason string
		wantField  string
	}{
		{"malformed JSON", "POST", "/v1.0/calls", `{"source":`, 400, "INVALID_JSON_BODY", ""},
		{"not JSON", "POST", "/v1.0/calls", `hello`, 400, "INVALID_JSON_BODY", ""},
		{"empty body", "POST", "/v1.0/calls", ``, 400, "INVALID_JSON_BODY", ""},
		{"array body", "POST", "/v1.0/calls", `[]`, 400, "INVALID_JSON_BODY", ""},
		{"unknown field", "POST", "/v1.0/calls", `{"source":{"type":"tel","target":"+15551230000"},"destinations":[],"colour":"red"}`, 400, "INVALID_JSON_BODY", "colour"},
		{"unknown nested field", "POST", "/v1.0/calls", `{"source":{"type":"tel","target":"+15551230000","x":1},"destinations":[]}`, 400, "INVALID_JSON_BODY", "x"},
		{"wrong type", "POST", "/v1.0/calls", `{"source":{"type":"tel","target":"+15551230000"},"destinations":[],"timeout":"soon"}`, 400, "INVALID_JSON_BODY", "timeout"},
		{"trailing data", "POST", "/v1.0/calls", `{"source":{"type":"tel","target":"+15551230000"},"destinations":[]} {}`, 400, "INVALID_JSON_BODY", ""},
		{"oversized body", "POST", "/v1.0/calls", big, 413, "REQUEST_BODY_TOO_LARGE", ""},
		{"no source", "POST", "/v1.0/calls", map[string]any{"destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}}}, 400, "INVALID_ARGUMENT", "source"},
		{"no destinations", "POST", "/v1.0/calls", callBody(), 400, "INVALID_ARGUMENT", "destinations"},
		{"E.164 without plus", "POST", "/v1.0/calls", callBody("15557654321"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"E.164 too short", "POST", "/v1.0/calls", callBody("+123456"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"E.164 too long", "POST", "/v1.0/calls", callBody("+1234567890123456"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"E.164 with letters", "POST", "/v1.0/calls", callBody("+1555CALLNOW"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"second destination bad", "POST", "/v1.0/calls", callBody("+15557654321", "+1 555 765"), 400, "INVALID_ARGUMENT", "destinations[1].target"},
		{"sip without host", "POST", "/v1.0/calls", sip("alice@"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip bad port", "POST", "/v1.0/calls", sip("alice@example.com:99999"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip port 0", "POST", "/v1.0/calls", sip("alice@example.com:0"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip user with quote", "POST", "/v1.0/calls", sip(`a"b@example.com`), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip host with CR LF", "POST", "/v1.0/calls", sip("alice@example.com\r\nRoute: <sip:x>"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"source name with CR LF (SIP header injection)", "POST", "/v1.0/calls", map[string]any{
			"source":       map[string]string{"type": "tel", "target": "+15551230000", "name": "Alice\"\r\nP-Asserted-Identity: <sip:boss@evil>\r\nX: \""},
			"destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}}}, 400, "INVALID_ARGUMENT", "source.name"},
		{"destination name with NUL", "POST", "/v1.0/calls", map[string]any{
			"source":       map[string]string{"type": "tel", "target": "+15551230000"},
			"destinations": []map[string]string{{"type": "sip", "target": "bob@example.com", "name": "Bob\u0000"}}}, 400, "INVALID_ARGUMENT", "destinations[0].name"},
		{"target_name with LF", "POST", "/v1.0/calls", map[string]any{
			"source":       map[string]string{"type": "tel", "target": "+15551230000", "target_name": "a\nb"},
			"destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}}}, 400, "INVALID_ARGUMENT", "source.target_name"},
		{"sip loopback literal", "POST", "/v1.0/calls", sip("+1200000003@127.0.0.1:5080"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip private literal", "POST", "/v1.0/calls", sip("bob@10.1.2.3"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip link-local metadata", "POST", "/v1.0/calls", sip("bob@169.254.169.254"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip IPv6 loopback", "POST", "/v1.0/calls", sip("bob@[::1]:5060"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip IPv4-mapped loopback", "POST", "/v1.0/calls", sip("bob@[::ffff:127.0.0.1]"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"sip IPv4-compatible IPv6", "POST", "/v1.0/calls", sip("bob@[::a9fe:a9fe]"), 400, "INVALID_ARGUMENT", "destinations[0].target"},
		{"second sip destination private", "POST", "/v1.0/calls", callBody("bob@example.com", "bob@192.168.1.1"), 400, "INVALID_ARGUMENT", "destinations[1].target"},
		{"unknown address type", "POST", "/v1.0/calls", map[string]any{"source": map[string]string{"type": "fax", "target": "+15551230000"}, "destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}}}, 400, "INVALID_ARGUMENT", "source.type"},
		{"negative timeout", "POST", "/v1.0/calls", map[string]any{"source": map[string]string{"type": "tel", "target": "+15551230000"}, "destinations": []map[string]string{{"type": "tel", "target": "+15557654321"}}, "timeout": -1}, 400, "INVALID_ARGUMENT", "timeout"},
		{"bad UUID in path", "GET", "/v1.0/calls/not-a-uuid", nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID on hangup", "POST", "/v1.0/calls/1234/hangup", nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID on delete", "DELETE", "/v1.0/calls/" + strings.Repeat("z", 36), nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID of a webhook", "GET", "/v1.0/webhooks/x", nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID of an account", "GET", "/v1.0/billing_accounts/x", nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID of a delivery", "POST", "/v1.0/webhooks/" + uuid.NewString() + "/deliveries/x/retry", nil, 400, "INVALID_ARGUMENT", "delivery_id"},
		{"bad UUID of an access key", "DELETE", "/v1.0/accesskeys/x", nil, 400, "INVALID_ARGUMENT", "id"},
		{"bad UUID of a customer", "GET", "/v1.0/customers/x", nil, 400, "INVALID_ARGUMENT", "id"},
		{"webhook without uri", "POST", "/v1.0/webhooks", map[string]any{"name": "w", "event_types": []string{"call.*"}}, 400, "INVALID_ARGUMENT", "uri"},
		{"webhook bad event type", "POST", "/v1.0/webhooks", map[string]any{"name": "w", "uri": "https://example.com/h", "event_types": []string{"CALL"}}, 400, "INVALID_ARGUMENT", "event_types[0]"},
		{"webhook ftp uri", "POST", "/v1.0/webhooks", map[string]any{"name": "w", "uri": "ftp://example.com/h", "event_types": []string{"*"}}, 400, "INVALID_ARGUMENT", "uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := h.expectError(tt.wantStatus, tt.wantReason, tt.method, tt.path, c.token, tt.body)
			if tt.wantField != "" {
				if len(e.Details) == 0 || e.Details[0]["field"] != tt.wantField {
					t.Fatalf("details = %v, want field %s (message %q)", e.Details, tt.wantField, e.Message)
				}
			}
		})
	}
	if n := h.calls.createCount(); n != 0 {
		t.Fatalf("bad input reached the call manager %d times", n)
	}
	// The message names the problem.
	e := h.expectError(400, "INVALID_JSON_BODY", "POST", "/v1.0/calls", c.token, `{"source":{},"destinations":[],"colour":"red"}`)
	if !strings.Contains(e.Message, `"colour"`) {
		t.Fatalf("message %q does not name the field", e.Message)
	}
	raw, _ := json.Marshal(e)
	if strings.Contains(string(raw), "json: ") {
		t.Fatalf("message leaks Go's wording: %s", raw)
	}
}

// RTC_SIP_ALLOWED_NETWORKS opens ranges for literal sip destinations, as in the local stack; names
// pass the API (the rtc manager resolves and checks them when it dials).
func TestSIPDestinationPolicy(t *testing.T) {
	h := newHarness(t, options{sipAllowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	c := h.newCustomer("acme")
	for _, target := range []string{"bob@127.0.0.1:5070", "bob@example.com", "bob@93.184.216.34"} {
		h.must(201, "POST", "/v1.0/calls", c.token, callBody(target))
	}
	for _, target := range []string{"bob@10.0.0.1", "bob@[::1]", "bob@[fe80::1]"} {
		e := h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/calls", c.token, callBody(target))
		if !strings.Contains(e.Message, "not an allowed SIP destination") {
			t.Errorf("%s: message %q", target, e.Message)
		}
	}
}
