package httpapi_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/httpapi"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/webhookapi"
)

func TestBillingRoutes(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	accounts := decodeJSON[billingapi.AccountList](t, h.must(200, "GET", "/v1.0/billing_accounts", c.token, nil)).Result
	if len(accounts) != 1 || accounts[0].CustomerID != c.id {
		t.Fatalf("accounts = %+v", accounts)
	}
	acc := accounts[0]
	if got := decodeJSON[billingapi.Account](t, h.must(200, "GET", "/v1.0/billing_accounts/"+acc.ID, c.token, nil)); got.ID != acc.ID {
		t.Fatalf("account = %+v", got)
	}

	h.expectError(403, "PERMISSION_DENIED", "POST", "/v1.0/billing_accounts/"+acc.ID+"/balance_add_force", c.token, map[string]any{"amount": 1000})
	for _, bad := range []any{map[string]any{"amount": 0}, map[string]any{"amount": -5}, map[string]any{"amount": 1e13}} {
		h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/billing_accounts/"+acc.ID+"/balance_add_force", h.root, bad)
	}
	h.expectError(400, "INVALID_JSON_BODY", "POST", "/v1.0/billing_accounts/"+acc.ID+"/balance_add_force", h.root, map[string]any{"amount": 1.5})
	got := decodeJSON[billingapi.Account](t, h.must(200, "POST", "/v1.0/billing_accounts/"+acc.ID+"/balance_add_force", h.root, map[string]any{"amount": 5_000_000}))
	if got.Balance != acc.Balance+5_000_000 {
		t.Fatalf("balance %d, want %d", got.Balance, acc.Balance+5_000_000)
	}
	h.expectError(404, "BILLING_ACCOUNT_NOT_FOUND", "POST", "/v1.0/billing_accounts/"+uuid.NewString()+"/balance_add_force", h.root, map[string]any{"amount": 1})

	list := decodeJSON[billingapi.BillingList](t, h.must(200, "GET", "/v1.0/billings?page_size=10", c.token, nil))
	if len(list.Result) != 2 || list.Result[0].Amount != 5_000_000 {
		t.Fatalf("billings = %+v", list.Result)
	}
	if all := decodeJSON[billingapi.AccountList](t, h.must(200, "GET", "/v1.0/billing_accounts", h.root, nil)); len(all.Result) != 1 {
		t.Fatalf("superadmin's accounts = %d", len(all.Result))
	}
}

func TestWebhookRoutes(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	hook := decodeJSON[webhookapi.Webhook](t, h.must(201, "POST", "/v1.0/webhooks", c.token, map[string]any{
		"name": "events", "uri": "https://example.com/hook", "event_types": []string{"call.*", "billing.charged"}}))
	if hook.CustomerID != c.id || hook.Secret == "" || hook.Method != "POST" {
		t.Fatalf("created = %+v", hook)
	}
	if got := decodeJSON[webhookapi.Webhook](t, h.must(200, "GET", "/v1.0/webhooks/"+hook.ID, c.token, nil)); got.Secret != "" || got.Name != "events" {
		t.Fatalf("get = %+v", got)
	}
	if got := decodeJSON[webhookapi.WebhookList](t, h.must(200, "GET", "/v1.0/webhooks", c.token, nil)); len(got.Result) != 1 {
		t.Fatalf("list = %+v", got)
	}
	updated := decodeJSON[webhookapi.Webhook](t, h.must(200, "PUT", "/v1.0/webhooks/"+hook.ID, c.token, map[string]any{
		"name": "renamed", "uri": "https://example.com/other", "event_types": []string{"*"}, "status": "disabled"}))
	if updated.Name != "renamed" || updated.Status != "disabled" {
		t.Fatalf("updated = %+v", updated)
	}
	h.expectError(400, "INVALID_ARGUMENT", "PUT", "/v1.0/webhooks/"+hook.ID, c.token, map[string]any{
		"customer_id": uuid.NewString(), "name": "x", "uri": "https://example.com/", "event_types": []string{"*"}})
	rotated := decodeJSON[webhookapi.Webhook](t, h.must(200, "POST", "/v1.0/webhooks/"+hook.ID+"/rotate_secret", c.token, nil))
	if rotated.Secret == "" || rotated.Secret == hook.Secret {
		t.Fatalf("rotated secret %q (was %q)", rotated.Secret, hook.Secret)
	}
	deliveries := decodeJSON[webhookapi.DeliveryList](t, h.must(200, "GET", "/v1.0/webhooks/"+hook.ID+"/deliveries?page_size=5", c.token, nil))
	if len(deliveries.Result) != 1 {
		t.Fatalf("deliveries = %+v", deliveries)
	}
	retried := decodeJSON[webhookapi.Delivery](t, h.must(200, "POST", "/v1.0/webhooks/"+hook.ID+"/deliveries/"+deliveries.Result[0].ID+"/retry", c.token, nil))
	if retried.Status != webhookapi.DeliveryPending {
		t.Fatalf("retried = %+v", retried)
	}
	h.expectError(404, "DELIVERY_NOT_FOUND", "POST", "/v1.0/webhooks/"+hook.ID+"/deliveries/"+uuid.NewString()+"/retry", c.token, nil)

	// A superadmin names the customer; without one it is refused.
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/webhooks", h.root, map[string]any{"name": "x", "uri": "https://example.com/", "event_types": []string{"*"}})
	forC := decodeJSON[webhookapi.Webhook](t, h.must(201, "POST", "/v1.0/webhooks", h.root, map[string]any{
		"customer_id": c.id, "name": "x", "uri": "https://example.com/", "event_types": []string{"*"}}))
	if forC.CustomerID != c.id {
		t.Fatalf("superadmin's webhook for %s belongs to %s", c.id, forC.CustomerID)
	}
	h.must(200, "DELETE", "/v1.0/webhooks/"+hook.ID, c.token, nil)
	h.expectError(404, "WEBHOOK_NOT_FOUND", "GET", "/v1.0/webhooks/"+hook.ID, c.token, nil)
}

