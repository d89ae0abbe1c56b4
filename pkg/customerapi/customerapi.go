// Package customerapi is the contract of the customer events api-manager publishes on
// customer.events; the billing manager opens an account from customer.created.
package customerapi

import "time"

// Customer is a tenant of the platform.
type Customer struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Email    string    `json:"email,omitempty"`
	TMCreate time.Time `json:"tm_create"`
}

// Event types on customer.events.
const (
	EventCreated = "customer.created"
)
