package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/identity"
)

type accessKeyService interface {
	CreateAccessKey(ctx context.Context, caller identity.Identity, name string, lifetime time.Duration) (identity.AccessKey, error)
	AccessKeys(ctx context.Context, caller identity.Identity, customerID string) ([]identity.AccessKey, error)
	AccessKey(ctx context.Context, caller identity.Identity, id string) (identity.AccessKey, error)
	DeleteAccessKey(ctx context.Context, caller identity.Identity, id string) (identity.AccessKey, error)
}

// accessKeys serves /v1.0/accesskeys.
type accessKeys struct {
	*api
	svc accessKeyService
}

func (k *accessKeys) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/", k.handle(k.create))
	r.Get("/", k.handle(k.list))
	r.Get("/{id}", k.handle(k.get))
	r.Delete("/{id}", k.handle(k.delete))
	return r
}

type accessKeyJSON struct {
	ID         string `json:"id"`
	CustomerID string `json:"customer_id"`
	UserID     string `json:"user_id"`
	// ParentKeyID is the access key that created this one ("" when a JWT did).
	ParentKeyID string    `json:"parent_key_id"`
	Name        string    `json:"name"`
	Permission  uint32    `json:"permission"`
	Token       string    `json:"token,omitempty"`
	TMExpire    time.Time `json:"tm_expire"`
	TMCreate    time.Time `json:"tm_create"`
}

func toAccessKey(k identity.AccessKey) accessKeyJSON {
	return accessKeyJSON{ID: k.ID, CustomerID: k.CustomerID, UserID: k.UserID, ParentKeyID: k.ParentKeyID, Name: k.Name,
		Permission: uint32(k.Permission), Token: k.Token, TMExpire: k.TMExpire, TMCreate: k.TMCreate}
}

type createAccessKeyBody struct {
	Name string `json:"name"`
	// Expire is the key's lifetime in seconds.
	Expire int64 `json:"expire"`
}

func (k *accessKeys) create(w http.ResponseWriter, r *http.Request) error {
	var in createAccessKeyBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	lifetime := time.Duration(min(max(in.Expire, 0), int64(identity.MaxAccessKeyLifetime/time.Second)+1)) * time.Second
	key, err := k.svc.CreateAccessKey(r.Context(), caller(r), in.Name, lifetime)
	if err != nil {
		return err
	}
	k.log.InfoContext(r.Context(), "access key created", "accesskey_id", key.ID, "parent_key_id", key.ParentKeyID, "tm_expire", key.TMExpire)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, toAccessKey(key))
	return nil
}

func (k *accessKeys) list(w http.ResponseWriter, r *http.Request) error {
	cid, err := queryUUID(r, "customer_id")
	if err != nil {
		return err
	}
	keys, err := k.svc.AccessKeys(r.Context(), caller(r), cid)
	if err != nil {
		return err
	}
	out := make([]accessKeyJSON, len(keys))
	for i, key := range keys {
		out[i] = toAccessKey(key)
	}
	writeJSON(w, http.StatusOK, map[string]any{"result": out})
	return nil
}

func (k *accessKeys) get(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	key, err := k.svc.AccessKey(r.Context(), caller(r), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAccessKey(key))
	return nil
}

func (k *accessKeys) delete(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	key, err := k.svc.DeleteAccessKey(r.Context(), caller(r), id)
	if err != nil {
		return err
	}
	k.log.InfoContext(r.Context(), "access key deleted", "accesskey_id", key.ID)
	writeJSON(w, http.StatusOK, toAccessKey(key))
	return nil
}
