package e2e

import (
	"strings"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// TestCallLifecycle is the README's promise: a customer places a real SIP call through the API
// and follows it to its end over the WebSocket and a signed webhook, then sees what it cost.
func TestCallLifecycle(t *testing.T) {
	stack := StartStack(t, map[string]string{"BILLING_RATE_TEL": "60000"}) // 0.06 USD a minute
	admin := stack.NewClient().Login(stack.AdminUser, stack.AdminPass)
	customer, cc := stack.NewCustomer(admin, strings.ToLower(testenv.Name("acme")))

	// billing opens the account from customer.created
	var accounts struct {
		Result []struct {
			ID      string `json:"id"`
			Balance int64  `json:"balance"`
		} `json:"result"`
	}
	testenv.Eventually(t, 15*time.Second, "the billing account", func() bool {
		cc.Must(200, "GET", "/v1.0/billing_accounts", nil).JSON(t, &accounts)
		return len(accounts.Result) == 1
	})
	if got := accounts.Result[0].Balance; got != 10_000_000 {
		t.Fatalf("initial balance = %d, want 10000000", got)
	}

	receiver := StartReceiver(t)
	var hook struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	cc.Must(201, "POST", "/v1.0/webhooks", map[string]any{"name": "mine", "uri": receiver.URL, "method": "POST",
		"event_types": []string{"call.*"}}).JSON(t, &hook)
	if hook.Secret == "" {
		t.Fatal("webhook creation returned no secret")
	}
	receiver.Configure(t, hook.Secret)
	sub := stack.Subscribe(t, cc.Token, "customer_id:"+customer.ID+":call:*")

	requestID := strings.ReplaceAll(testenv.Name("e2e-req"), "_", "-")
	call := cc.PlaceCall("+12000002", "X-Request-Id", requestID) // answer after 1 s, hang up 2 s later
	final := cc.WaitCall(call.ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
	if final.HangupReason != "normal" || final.HangupBy != "remote" || final.Duration < 2 || final.Duration > 3 {
		t.Fatalf("final call = %s; want normal, remote, 2 s", final)
	}

	want := []string{"call.created", "call.ringing", "call.answered", "call.ended"}
	// WebSocket: the events of the call, in order, as plain envelopes
	testenv.Eventually(t, 15*time.Second, "call.ended on the WebSocket", func() bool { return hasType(sub.Events(), "call.ended") })
	var types []string
	var lastSeq float64
	for _, ev := range sub.Events() {
		data, _ := ev["data"].(map[string]any)
		if data["call_id"] != call.ID {
			t.Fatalf("event of another call: %v", ev)
		}
		seq, _ := ev["sequence"].(float64)
		if seq <= lastSeq {
			t.Fatalf("sequence went %v → %v", lastSeq, seq)
		}
		lastSeq = seq
		types = append(types, ev["event_type"].(string))
	}
	if !containsInOrder(types, want) {
		t.Fatalf("WebSocket events %v, want %v in order", types, want)
	}

	// Webhook: the same events, both signatures verified, in sequence order
	var got []ReceivedDelivery
	testenv.Eventually(t, 20*time.Second, "call.ended at the webhook", func() bool {
		got = receiver.Received(t)
		for _, d := range got {
			if d.EventType == "call.ended" {
				return true
			}
		}
		return false
	})
	var hookTypes []string
	for i, d := range got {
		if !d.VerifiedVoipbin || !d.VerifiedStandard || d.Status != 200 {
			t.Fatalf("delivery %+v not verified", d)
		}
		if i > 0 && d.Sequence <= got[i-1].Sequence {
			t.Fatalf("webhook deliveries out of order: %+v", got)
		}
		hookTypes = append(hookTypes, d.EventType)
	}
	if !containsInOrder(hookTypes, want) {
		t.Fatalf("webhook events %v, want %v in order", hookTypes, want)
	}

	// Billing: one started minute at 0.06 USD
	testenv.Eventually(t, 15*time.Second, "the charge", func() bool {
		cc.Must(200, "GET", "/v1.0/billing_accounts", nil).JSON(t, &accounts)
		return accounts.Result[0].Balance == 10_000_000-60_000
	})

	// The request id crossed the gateway into the call manager's log lines.
	if lines := stack.LogLines("call-manager", requestID); len(lines) == 0 {
		t.Fatalf("call-manager never logged request id %s", requestID)
	}
	if lines := stack.LogLines("api-manager", requestID); len(lines) == 0 {
		t.Fatalf("api-manager never logged request id %s", requestID)
	}
}

// TestCallOutcomes checks the final record of calls that do not end normally.
func TestCallOutcomes(t *testing.T) {
	stack := StartStack(t, nil)
	admin := stack.NewClient().Login(stack.AdminUser, stack.AdminPass)
	_, cc := stack.NewCustomer(admin, strings.ToLower(testenv.Name("outcomes")))
	testenv.Eventually(t, 15*time.Second, "the billing account", func() bool {
		return strings.Contains(string(cc.Must(200, "GET", "/v1.0/billing_accounts", nil).Body), "balance")
	})

	t.Run("busy", func(t *testing.T) {
		c := cc.PlaceCall("+14860000")
		final := cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "hangup" })
		if final.HangupReason != "busy" || final.HangupBy != "remote" || final.SIPCode != 486 || final.HangupCause != 17 || final.Duration != 0 {
			t.Fatalf("busy call = %s", final)
		}
	})
	t.Run("rejected 503", func(t *testing.T) {
		c := cc.PlaceCall("+15030000")
		final := cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "hangup" })
		if final.HangupReason != "failed" || final.SIPCode != 503 || final.Duration != 0 {
			t.Fatalf("rejected call = %s", final)
		}
	})
	t.Run("local hangup while ringing", func(t *testing.T) {
		c := cc.PlaceCall("+11800000") // rings forever
		cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "ringing" })
		cc.Must(200, "POST", "/v1.0/calls/"+c.ID+"/hangup", nil)
		final := cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "hangup" })
		if final.HangupReason != "cancel" || final.HangupBy != "local" || final.Duration != 0 {
			t.Fatalf("cancelled call = %s", final)
		}
	})
	t.Run("local hangup after answer", func(t *testing.T) {
		c := cc.PlaceCall("+12000000") // answers, never hangs up
		cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "progressing" })
		cc.Must(200, "POST", "/v1.0/calls/"+c.ID+"/hangup", nil)
		final := cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "hangup" })
		if final.HangupReason != "normal" || final.HangupBy != "local" {
			t.Fatalf("hung-up call = %s", final)
		}
	})
}

func hasType(evs []map[string]any, typ string) bool {
	for _, ev := range evs {
		if ev["event_type"] == typ {
			return true
		}
	}
	return false
}

// containsInOrder reports whether want appears in got as a subsequence.
func containsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