// TestOpenAPIDocumentCoversTheRouter compares the router's routes with the document's operations:
// every route is documented, and every documented operation is served.
func TestOpenAPIDocumentCoversTheRouter(t *testing.T) {
	d, _, err := loadDoc()
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for path, item := range d.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	router := httpapi.New(httpapi.Deps{Log: discardLogger(), WS: wsStub}).(chi.Routes)
	served := map[string]bool{}
	err = chi.Walk(router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if route != "/" {
			route = strings.TrimSuffix(route, "/")
		}
		served[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var missing, extra []string
	for r := range served {
		if !documented[r] {
			missing = append(missing, r)
		}
	}
	for r := range documented {
		if !served[r] {
			extra = append(extra, r)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("served but not documented: %v\ndocumented but not served: %v", missing, extra)
	}
	if len(served) < 30 {
		t.Fatalf("only %d routes walked", len(served))
	}
}

// TestValidatorRejectsWhatTheDocumentForbids proves the response check of the suite can fail.
func TestValidatorRejectsWhatTheDocumentForbids(t *testing.T) {
	req := httptest.NewRequest("GET", "/v1.0/calls/"+uuid.NewString(), nil)
	good := `{"id":"` + uuid.NewString() + `","customer_id":"` + uuid.NewString() + `","source":{"type":"tel","target":"+15551230000"},` +
		`"destination":{"type":"tel","target":"+15557654321"},"status":"dialing","direction":"outgoing","duration":0,` +
		`"tm_create":"` + time.Now().UTC().Format(time.RFC3339Nano) + `","tm_update":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}`
	tests := []struct {
		name   string
		status int
		body   string
		reqID  string
		ok     bool
	}{
		{"a valid call", 200, good, "r", true},
		{"no request id", 200, good, "", false},
		{"unknown status", 200, strings.Replace(good, `"dialing"`, `"flying"`, 1), "r", false},
		{"extra field", 200, strings.Replace(good, `"duration":0`, `"duration":0,"secret":"x"`, 1), "r", false},
		{"missing field", 200, strings.Replace(good, `"direction":"outgoing",`, ``, 1), "r", false},
		{"bare error", 404, `{"message":"not found"}`, "r", false},
		{"envelope", 404, `{"error":{"status":"NOT_FOUND","reason":"CALL_NOT_FOUND","message":"m","request_id":"r","details":[]}}`, "r", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(bytes.NewReader([]byte(tt.body)))}
			if tt.reqID != "" {
				resp.Header.Set("X-Request-Id", tt.reqID)
			}
			err := validateResponse(req, resp, []byte(tt.body))
			if (err == nil) != tt.ok {
				t.Fatalf("validateResponse() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
