package webhook

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Store keeps webhooks. customerID "" means any customer; a webhook of another customer is
// ErrNotFound, like one that does not exist.
type Store interface {
	Create(ctx context.Context, w Webhook) error
	Get(ctx context.Context, customerID, id string) (Webhook, error)
	List(ctx context.Context, customerID string) ([]Webhook, error)
	// Update runs fn on the webhook inside one transaction and saves what it leaves.
	Update(ctx context.Context, customerID, id string, fn func(*Webhook) error) (Webhook, error)
	// Delete removes the webhook and fails its pending deliveries.
	Delete(ctx context.Context, customerID, id string) (Webhook, error)
}

// DeliveryLog reads and retries a webhook's deliveries.
type DeliveryLog interface {
	// Deliveries is a page of deliveries, newest first, with their attempts, and the token of the
	// next page ("" at the end). A malformed token is a *FieldError.
	Deliveries(ctx context.Context, webhookID string, pageSize int, pageToken string) ([]Delivery, string, error)
	// Retry makes the delivery pending and due now, with a fresh retry window.
	Retry(ctx context.Context, webhookID, deliveryID string, now time.Time) (Delivery, error)
}

// TargetChecker refuses URIs whose host resolves to an address webhooks may not reach: its error
// wraps ErrTargetForbidden, or is a *FieldError when the host does not resolve.
type TargetChecker interface {
	CheckTarget(ctx context.Context, uri string) error
}

// Service is the webhook use cases behind the API.
type Service struct {
	store  Store
	log    DeliveryLog
	target TargetChecker
	kick   func()
	now    func() time.Time
}

// NewService makes the service; kick (may be nil) wakes a local dispatcher after a manual retry.
func NewService(store Store, log DeliveryLog, target TargetChecker, kick func()) *Service {
	return &Service{store: store, log: log, target: target, kick: kick, now: func() time.Time { return time.Now().UTC() }}
}

// Page sizes of the delivery log.
const (
	DefaultPageSize = 20
	MaxPageSize     = 100
)

// Create makes an enabled (unless spec says disabled) webhook with a new secret.
func (s *Service) Create(ctx context.Context, customerID string, spec Spec) (Webhook, error) {
	if customerID == "" {
		return Webhook{}, &FieldError{"customer_id", "is required"}
	}
	spec, err := s.checked(ctx, spec)
	if err != nil {
		return Webhook{}, err
	}
	secret, err := NewSecret()
	if err != nil {
		return Webhook{}, err
	}
	now := s.now()
	w := Webhook{ID: uuid.NewString(), CustomerID: customerID, Name: spec.Name, URI: spec.URI, Method: spec.Method,
		EventTypes: spec.EventTypes, Status: spec.Status, Secret: secret, TMCreate: now, TMUpdate: now}
	if w.Status == "" {
		w.Status = StatusEnabled
	}
	if err := s.store.Create(ctx, w); err != nil {
		return Webhook{}, fmt.Errorf("create webhook: %w", err)
	}
	return w, nil
}

func (s *Service) checked(ctx context.Context, spec Spec) (Spec, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return Spec{}, err
	}
	if err := s.target.CheckTarget(ctx, spec.URI); err != nil {
		return Spec{}, err
	}
	return spec, nil
}

// Get reads a webhook.
func (s *Service) Get(ctx context.Context, customerID, id string) (Webhook, error) {
	return s.store.Get(ctx, customerID, id)
}

// List lists webhooks, newest first.
func (s *Service) List(ctx context.Context, customerID string) ([]Webhook, error) {
	return s.store.List(ctx, customerID)
}

// Update replaces a webhook's name, URI, method and event types, and its status when spec has one.
func (s *Service) Update(ctx context.Context, customerID, id string, spec Spec) (Webhook, error) {
	spec, err := s.checked(ctx, spec)
	if err != nil {
		return Webhook{}, err
	}
	return s.store.Update(ctx, customerID, id, func(w *Webhook) error {
		w.Name, w.URI, w.Method, w.EventTypes = spec.Name, spec.URI, spec.Method, spec.EventTypes
		if spec.Status != "" {
			w.Status = spec.Status
		}
		w.TMUpdate = s.now()
		return nil
	})
}

// RotateSecret gives the webhook a new secret; the old one stops signing at once.
func (s *Service) RotateSecret(ctx context.Context, customerID, id string) (Webhook, error) {
	secret, err := NewSecret()
	if err != nil {
		return Webhook{}, err
	}
	return s.store.Update(ctx, customerID, id, func(w *Webhook) error {
		w.Secret = secret
		w.TMUpdate = s.now()
		return nil
	})
}

// Delete removes a webhook; its pending deliveries fail.
func (s *Service) Delete(ctx context.Context, customerID, id string) (Webhook, error) {
	return s.store.Delete(ctx, customerID, id)
}

// Deliveries is a page of the webhook's delivery log, newest first.
func (s *Service) Deliveries(ctx context.Context, customerID, id string, pageSize int, pageToken string) ([]Delivery, string, error) {
	switch {
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize < 0 || pageSize > MaxPageSize:
		return nil, "", &FieldError{"page_size", fmt.Sprintf("must be between 1 and %d", MaxPageSize)}
	}
	if _, err := s.store.Get(ctx, customerID, id); err != nil {
		return nil, "", err
	}
	return s.log.Deliveries(ctx, id, pageSize, pageToken)
}

// Retry sends a delivery again now, whatever its status, with a fresh retry window. The webhook
// must be enabled.
func (s *Service) Retry(ctx context.Context, customerID, id, deliveryID string) (Delivery, error) {
	w, err := s.store.Get(ctx, customerID, id)
	if err != nil {
		return Delivery{}, err
	}
	if w.Status != StatusEnabled {
		return Delivery{}, ErrDisabled
	}
	d, err := s.log.Retry(ctx, id, deliveryID, s.now())
	if err != nil {
		return Delivery{}, err
	}
	if s.kick != nil {
		s.kick()
	}
	return d, nil
}
