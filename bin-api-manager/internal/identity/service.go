package identity

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/apierr"
)

// UserStore keeps users.
type UserStore interface {
	// UserByUsername and UserByID return ErrUserNotFound when there is none (deleted users
	// included).
	UserByUsername(ctx context.Context, username string) (User, error)
	UserByID(ctx context.Context, id string) (User, error)
	HasSuperadmin(ctx context.Context) (bool, error)
	// CreateUser returns ErrUsernameTaken for a duplicate username.
	CreateUser(ctx context.Context, u User) error
	// Users lists a customer's live users, newest first ("" with all=false: the superadmins);
	// all=true lists every user.
	Users(ctx context.Context, customerID string, all bool) ([]User, error)
	// SetUserPermission changes a live user's permission (ErrUserNotFound when there is none).
	SetUserPermission(ctx context.Context, id string, p Permission, now time.Time) error
	// DeleteUser soft-deletes a live user and every live access key of the user in one
	// transaction, returning the keys it deleted (ErrUserNotFound when there is none).
	DeleteUser(ctx context.Context, id string, now time.Time) ([]AccessKey, error)
}

// CustomerStore keeps customers.
type CustomerStore interface {
	// CreateCustomer stores c and its first user, and records customer.created, in one
	// transaction. It returns ErrUsernameTaken for a duplicate username.
	CreateCustomer(ctx context.Context, c Customer, admin User) error
	// Customer returns ErrCustomerNotFound when there is none.
	Customer(ctx context.Context, id string) (Customer, error)
	// Customers lists up to limit customers, newest first, strictly after the cursor (zero: from
	// the newest).
	Customers(ctx context.Context, after Cursor, limit int) ([]Customer, error)
}

// AccessKeyStore keeps access keys.
type AccessKeyStore interface {
	// CreateAccessKey stores k. A key with a ParentKeyID is stored only while that parent is
	// live (ErrAccessKeyNotFound otherwise), atomically with respect to DeleteAccessKey, so no
	// key survives the deletion of its parent.
	CreateAccessKey(ctx context.Context, k AccessKey) error
	// AccessKeyByHash and AccessKey return ErrAccessKeyNotFound when there is none (deleted
	// keys included).
	AccessKeyByHash(ctx context.Context, hash [32]byte) (AccessKey, error)
	AccessKey(ctx context.Context, id string) (AccessKey, error)
	// AccessKeys lists a customer's keys, newest first; all=true lists every key.
	AccessKeys(ctx context.Context, customerID string, all bool) ([]AccessKey, error)
	// DeleteAccessKey soft-deletes a live key and, in the same transaction, every live key
	// created with it (its descendants), returning all of them (the key first).
	DeleteAccessKey(ctx context.Context, id string, now time.Time) ([]AccessKey, error)
}

// KeyCache caches access keys by hash. It is only a cache: an implementation that cannot reach
// its backend answers "not cached" and moves on. Delete is a revocation: every instance sharing
// the cache must stop using the entry within the cache's TTL, at once when it can be told.
type KeyCache interface {
	Get(ctx context.Context, hash [32]byte) (AccessKey, bool)
	Set(ctx context.Context, k AccessKey)
	Delete(ctx context.Context, hash [32]byte)
}

// UserCache caches users by id (without their password hash), under the same rules as KeyCache.
type UserCache interface {
	Get(ctx context.Context, id string) (User, bool)
	Set(ctx context.Context, u User)
	Delete(ctx context.Context, id string)
}

// Cursor is a position in a newest-first list.
type Cursor struct {
	TMCreate time.Time
	ID       string
}

// IsZero reports whether c is the start of the list.
func (c Cursor) IsZero() bool { return c.ID == "" }

// EncodeCursor makes the opaque page token of c.
func EncodeCursor(c Cursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.TMCreate.UnixMicro(), 10) + "." + c.ID))
}

