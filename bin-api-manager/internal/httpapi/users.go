package httpapi

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/identity"
)

type userService interface {
	CreateUser(ctx context.Context, caller identity.Identity, n identity.NewUser) (identity.User, error)
	Users(ctx context.Context, caller identity.Identity, customerID string) ([]identity.User, error)
	User(ctx context.Context, caller identity.Identity, id string) (identity.User, error)
	SetUserPermission(ctx context.Context, caller identity.Identity, id string, p identity.Permission) (identity.User, error)
	DeleteUser(ctx context.Context, caller identity.Identity, id string) (identity.User, error)
}

// users serves /v1.0/users: a customer admin manages its customer's users, a superadmin anyone's.
// Lowering a user's permission or deleting it revokes its tokens and access keys at once.
type users struct {
	*api
	svc userService
}

func (u *users) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/", u.handle(u.create))
	r.Get("/", u.handle(u.list))
	r.Get("/{id}", u.handle(u.get))
	r.Put("/{id}/permission", u.handle(u.setPermission))
	r.Delete("/{id}", u.handle(u.delete))
	return r
}

func toUser(x identity.User) userJSON {
	return userJSON{ID: x.ID, CustomerID: x.CustomerID, Username: x.Username, Permission: uint32(x.Permission), TMCreate: x.TMCreate}
}

type createUserBody struct {
	CustomerID string `json:"customer_id"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	Permission uint32 `json:"permission"`
}

func (u *users) create(w http.ResponseWriter, r *http.Request) error {
	var in createUserBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	x, err := u.svc.CreateUser(r.Context(), caller(r), identity.NewUser{CustomerID: in.CustomerID, Username: in.Username,
		Password: in.Password, Permission: identity.Permission(in.Permission)})
	if err != nil {
		return err
	}
	u.log.InfoContext(r.Context(), "user created", "new_user_id", x.ID, "permission", uint32(x.Permission))
	writeJSON(w, http.StatusCreated, toUser(x))
	return nil
}

func (u *users) list(w http.ResponseWriter, r *http.Request) error {
	cid, err := queryUUID(r, "customer_id")
	if err != nil {
		return err
	}
	xs, err := u.svc.Users(r.Context(), caller(r), cid)
	if err != nil {
		return err
	}
	out := make([]userJSON, len(xs))
	for i, x := range xs {
		out[i] = toUser(x)
	}
	writeJSON(w, http.StatusOK, map[string]any{"result": out})
	return nil
}

func (u *users) get(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	x, err := u.svc.User(r.Context(), caller(r), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toUser(x))
	return nil
}

type permissionBody struct {
	Permission uint32 `json:"permission"`
}

func (u *users) setPermission(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	var in permissionBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	x, err := u.svc.SetUserPermission(r.Context(), caller(r), id, identity.Permission(in.Permission))
	if err != nil {
		return err
	}
	u.log.InfoContext(r.Context(), "user permission changed", "target_user_id", x.ID, "permission", uint32(x.Permission))
	writeJSON(w, http.StatusOK, toUser(x))
	return nil
}

func (u *users) delete(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	x, err := u.svc.DeleteUser(r.Context(), caller(r), id)
	if err != nil {
		return err
	}
	u.log.InfoContext(r.Context(), "user deleted", "target_user_id", x.ID)
	writeJSON(w, http.StatusOK, toUser(x))
	return nil
}
