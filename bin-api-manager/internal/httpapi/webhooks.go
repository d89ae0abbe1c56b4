package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/apierr"
	"voipbin/pkg/webhookapi"
)

// WebhookManager is what the webhook routes need of webhookapi.Client: reads and writes.
type WebhookManager interface {
	webhookReader
	webhookWriter
}

type webhookReader interface {
	List(ctx context.Context, customerID string) ([]webhookapi.Webhook, error)
	Get(ctx context.Context, customerID, id string) (webhookapi.Webhook, error)
	Deliveries(ctx context.Context, customerID, id string, pageSize int, pageToken string) (webhookapi.DeliveryList, error)
}

type webhookWriter interface {
	Create(ctx context.Context, req webhookapi.WriteRequest) (webhookapi.Webhook, error)
	Update(ctx context.Context, customerID, id string, req webhookapi.WriteRequest) (webhookapi.Webhook, error)
	Delete(ctx context.Context, customerID, id string) (webhookapi.Webhook, error)
	RotateSecret(ctx context.Context, customerID, id string) (webhookapi.Webhook, error)
	Retry(ctx context.Context, customerID, id, deliveryID string) (webhookapi.Delivery, error)
}

// customerLookup tells whether a customer exists (identity.ErrCustomerNotFound otherwise).
type customerLookup interface {
	Customer(ctx context.Context, caller identity.Identity, id string) (identity.Customer, error)
}

// webhooks serves /v1.0/webhooks, forwarding to the webhook manager.
type webhooks struct {
	*api
	mgr       WebhookManager
	customers customerLookup
}

func (h *webhooks) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/", h.handle(h.create))
	r.Get("/", h.handle(h.list))
	r.Get("/{id}", h.handle(h.get))
	r.Put("/{id}", h.handle(h.update))
	r.Delete("/{id}", h.handle(h.delete))
	r.Post("/{id}/rotate_secret", h.handle(h.rotate))
	r.Get("/{id}/deliveries", h.handle(h.deliveries))
	r.Post("/{id}/deliveries/{delivery_id}/retry", h.handle(h.retry))
	return r
}

func errWebhookNotFound() error {
	return apierr.New(apierr.NotFound, webhookapi.ErrReasonWebhookNotFound, "webhook not found")
}

// maxEventTypes is the webhook manager's limit too.
const maxEventTypes = 64

var eventPattern = regexp.MustCompile(`^(\*|[a-z][a-z_]*(\.[a-z][a-z_]*)*(\.\*)?)$`)

type webhookBody struct {
	CustomerID string   `json:"customer_id"`
	Name       string   `json:"name"`
	URI        string   `json:"uri"`
	Method     string   `json:"method"`
	EventTypes []string `json:"event_types"`
	Status     string   `json:"status"`
}

// validate checks the shape of a webhook; the webhook manager checks the rest (the target
// address, SSRF) and answers with its own reasons.
func (b webhookBody) validate() error {
	// Names are trimmed (request does the same): one of only spaces is blank, hence refused.
	if err := validText("name", strings.TrimSpace(b.Name)); err != nil {
		return err
	}
	u, err := url.Parse(b.URI)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(b.URI) > 2048 {
		return apierr.Invalid("uri", "must be an absolute http or https URL of at most 2048 characters")
	}
	if b.Method != "" && b.Method != http.MethodPost && b.Method != http.MethodPut && b.Method != http.MethodPatch {
		return apierr.Invalid("method", `must be "POST" (the default), "PUT" or "PATCH"`)
	}
	if len(b.EventTypes) == 0 || len(b.EventTypes) > maxEventTypes {
		return apierr.Invalid("event_types", fmt.Sprintf("must hold 1 to %d event types or patterns like call.*", maxEventTypes))
	}
	for i, t := range b.EventTypes {
		if len(t) > 100 || !eventPattern.MatchString(t) {
			return apierr.Invalid(fmt.Sprintf("event_types[%d]", i), fmt.Sprintf("%q is not an event type or pattern like call.created, call.* or *", t))
		}
	}
	if b.Status != "" && b.Status != webhookapi.StatusEnabled && b.Status != webhookapi.StatusDisabled {
		return apierr.Invalid("status", `must be "enabled" or "disabled"`)
	}
	return nil
}

func validText(field, s string) error {
	if len(s) == 0 || len(s) > 255 {
		return apierr.Invalid(field, "must be 1-255 characters")
	}
	return nil
}

func (b webhookBody) request(customerID string) webhookapi.WriteRequest {
	return webhookapi.WriteRequest{CustomerID: customerID, Name: strings.TrimSpace(b.Name), URI: b.URI, Method: b.Method,
		EventTypes: b.EventTypes, Status: b.Status}
}