// DecodeCursor parses a page token; "" is the start.
func DecodeCursor(token string) (Cursor, error) {
	if token == "" {
		return Cursor{}, nil
	}
	bad := apierr.Invalid("page_token", "is not a page token returned by this API")
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return Cursor{}, bad
	}
	ts, id, ok := strings.Cut(string(b), ".")
	us, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || uuid.Validate(id) != nil {
		return Cursor{}, bad
	}
	return Cursor{TMCreate: time.UnixMicro(us).UTC(), ID: id}, nil
}

// Deps are the collaborators of a Service.
type Deps struct {
	Users     UserStore
	Customers CustomerStore
	Keys      AccessKeyStore
	Cache     KeyCache
	// UserCache holds the users every authenticated request checks (nil: no cache, every
	// check reads the UserStore).
	UserCache UserCache
	Tokens    *Tokens
	Passwords *Passwords
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Service is the identity use cases.
type Service struct {
	d Deps
}

// NewService makes the service.
func NewService(d Deps) *Service {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.UserCache == nil {
		d.UserCache = noUserCache{}
	}
	return &Service{d: d}
}

func (s *Service) now() time.Time { return s.d.Now().UTC().Truncate(time.Microsecond) }

// ErrNoSuperadmin is returned by Bootstrap when there is no superadmin and none was configured.
var ErrNoSuperadmin = errors.New("no superadmin exists: set ADMIN_USERNAME and ADMIN_PASSWORD to create one")

// Bootstrap makes sure a superadmin exists, creating username/password if none does. It reports
// whether it created one. Several instances may run it at once: only one user is created.
func (s *Service) Bootstrap(ctx context.Context, username, password string) (bool, error) {
	has, err := s.d.Users.HasSuperadmin(ctx)
	if err != nil || has {
		return false, err
	}
	if username == "" || password == "" {
		return false, ErrNoSuperadmin
	}
	if !usernamePattern.MatchString(username) {
		return false, errors.New("ADMIN_USERNAME must be 3-64 characters of letters, digits and . _ @ -")
	}
	if len(password) > MaxPasswordLen {
		return false, errors.New("ADMIN_PASSWORD must be at most 72 bytes")
	}
	hash, err := s.d.Passwords.Hash(ctx, password)
	if err != nil {
		return false, err
	}
	now := s.now()
	err = s.d.Users.CreateUser(ctx, User{ID: uuid.NewString(), Username: username, PasswordHash: hash,
		Permission: PermSuperadmin, TMCreate: now, TMUpdate: now})
	if errors.Is(err, ErrUsernameTaken) {
		// Another instance won the race, or the name belongs to a customer's user.
		if has, herr := s.d.Users.HasSuperadmin(ctx); herr == nil && has {
			return false, nil
		}
		return false, errors.New("ADMIN_USERNAME " + strconv.Quote(username) + " belongs to a user who is not a superadmin")
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// Session is a login's result.
type Session struct {
	Username string
	Token    string
	Expires  time.Time
}

// Login checks a username and password and issues a token. Any failure to match is
// ErrInvalidCredentials, costing one bcrypt comparison whether or not the user exists;
// ErrPasswordChecksBusy means the comparison could not be made in time (nothing was checked).
func (s *Service) Login(ctx context.Context, username, password string) (Session, error) {
	u, err := s.d.Users.UserByUsername(ctx, username)
	switch {
	case errors.Is(err, ErrUserNotFound):
		u = User{} // the dummy hash: the same cost as a known user
	case err != nil:
		return Session{}, err
	}
	ok, err := s.d.Passwords.Verify(ctx, u.PasswordHash, password)
	if err != nil {
		return Session{}, err
	}
	if !ok {
		return Session{}, ErrInvalidCredentials
	}
	return s.issue(u)
}

func (s *Service) issue(u User) (Session, error) {
	tok, exp, err := s.d.Tokens.Issue(u)
	if err != nil {
		return Session{}, err
	}
	return Session{Username: u.Username, Token: tok, Expires: exp}, nil
}

// Refresh trades a valid JWT for a fresh one, with the user's current permission.
func (s *Service) Refresh(ctx context.Context, token string) (Session, error) {
	if token == "" {
		return Session{}, ErrAuthenticationRequired
	}
	if strings.HasPrefix(token, AccessKeyPrefix) {
		return Session{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "only a token can be refreshed, not an access key")
	}
	c, err := s.d.Tokens.Parse(token)
	if err != nil {
		return Session{}, err
	}
	u, err := s.d.Users.UserByID(ctx, c.Subject)
	if errors.Is(err, ErrUserNotFound) {
		return Session{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "the token's user no longer exists")
	}
	if err != nil {
		return Session{}, err
	}
	return s.issue(u)
}

// Authenticate turns a credential (a JWT or an access key) into the caller's Identity. Beyond the
// credential itself it checks its principal's current state (Check), so a deleted or downgraded
// user's token and a deleted key stop working at once.
func (s *Service) Authenticate(ctx context.Context, credential string) (Identity, error) {
	if credential == "" {
		return Identity{}, ErrAuthenticationRequired
	}
	if strings.HasPrefix(credential, AccessKeyPrefix) {
		return s.authenticateKey(ctx, credential)
	}
	c, err := s.d.Tokens.Parse(credential)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{UserID: c.Subject, CustomerID: c.CustomerID, Permission: c.Permission, Method: MethodJWT}
	if c.ExpiresAt != nil {
		id.Expires = c.ExpiresAt.UTC()
	}
	if err := s.checkUser(ctx, id); err != nil {
		return Identity{}, err
	}
	return id, nil
}

func (s *Service) authenticateKey(ctx context.Context, token string) (Identity, error) {
	hash := HashAccessKey(token)
	k, err := s.keyByHash(ctx, hash)
	if errors.Is(err, ErrAccessKeyNotFound) {
		return Identity{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "invalid access key")
	}
	if err != nil {
		return Identity{}, err
	}
	if !s.now().Before(k.TMExpire) {
		return Identity{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "access key expired")
	}
	id := Identity{UserID: k.UserID, CustomerID: k.CustomerID, Permission: k.Permission,
		Method: MethodAccessKey, AccessKeyID: k.ID, Expires: k.TMExpire, keyHash: hash}
	if err := s.checkUser(ctx, id); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Check reports whether an identity Authenticate returned earlier still stands: its access key
// (if any) is not deleted, its user exists and still holds every permission bit the identity
// carries. A failure is UNAUTHENTICATED/CREDENTIALS_REVOKED, or the error of a store that could
// not answer (the caller then cannot know, and must not take it as valid). Expiry is not checked
// here: Identity.Expires says when. It reads through the caches, so it costs no database round
// trip while they hold the principal.
func (s *Service) Check(ctx context.Context, id Identity) error {
	if id.Method == MethodAccessKey {
		k, err := s.keyByHash(ctx, id.keyHash)
		if errors.Is(err, ErrAccessKeyNotFound) || (err == nil && k.ID != id.AccessKeyID) {
			return revoked("the access key was deleted")
		}
		if err != nil {
			return err
		}
	}
	return s.checkUser(ctx, id)
}

func revoked(why string) error {
	return apierr.New(apierr.Unauthenticated, ReasonCredentialsRevoked, why)
}

// checkUser checks that the identity's user exists and holds every permission bit it carries.
func (s *Service) checkUser(ctx context.Context, id Identity) error {
	u, err := s.user(ctx, id.UserID)
	if errors.Is(err, ErrUserNotFound) {
		return revoked("the user was deleted")
	}
	if err != nil {
		return err
	}
	if id.Permission&^u.Permission != 0 {
		if id.Method == MethodAccessKey {
			return revoked("the key's user no longer holds the key's permission")
		}
		return revoked("the user's permission was lowered; log in again")
	}
	return nil
}

// user reads a user through the cache.
func (s *Service) user(ctx context.Context, id string) (User, error) {
	if u, ok := s.d.UserCache.Get(ctx, id); ok {
		return u, nil
	}
	u, err := s.d.Users.UserByID(ctx, id)
	if err != nil {
		return User{}, err
	}
	u.PasswordHash = "" // the cache never holds it
	s.d.UserCache.Set(ctx, u)
	return u, nil
}

// keyByHash reads a live access key through the cache.
func (s *Service) keyByHash(ctx context.Context, hash [32]byte) (AccessKey, error) {
	if k, ok := s.d.Cache.Get(ctx, hash); ok {
		return k, nil
	}
	k, err := s.d.Keys.AccessKeyByHash(ctx, hash)
	if err != nil {
		return AccessKey{}, err
	}
	s.d.Cache.Set(ctx, k)
	return k, nil
}

type noUserCache struct{}

func (noUserCache) Get(context.Context, string) (User, bool) { return User{}, false }
func (noUserCache) Set(context.Context, User)                {}
func (noUserCache) Delete(context.Context, string)           {}

// CreateCustomer makes a customer with its customer-admin user (superadmin only).
func (s *Service) CreateCustomer(ctx context.Context, caller Identity, n NewCustomer) (Customer, User, error) {
	if !caller.Superadmin() {
		return Customer{}, User{}, ErrPermissionDenied
	}
	n.Name = strings.TrimSpace(n.Name)
	if err := n.Validate(); err != nil {
		return Customer{}, User{}, err
	}
	hash, err := s.d.Passwords.Hash(ctx, n.Password)
	if err != nil {
		return Customer{}, User{}, err
	}
	now := s.now()
	c := Customer{ID: uuid.NewString(), Name: n.Name, Email: n.Email, TMCreate: now, TMUpdate: now}
	u := User{ID: uuid.NewString(), CustomerID: c.ID, Username: n.Username, PasswordHash: hash,
		Permission: PermCustomerAdmin, TMCreate: now, TMUpdate: now}
	if err := s.d.Customers.CreateCustomer(ctx, c, u); err != nil {
		return Customer{}, User{}, err
	}
	return c, u, nil
}

// Customer reads a customer: a superadmin any, anyone else only its own.
func (s *Service) Customer(ctx context.Context, caller Identity, id string) (Customer, error) {
	if !caller.Superadmin() && (caller.CustomerID == "" || id != caller.CustomerID) {
		return Customer{}, ErrCustomerNotFound
	}
	return s.d.Customers.Customer(ctx, id)
}

// Customers lists customers newest first (superadmin only), returning the next page token ("" at
// the end).
func (s *Service) Customers(ctx context.Context, caller Identity, pageSize int, pageToken string) ([]Customer, string, error) {
	if !caller.Superadmin() {
		return nil, "", ErrPermissionDenied
	}
	after, err := DecodeCursor(pageToken)
	if err != nil {
		return nil, "", err
	}
	cs, err := s.d.Customers.Customers(ctx, after, pageSize+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(cs) > pageSize {
		cs = cs[:pageSize]
		last := cs[len(cs)-1]
		next = EncodeCursor(Cursor{TMCreate: last.TMCreate, ID: last.ID})
	}
	return cs, next, nil
}

// CreateAccessKey makes a key for the caller's customer with the caller's permission, living for
// lifetime. Only customer admins and superadmins may. A key created with an access key is bound
// to it: it records the parent (ParentKeyID), may not outlive it (a later expiry is refused), has
// its permission (never more), and is deleted with it. The returned key carries its Token, which
// is never available again.
func (s *Service) CreateAccessKey(ctx context.Context, caller Identity, name string, lifetime time.Duration) (AccessKey, error) {
	if !caller.CanAdmin() {
		return AccessKey{}, ErrPermissionDenied
	}
	name = strings.TrimSpace(name)
	if err := validName("name", name); err != nil {
		return AccessKey{}, err
	}
	if lifetime < MinAccessKeyLifetime || lifetime > MaxAccessKeyLifetime {
		return AccessKey{}, apierr.Invalid("expire", "must be a lifetime in seconds from 60 to 315360000 (10 years)")
	}
	now := s.now()
	token := NewAccessKeyToken()
	k := AccessKey{ID: uuid.NewString(), CustomerID: caller.CustomerID, UserID: caller.UserID, Name: name,
		TokenHash: HashAccessKey(token), Permission: caller.Permission, TMExpire: now.Add(lifetime), TMCreate: now}
	if caller.Method == MethodAccessKey {
		k.ParentKeyID = caller.AccessKeyID
		if k.TMExpire.After(caller.Expires) {
			return AccessKey{}, apierr.Invalid("expire", fmt.Sprintf("a key created with an access key may not outlive it: at most %d seconds from now",
				int64(caller.Expires.Sub(now)/time.Second)))
		}
	}
	err := s.d.Keys.CreateAccessKey(ctx, k)
	if errors.Is(err, ErrAccessKeyNotFound) { // the parent was deleted meanwhile
		return AccessKey{}, revoked("the access key was deleted")
	}
	if err != nil {
		return AccessKey{}, err
	}
	k.Token = token
	return k, nil
}

// AccessKeys lists the keys the caller may see: its customer's, or for a superadmin every key
// (or one customer's when customerID is given).
func (s *Service) AccessKeys(ctx context.Context, caller Identity, customerID string) ([]AccessKey, error) {
	if !caller.CanRead() {
		return nil, ErrPermissionDenied
	}
	scope, ok := caller.Scope(customerID)
	if !ok {
		return []AccessKey{}, nil
	}
	return s.d.Keys.AccessKeys(ctx, scope, caller.Superadmin() && scope == "")
}

// AccessKey reads one key; another customer's is ErrAccessKeyNotFound.
func (s *Service) AccessKey(ctx context.Context, caller Identity, id string) (AccessKey, error) {
	if !caller.CanRead() {
		return AccessKey{}, ErrPermissionDenied
	}
	k, err := s.d.Keys.AccessKey(ctx, id)
	if err != nil {
		return AccessKey{}, err
	}
	if !caller.Superadmin() && k.CustomerID != caller.CustomerID {
		return AccessKey{}, ErrAccessKeyNotFound
	}
	return k, nil
}

// DeleteAccessKey deletes a key (customer admins and superadmins) with every key created with it.
// They stop working at once on every instance sharing the cache, and within the cache's TTL if
// the cache is unreachable.
func (s *Service) DeleteAccessKey(ctx context.Context, caller Identity, id string) (AccessKey, error) {
	k, err := s.AccessKey(ctx, caller, id)
	if err != nil {
		return AccessKey{}, err
	}
	if !caller.CanAdmin() {
		return AccessKey{}, ErrPermissionDenied
	}
	gone, err := s.d.Keys.DeleteAccessKey(ctx, id, s.now())
	if err != nil {
		return AccessKey{}, err
	}
	for _, g := range gone {
		s.d.Cache.Delete(ctx, g.TokenHash)
	}
	return k, nil
}

// ReasonCannotModifySelf refuses a user's change of its own permission or its own deletion.
const ReasonCannotModifySelf = "CANNOT_MODIFY_SELF"

// CreateUser adds a user to a customer (customer admins to their own, superadmins to any named
// one) with customer permissions only: superadmins are made by Bootstrap.
func (s *Service) CreateUser(ctx context.Context, caller Identity, n NewUser) (User, error) {
	if !caller.CanAdmin() {
		return User{}, ErrPermissionDenied
	}
	cid, ok := caller.Scope(n.CustomerID)
	if !ok {
		return User{}, ErrCustomerNotFound
	}
	if cid == "" {
		return User{}, apierr.Invalid("customer_id", "a superadmin must name the customer of the new user")
	}
	n.CustomerID = cid
	if err := n.Validate(); err != nil {
		return User{}, err
	}
	if caller.Superadmin() {
		if _, err := s.d.Customers.Customer(ctx, cid); err != nil {
			return User{}, err
		}
	}
	hash, err := s.d.Passwords.Hash(ctx, n.Password)
	if err != nil {
		return User{}, err
	}
	now := s.now()
	u := User{ID: uuid.NewString(), CustomerID: cid, Username: n.Username, PasswordHash: hash,
		Permission: n.Permission, TMCreate: now, TMUpdate: now}
	if err := s.d.Users.CreateUser(ctx, u); err != nil {
		return User{}, err
	}
	return u, nil
}

// Users lists the users a customer admin manages (its customer's), or for a superadmin every
// user (or one customer's when customerID is given).
func (s *Service) Users(ctx context.Context, caller Identity, customerID string) ([]User, error) {
	if !caller.CanAdmin() {
		return nil, ErrPermissionDenied
	}
	scope, ok := caller.Scope(customerID)
	if !ok {
		return []User{}, nil
	}
	return s.d.Users.Users(ctx, scope, caller.Superadmin() && scope == "")
}

// User reads one user; one the caller may not manage is ErrUserNotFound.
func (s *Service) User(ctx context.Context, caller Identity, id string) (User, error) {
	if !caller.CanAdmin() {
		return User{}, ErrPermissionDenied
	}
	u, err := s.d.Users.UserByID(ctx, id)
	if err != nil {
		return User{}, err
	}
	if !caller.Superadmin() && (u.CustomerID == "" || u.CustomerID != caller.CustomerID) {
		return User{}, ErrUserNotFound
	}
	return u, nil
}

// SetUserPermission changes a customer user's permission. A lowered permission revokes at once
// every token and access key of the user that carries a bit the user no longer holds.
func (s *Service) SetUserPermission(ctx context.Context, caller Identity, id string, p Permission) (User, error) {
	u, err := s.manageable(ctx, caller, id)
	if err != nil {
		return User{}, err
	}
	if u.CustomerID == "" {
		return User{}, apierr.Invalid("permission", "a superadmin's permission cannot be changed; delete the user instead")
	}
	if err := validCustomerPermission(p); err != nil {
		return User{}, err
	}
	now := s.now()
	if err := s.d.Users.SetUserPermission(ctx, id, p, now); err != nil {
		return User{}, err
	}
	s.d.UserCache.Delete(ctx, id)
	u.Permission, u.TMUpdate = p, now
	return u, nil
}

// DeleteUser deletes a user with its access keys; its tokens and keys stop working at once.
func (s *Service) DeleteUser(ctx context.Context, caller Identity, id string) (User, error) {
	u, err := s.manageable(ctx, caller, id)
	if err != nil {
		return User{}, err
	}
	keys, err := s.d.Users.DeleteUser(ctx, id, s.now())
	if err != nil {
		return User{}, err
	}
	s.d.UserCache.Delete(ctx, id)
	for _, k := range keys {
		s.d.Cache.Delete(ctx, k.TokenHash)
	}
	return u, nil
}

// manageable reads a user the caller may change: not the caller itself (so nobody locks
// themselves out, and the last superadmin stays).
func (s *Service) manageable(ctx context.Context, caller Identity, id string) (User, error) {
	u, err := s.User(ctx, caller, id)
	if err != nil {
		return User{}, err
	}
	if u.ID == caller.UserID {
		return User{}, apierr.New(apierr.FailedPrecondition, ReasonCannotModifySelf, "a user cannot change its own permission or delete itself")
	}
	return u, nil
}
