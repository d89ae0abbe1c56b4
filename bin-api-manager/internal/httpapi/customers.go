package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/identity"
)

type customerService interface {
	CreateCustomer(ctx context.Context, caller identity.Identity, n identity.NewCustomer) (identity.Customer, identity.User, error)
	Customer(ctx context.Context, caller identity.Identity, id string) (identity.Customer, error)
	Customers(ctx context.Context, caller identity.Identity, pageSize int, pageToken string) ([]identity.Customer, string, error)
}

// customers serves /v1.0/customers (superadmin, except a customer's own record).
type customers struct {
	*api
	svc customerService
}

func (c *customers) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/", c.handle(c.create))
	r.Get("/", c.handle(c.list))
	r.Get("/{id}", c.handle(c.get))
	return r
}

type customerJSON struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Email    string    `json:"email"`
	TMCreate time.Time `json:"tm_create"`
	TMUpdate time.Time `json:"tm_update"`
}

func toCustomer(c identity.Customer) customerJSON {
	return customerJSON{ID: c.ID, Name: c.Name, Email: c.Email, TMCreate: c.TMCreate, TMUpdate: c.TMUpdate}
}

type userJSON struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Username   string    `json:"username"`
	Permission uint32    `json:"permission"`
	TMCreate   time.Time `json:"tm_create"`
}

type createCustomerBody struct {
	Name     string `json:"name"`
	Email    string `json:"email"`
	Username string `json:"username"`
	Password string `json:"password"`
}

func (c *customers) create(w http.ResponseWriter, r *http.Request) error {
	if !caller(r).Superadmin() {
		return identity.ErrPermissionDenied
	}
	var in createCustomerBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	cu, u, err := c.svc.CreateCustomer(r.Context(), caller(r), identity.NewCustomer(in))
	if err != nil {
		return err
	}
	c.log.InfoContext(r.Context(), "customer created", "new_customer_id", cu.ID, "username", u.Username)
	writeJSON(w, http.StatusCreated, map[string]any{"customer": toCustomer(cu),
		"user": userJSON{ID: u.ID, CustomerID: u.CustomerID, Username: u.Username, Permission: uint32(u.Permission), TMCreate: u.TMCreate}})
	return nil
}

func (c *customers) list(w http.ResponseWriter, r *http.Request) error {
	if !caller(r).Superadmin() {
		return identity.ErrPermissionDenied
	}
	size, err := queryInt(r, "page_size", 1, 100)
	if err != nil {
		return err
	}
	if size == 0 {
		size = 100
	}
	cs, next, err := c.svc.Customers(r.Context(), caller(r), size, r.URL.Query().Get("page_token"))
	if err != nil {
		return err
	}
	out := make([]customerJSON, len(cs))
	for i, cu := range cs {
		out[i] = toCustomer(cu)
	}
	writeJSON(w, http.StatusOK, map[string]any{"result": out, "next_page_token": next})
	return nil
}

func (c *customers) get(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	cu, err := c.svc.Customer(r.Context(), caller(r), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toCustomer(cu))
	return nil
}

// own serves GET /v1.0/customer, the caller's own customer.
func (c *customers) own(w http.ResponseWriter, r *http.Request) {
	c.handle(func(w http.ResponseWriter, r *http.Request) error {
		cu, err := c.svc.Customer(r.Context(), caller(r), caller(r).CustomerID)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, toCustomer(cu))
		return nil
	})(w, r)
}
