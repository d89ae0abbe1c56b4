package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/bin-api-manager/internal/identity"
)

type sessionService interface {
	Login(ctx context.Context, username, password string) (identity.Session, error)
	Refresh(ctx context.Context, token string) (identity.Session, error)
}

// sessions serves /auth: login and refresh.
type sessions struct {
	*api
	svc      sessionService
	throttle *loginThrottle
	secure   bool
	lifetime time.Duration
}

func (s *sessions) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/login", s.handle(s.login))
	r.Post("/refresh", s.handle(s.refresh))
	return r
}

type loginBody struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type sessionJSON struct {
	Username string    `json:"username"`
	Token    string    `json:"token"`
	Expire   time.Time `json:"expire"`
}

func (s *sessions) login(w http.ResponseWriter, r *http.Request) error {
	var in loginBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	undo, retryAfter, err := s.throttle.begin(r.Context(), clientIP(r), in.Username)
	if err != nil {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		return err
	}
	sess, err := s.svc.Login(r.Context(), in.Username, in.Password)
	if err != nil {
		if errors.Is(err, identity.ErrInvalidCredentials) {
			s.m.authFailures.WithLabelValues("login").Inc()
			return err // stays counted
		}
		undo() // not a failed guess: the password was not checked
		return err
	}
	undo()
	s.respond(w, sess)
	return nil
}

func (s *sessions) refresh(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.svc.Refresh(r.Context(), httpauth.Credential(r))
	if err != nil {
		return err
	}
	s.respond(w, sess)
	return nil
}

// respond answers a session and sets the token cookie for browsers.
func (s *sessions) respond(w http.ResponseWriter, sess identity.Session) {
	http.SetCookie(w, &http.Cookie{Name: httpauth.CookieName, Value: sess.Token, Path: "/",
		MaxAge: int(time.Until(sess.Expires).Seconds()), HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteStrictMode})
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, sessionJSON{Username: sess.Username, Token: sess.Token, Expire: sess.Expires})
}