func (h *webhooks) create(w http.ResponseWriter, r *http.Request) error {
	who := caller(r)
	if err := requireAdmin(who); err != nil {
		return err
	}
	var in webhookBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	customer := in.CustomerID
	switch {
	case who.Superadmin() && customer == "":
		return apierr.Invalid("customer_id", "is required when a superadmin creates a webhook")
	case !who.Superadmin() && customer != "" && customer != who.CustomerID:
		return apierr.New(apierr.PermissionDenied, apierr.ReasonPermissionDenied, "cannot create webhooks for another customer")
	case !who.Superadmin():
		customer = who.CustomerID
	}
	customer, ok := canonicalUUID(customer)
	if !ok {
		return apierr.Invalid("customer_id", "is not a UUID")
	}
	if err := in.validate(); err != nil {
		return err
	}
	if who.Superadmin() {
		// A superadmin names the customer: it must exist (404 CUSTOMER_NOT_FOUND), or the webhook
		// would belong to no one.
		if _, err := h.customers.Customer(r.Context(), who, customer); err != nil {
			return err
		}
	}
	hook, err := h.mgr.Create(r.Context(), in.request(customer))
	if err != nil {
		return err
	}
	h.log.InfoContext(r.Context(), "webhook created", "webhook_id", hook.ID)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, hook)
	return nil
}

func (h *webhooks) list(w http.ResponseWriter, r *http.Request) error {
	who := caller(r)
	if err := requireRead(who); err != nil {
		return err
	}
	requested, err := queryUUID(r, "customer_id")
	if err != nil {
		return err
	}
	out := []webhookapi.Webhook{}
	if scope, ok := who.Scope(requested); ok {
		if out, err = h.mgr.List(r.Context(), scope); err != nil {
			return err
		}
		if out == nil {
			out = []webhookapi.Webhook{}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"result": out})
	return nil
}

// target resolves {id} and the customer scope of a single-webhook route; admin says whether the
// route changes something.
func (h *webhooks) target(r *http.Request, admin bool) (scope, id string, err error) {
	who := caller(r)
	check := requireRead
	if admin {
		check = requireAdmin
	}
	if err := check(who); err != nil {
		return "", "", err
	}
	if id, err = pathID(r, "id"); err != nil {
		return "", "", err
	}
	requested, err := queryUUID(r, "customer_id")
	if err != nil {
		return "", "", err
	}
	scope, ok := who.Scope(requested)
	if !ok {
		return "", "", errWebhookNotFound()
	}
	return scope, id, nil
}

func (h *webhooks) get(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, false)
	if err != nil {
		return err
	}
	hook, err := h.mgr.Get(r.Context(), scope, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, hook)
	return nil
}

func (h *webhooks) update(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, true)
	if err != nil {
		return err
	}
	var in webhookBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	if in.CustomerID != "" {
		return apierr.Invalid("customer_id", "a webhook cannot move to another customer")
	}
	if err := in.validate(); err != nil {
		return err
	}
	hook, err := h.mgr.Update(r.Context(), scope, id, in.request(scope))
	if err != nil {
		return err
	}
	h.log.InfoContext(r.Context(), "webhook updated", "webhook_id", hook.ID)
	writeJSON(w, http.StatusOK, hook)
	return nil
}

func (h *webhooks) delete(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, true)
	if err != nil {
		return err
	}
	hook, err := h.mgr.Delete(r.Context(), scope, id)
	if err != nil {
		return err
	}
	h.log.InfoContext(r.Context(), "webhook deleted", "webhook_id", hook.ID)
	writeJSON(w, http.StatusOK, hook)
	return nil
}

func (h *webhooks) rotate(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, true)
	if err != nil {
		return err
	}
	hook, err := h.mgr.RotateSecret(r.Context(), scope, id)
	if err != nil {
		return err
	}
	h.log.InfoContext(r.Context(), "webhook secret rotated", "webhook_id", hook.ID)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, hook)
	return nil
}

func (h *webhooks) deliveries(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, false)
	if err != nil {
		return err
	}
	size, err := queryInt(r, "page_size", 1, 100)
	if err != nil {
		return err
	}
	token := r.URL.Query().Get("page_token")
	if len(token) > 512 {
		return apierr.Invalid("page_token", "is not a page token returned by this API")
	}
	list, err := h.mgr.Deliveries(r.Context(), scope, id, size, token)
	if err != nil {
		return err
	}
	if list.Result == nil {
		list.Result = []webhookapi.Delivery{}
	}
	writeJSON(w, http.StatusOK, listJSON[webhookapi.Delivery]{Result: list.Result, NextPageToken: list.NextPageToken})
	return nil
}

func (h *webhooks) retry(w http.ResponseWriter, r *http.Request) error {
	scope, id, err := h.target(r, true)
	if err != nil {
		return err
	}
	deliveryID, err := pathID(r, "delivery_id")
	if err != nil {
		return err
	}
	d, err := h.mgr.Retry(r.Context(), scope, id, deliveryID)
	if err != nil {
		return err
	}
	h.log.InfoContext(r.Context(), "webhook delivery retried", "webhook_id", id, "delivery_id", deliveryID)
	writeJSON(w, http.StatusOK, d)
	return nil
}
