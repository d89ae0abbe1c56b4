package httpapi_test

import (
	"testing"

	"github.com/google/uuid"

	"voipbin/pkg/webhookapi"
)

// TestWebhookCreateChecks: names are trimmed and a blank one is refused; a superadmin cannot create
// a webhook for a customer that does not exist.
func TestWebhookCreateChecks(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("hooks")
	body := func(name string) map[string]any {
		return map[string]any{"name": name, "uri": "https://example.com/hook", "event_types": []string{"*"}}
	}
	for _, name := range []string{"   ", "\t \t"} {
		h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/webhooks", c.token, body(name))
	}
	got := decodeJSON[webhookapi.Webhook](t, h.must(201, "POST", "/v1.0/webhooks", c.token, body("  ops  ")))
	if got.Name != "ops" {
		t.Fatalf("name %q, want it trimmed to %q", got.Name, "ops")
	}
	h.expectError(400, "INVALID_ARGUMENT", "PUT", "/v1.0/webhooks/"+got.ID, c.token, body("  "))

	forNobody := body("x")
	forNobody["customer_id"] = uuid.NewString()
	h.expectError(404, "CUSTOMER_NOT_FOUND", "POST", "/v1.0/webhooks", h.root, forNobody)
	forC := body("x")
	forC["customer_id"] = c.id
	h.must(201, "POST", "/v1.0/webhooks", h.root, forC)
}
