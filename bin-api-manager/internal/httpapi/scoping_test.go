package httpapi_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestAnotherCustomersResourceIsNotFound runs every resource route with {id} as customer B on
// customer A's resources: each answer must be exactly the answer for a resource that does not
// exist (status, reason and message), also when B names A in ?customer_id=.
func TestAnotherCustomersResourceIsNotFound(t *testing.T) {
	h := newHarness(t, options{})
	a := h.newCustomer("alpha")
	b := h.newCustomer("bravo")

	call := decodeJSON[createdCalls](t, h.must(201, "POST", "/v1.0/calls", a.token, callBody("+15557654321"))).Calls[0].ID
	hook := decodeJSON[map[string]any](t, h.must(201, "POST", "/v1.0/webhooks", a.token, map[string]any{
		"name": "w", "uri": "https://example.com/hook", "event_types": []string{"call.*"}}))["id"].(string)
	delivery := h.hooks.firstDelivery(hook)
	key := decodeJSON[map[string]any](t, h.must(201, "POST", "/v1.0/accesskeys", a.token, map[string]any{"name": "k", "expire": 3600}))["id"].(string)
	var account string
	for _, acc := range decodeJSON[struct {
		Result []struct {
			ID string `json:"id"`
		} `json:"result"`
	}](t, h.must(200, "GET", "/v1.0/billing_accounts", a.token, nil)).Result {
		account = acc.ID
	}
	if account == "" {
		t.Fatal("alpha has no billing account")
	}
	hookBody := map[string]any{"name": "mine now", "uri": "https://evil.example/h", "event_types": []string{"*"}}

	routes := []struct {
		method, path string // "%s" is the id
		body         any
		reason       string
		id           string
	}{
		{"GET", "/v1.0/calls/%s", nil, "CALL_NOT_FOUND", call},
		{"PATCH", "/v1.0/calls/%s", map[string]string{"status": "hangup"}, "CALL_NOT_FOUND", call},
		{"POST", "/v1.0/calls/%s/hangup", nil, "CALL_NOT_FOUND", call},
		{"DELETE", "/v1.0/calls/%s", nil, "CALL_NOT_FOUND", call},
		{"GET", "/v1.0/webhooks/%s", nil, "WEBHOOK_NOT_FOUND", hook},
		{"PUT", "/v1.0/webhooks/%s", hookBody, "WEBHOOK_NOT_FOUND", hook},
		{"DELETE", "/v1.0/webhooks/%s", nil, "WEBHOOK_NOT_FOUND", hook},
		{"POST", "/v1.0/webhooks/%s/rotate_secret", nil, "WEBHOOK_NOT_FOUND", hook},
		{"GET", "/v1.0/webhooks/%s/deliveries", nil, "WEBHOOK_NOT_FOUND", hook},
		{"POST", "/v1.0/webhooks/%s/deliveries/" + delivery + "/retry", nil, "WEBHOOK_NOT_FOUND", hook},
		{"GET", "/v1.0/accesskeys/%s", nil, "ACCESSKEY_NOT_FOUND", key},
		{"DELETE", "/v1.0/accesskeys/%s", nil, "ACCESSKEY_NOT_FOUND", key},
		{"GET", "/v1.0/billing_accounts/%s", nil, "BILLING_ACCOUNT_NOT_FOUND", account},
		{"GET", "/v1.0/customers/%s", nil, "CUSTOMER_NOT_FOUND", a.id},
	}
	for _, rt := range routes {
		t.Run(rt.method+" "+strings.ReplaceAll(rt.path, "%s", "{id}"), func(t *testing.T) {
			missing := h.expectError(404, rt.reason, rt.method, strings.ReplaceAll(rt.path, "%s", uuid.NewString()), b.token, rt.body)
			for _, suffix := range []string{"", "?customer_id=" + a.id} {
				got := h.expectError(404, rt.reason, rt.method, strings.ReplaceAll(rt.path, "%s", rt.id)+suffix, b.token, rt.body)
				if got.Status != missing.Status || got.Message != missing.Message || len(got.Details) != len(missing.Details) {
					t.Fatalf("another customer's answer %+v differs from a missing one's %+v", got, missing)
				}
			}
			// The owner still reaches it (read-only routes; the others changed nothing above).
			if rt.method == "GET" {
				h.must(200, rt.method, strings.ReplaceAll(rt.path, "%s", rt.id), a.token, nil)
			}
		})
	}

	// Lists show only the caller's own resources, also when another customer is named.
	for _, path := range []string{"/v1.0/calls", "/v1.0/webhooks", "/v1.0/accesskeys", "/v1.0/billing_accounts", "/v1.0/billings"} {
		for _, q := range []string{"", "?customer_id=" + a.id} {
			body := string(h.must(200, "GET", path+q, b.token, nil))
			for _, id := range []string{call, hook, key, account, a.id} {
				if strings.Contains(body, id) {
					t.Errorf("GET %s%s as bravo shows alpha's %s: %s", path, q, id, body)
				}
			}
		}
	}
	// Nothing of alpha's changed.
	h.must(200, "GET", "/v1.0/calls/"+call, a.token, nil)
	if got := decodeJSON[map[string]any](t, h.must(200, "GET", "/v1.0/webhooks/"+hook, a.token, nil)); got["name"] != "w" {
		t.Fatalf("alpha's webhook changed: %v", got)
	}
	h.must(200, "GET", "/v1.0/accesskeys/"+key, a.token, nil)
	// A superadmin reaches everything.
	h.must(200, "GET", "/v1.0/calls/"+call, h.root, nil)
	h.must(200, "GET", "/v1.0/webhooks/"+hook+"?customer_id="+a.id, h.root, nil)
	h.must(200, "GET", "/v1.0/billing_accounts/"+account, h.root, nil)
	h.must(200, "GET", "/v1.0/accesskeys/"+key, h.root, nil)
}
