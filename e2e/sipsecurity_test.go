package e2e

import (
	"strings"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// The SIP hardening through the whole local stack (loopback allowed for sip destinations, as
// deploy/local/env.sh sets it): a name built to inject headers and a literal private address are
// refused at the API; the carrier simulator, which is the tel trunk, cannot be dialled as a sip
// destination (the call fails, never answered, nothing to bill at the SIP price), while the same
// number as tel reaches it.
func TestSIPDestinationHardening(t *testing.T) {
	stack := StartStack(t, nil)
	admin := stack.NewClient().Login(stack.AdminUser, stack.AdminPass)
	_, cc := stack.NewCustomer(admin, strings.ToLower(testenv.Name("sipsec")))

	call := func(src, dst map[string]string) Response {
		return cc.Do("POST", "/v1.0/calls", map[string]any{"source": src, "destinations": []map[string]string{dst}})
	}
	tel := map[string]string{"type": "tel", "target": "+15550001111"}
	for _, tt := range []struct {
		name     string
		src, dst map[string]string
		field    string
	}{
		{"header injection in the name", map[string]string{"type": "tel", "target": "+15550001111",
			"name": "Eve\"\r\nP-Asserted-Identity: <sip:boss@evil.example>"}, map[string]string{"type": "tel", "target": "+1200000001"}, "source.name"},
		{"a private literal address", tel, map[string]string{"type": "sip", "target": "bob@10.1.2.3"}, "destinations[0].target"},
	} {
		r := call(tt.src, tt.dst)
		var e struct {
			Error struct {
				Reason  string           `json:"reason"`
				Details []map[string]any `json:"details"`
			} `json:"error"`
		}
		r.JSON(t, &e)
		if r.Status != 400 || e.Error.Reason != "INVALID_ARGUMENT" || len(e.Error.Details) == 0 || e.Error.Details[0]["field"] != tt.field {
			t.Errorf("%s: %d %s, want 400 INVALID_ARGUMENT on %s", tt.name, r.Status, r.Body, tt.field)
		}
	}

	// The trunk as a sip destination: accepted by the API (a loopback literal, allowed here), refused
	// by the rtc manager when it dials.
	r := call(tel, map[string]string{"type": "sip", "target": "+1200000003@" + stack.CarrierAddr})
	if r.Status != 201 {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	var out struct {
		Calls []Call `json:"calls"`
	}
	r.JSON(t, &out)
	got := cc.WaitCall(out.Calls[0].ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
	if got.HangupReason != "failed" || got.Duration != 0 || got.SIPCode == 200 {
		t.Errorf("the trunk dialled as sip: %s; want failed, never answered", got)
	}

	// The same number as tel goes through the trunk.
	c := cc.PlaceCall("+1200000001") // answers after 1 s, hangs up 1 s later
	final := cc.WaitCall(c.ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
	if final.HangupReason != "normal" || final.Duration < 1 {
		t.Errorf("tel through the trunk: %s; want normal", final)
	}
}
