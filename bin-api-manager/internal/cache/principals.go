package cache

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/identity"
)

// MaxPrincipalTTL bounds PrincipalOptions.TTL: a revocation that could not be announced (Redis
// unreachable at that moment) still takes effect within it.
const MaxPrincipalTTL = 5 * time.Second

// PrincipalOptions configure Principals.
type PrincipalOptions struct {
	// Prefix starts every Redis key ("<prefix>key:<hex sha-256>", "<prefix>user:<id>").
	Prefix string
	// Channel is the Redis pub/sub channel revocations are announced on; every instance sharing
	// the Redis must use the same.
	Channel string
	// TTL is how long an entry is trusted, from the moment it was read from the store, in Redis
	// and in each instance's memory alike (at most MaxPrincipalTTL).
	TTL time.Duration
	// PingInterval is how often the subscription is pinged; a subscription silent for three
	// intervals is rebuilt. Default 2 s.
	PingInterval time.Duration
	Log          *slog.Logger
	Registerer   prometheus.Registerer
}

// Principals caches what every authenticated request checks — access keys by the hash of their
// token, users by id — in two layers: this instance's memory, then Redis, then (a miss) the store.
// It implements identity.KeyCache (Keys) and identity.UserCache (Users).
//
// A revocation (Delete) deletes the Redis entry and publishes the principal on Channel; every
// instance's Run receives it, forgets its in-memory copy at once and tells its OnRevoke
// listeners (the WebSocket endpoint re-checks its sockets). An entry is trusted for TTL from the
// moment it was read from the store, in memory as in Redis, so a revocation nobody could be told
// of still takes effect within TTL. Losing Redis data only costs look-ups: nothing but the store's
// answer is ever cached, so it fails safe. While a subscription is being rebuilt announcements can
// be missed: each (re)subscription therefore empties the memory layer.
type Principals struct {
	rdb  *redis.Client
	o    PrincipalOptions
	log  *slog.Logger
	now  func() time.Time
	live atomic.Bool

	mu       sync.RWMutex
	mem      map[string]entry     // principal name ("k:<hex>", "u:<id>") → value
	revoked  map[string]time.Time // principal name → when its revocation was seen
	onRevoke []func()

	errors      *prometheus.CounterVec
	lookups     *prometheus.CounterVec
	keyLookups  lookupCounters
	userLookups lookupCounters
	received    prometheus.Counter
	lastWarn    atomic.Int64
}

// lookupCounters are the api_auth_cache_lookups_total series of one kind, resolved once.
type lookupCounters struct{ memory, redis, miss prometheus.Counter }

type entry struct {
	v     any // identity.AccessKey or identity.User
	until time.Time
}

// NewPrincipals makes the cache. Nothing is announced to this instance until Run.
func NewPrincipals(rdb *redis.Client, o PrincipalOptions) *Principals {
	if o.TTL <= 0 || o.TTL > MaxPrincipalTTL {
		o.TTL = MaxPrincipalTTL
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	p := &Principals{rdb: rdb, o: o, log: o.Log, now: time.Now,
		mem: map[string]entry{}, revoked: map[string]time.Time{},
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_auth_cache_errors_total",
			Help: "Authentication cache operations on Redis that failed, by op; look-ups then go to MySQL."}, []string{"op"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_auth_cache_lookups_total",
			Help: "Principal look-ups by the layer that answered: memory, redis, or miss (read from MySQL)."}, []string{"kind", "layer"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "api_auth_revocations_received_total",
			Help: "Revocations announced on the Redis channel and applied by this instance."}),
	}
	resolve := func(kind string) lookupCounters {
		return lookupCounters{memory: p.lookups.WithLabelValues(kind, "memory"), redis: p.lookups.WithLabelValues(kind, "redis"),
			miss: p.lookups.WithLabelValues(kind, "miss")}
	}
	p.keyLookups, p.userLookups = resolve("key"), resolve("user")
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "api_auth_revocation_channel_up",
		Help: "1 while the Redis revocation channel is subscribed; 0 while revocations of other instances may be missed (entries then live out their TTL)."},
		func() float64 {
			if p.live.Load() {
				return 1
			}
			return 0
		})
	if o.Registerer != nil {
		o.Registerer.MustRegister(p.errors, p.lookups, p.received, live)
	}
	return p
}

// OnRevoke adds f to the functions called after every revocation this instance applies and
// after every (re)subscription. f must not block. Call before Run.
func (p *Principals) OnRevoke(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onRevoke = append(p.onRevoke, f)
}

// Keys is the access-key view (identity.KeyCache).
func (p *Principals) Keys() KeyView { return KeyView{p} }

// Users is the user view (identity.UserCache).
func (p *Principals) Users() UserView { return UserView{p} }

// Live reports whether the revocation channel is subscribed now.
func (p *Principals) Live() bool { return p.live.Load() }

func (p *Principals) fail(ctx context.Context, op string, err error) {
	p.errors.WithLabelValues(op).Inc()
	// At most one warning a second: a dead Redis must not flood the log.
	if now := time.Now().UnixNano(); now-p.lastWarn.Load() > int64(time.Second) {
		p.lastWarn.Store(now)
		p.log.WarnContext(ctx, "authentication cache unavailable", "op", op, "error", err)
	}
}

func keyName(hash [32]byte) string { return "k:" + hex.EncodeToString(hash[:]) }
func userName(id string) string    { return "u:" + id }

// recentlyRevokedLocked reports whether name was revoked less than TTL ago: a value read from the
// store before the revocation may be on its way into the cache, and must not be.
func (p *Principals) recentlyRevokedLocked(name string, now time.Time) bool {
	t, ok := p.revoked[name]
	return ok && now.Sub(t) < p.o.TTL
}

// forget applies a revocation to the memory layer and remembers it for TTL.
func (p *Principals) forget(name string) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revoked[name] = now
	delete(p.mem, name)
}

func (p *Principals) notify() {
	p.mu.RLock()
	fs := p.onRevoke
	p.mu.RUnlock()
	for _, f := range fs {
		f()
	}
}

// revoke is Delete of both views: forget here, delete in Redis, announce, tell the listeners.
func (p *Principals) revoke(ctx context.Context, name, redisKey string) {
	p.forget(name)
	if err := p.rdb.Del(ctx, redisKey).Err(); err != nil {
		p.fail(ctx, "delete", err)
	}
	if err := p.rdb.Publish(ctx, p.o.Channel, name).Err(); err != nil {
		p.fail(ctx, "publish", err)
	}
	p.notify()
}

// get reads the principal name through memory then Redis; decode turns the Redis value into the
// value and the time it is trusted until.
func (p *Principals) get(ctx context.Context, count lookupCounters, name, redisKey string, decode func([]byte) (any, time.Time, bool)) (any, bool) {
	now := p.now()
	p.mu.RLock()
	e, ok := p.mem[name]
	p.mu.RUnlock()
	if ok && now.Before(e.until) {
		count.memory.Inc()
		return e.v, true
	}
	b, err := p.rdb.Get(ctx, redisKey).Bytes()
	if err != nil {
		if !errors.Is(err, redis.Nil) {
			p.fail(ctx, "get", err)
		}
		count.miss.Inc()
		return nil, false
	}
	v, until, good := decode(b)
	if !good || !now.Before(until) {
		count.miss.Inc()
		return nil, false
	}
	count.redis.Inc()
	p.mu.Lock()
	if !p.recentlyRevokedLocked(name, now) {
		p.mem[name] = entry{v: v, until: until}
	}
	p.mu.Unlock()
	return v, true
}

// set caches v (just read from the store) for the TTL, in memory and in Redis, unless it was
// revoked within the TTL; encode gives the Redis value for the time it is trusted until.
func (p *Principals) set(ctx context.Context, name, redisKey string, v any, encode func(until time.Time) []byte) {
	now := p.now()
	until := now.Add(p.o.TTL)
	p.mu.Lock()
	if p.recentlyRevokedLocked(name, now) {
		p.mu.Unlock()
		return
	}
	p.mem[name] = entry{v: v, until: until}
	p.mu.Unlock()
	if err := p.rdb.Set(ctx, redisKey, encode(until), p.o.TTL).Err(); err != nil {
		p.fail(ctx, "set", err)
	}
}

// KeyView is Principals as an identity.KeyCache.
type KeyView struct{ p *Principals }

type cachedKey struct {
	ID          string    `json:"id"`
	CustomerID  string    `json:"customer_id"`
	UserID      string    `json:"user_id"`
	ParentKeyID string    `json:"parent_key_id,omitempty"`
	Name        string    `json:"name"`
	Permission  uint32    `json:"permission"`
	TMExpire    time.Time `json:"tm_expire"`
	TMCreate    time.Time `json:"tm_create"`
	Until       time.Time `json:"until"`
}

func (v KeyView) redisKey(hash [32]byte) string {
	return v.p.o.Prefix + "key:" + hex.EncodeToString(hash[:])
}

// Get returns the cached key, or false when it is not cached or Redis cannot answer.
func (v KeyView) Get(ctx context.Context, hash [32]byte) (identity.AccessKey, bool) {
	x, ok := v.p.get(ctx, v.p.keyLookups, keyName(hash), v.redisKey(hash), func(b []byte) (any, time.Time, bool) {
		var k cachedKey
		if err := json.Unmarshal(b, &k); err != nil {
			return nil, time.Time{}, false
		}
		return identity.AccessKey{ID: k.ID, CustomerID: k.CustomerID, UserID: k.UserID, ParentKeyID: k.ParentKeyID, Name: k.Name,
			TokenHash: hash, Permission: identity.Permission(k.Permission), TMExpire: k.TMExpire, TMCreate: k.TMCreate}, k.Until, true
	})
	if !ok {
		return identity.AccessKey{}, false
	}
	return x.(identity.AccessKey), true
}

// Set caches k (just read from the store) for the TTL, unless it was revoked within the TTL.
func (v KeyView) Set(ctx context.Context, k identity.AccessKey) {
	v.p.set(ctx, keyName(k.TokenHash), v.redisKey(k.TokenHash), k, func(until time.Time) []byte {
		b, _ := json.Marshal(cachedKey{ID: k.ID, CustomerID: k.CustomerID, UserID: k.UserID, ParentKeyID: k.ParentKeyID, Name: k.Name,
			Permission: uint32(k.Permission), TMExpire: k.TMExpire, TMCreate: k.TMCreate, Until: until})
		return b
	})
}

// Delete revokes a key on every instance.
func (v KeyView) Delete(ctx context.Context, hash [32]byte) {
	v.p.revoke(ctx, keyName(hash), v.redisKey(hash))
}

// UserView is Principals as an identity.UserCache.
type UserView struct{ p *Principals }

type cachedUser struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Username   string    `json:"username"`
	Permission uint32    `json:"permission"`
	TMCreate   time.Time `json:"tm_create"`
	TMUpdate   time.Time `json:"tm_update"`
	Until      time.Time `json:"until"`
}

func (v UserView) redisKey(id string) string { return v.p.o.Prefix + "user:" + id }

// Get returns the cached user, or false when it is not cached or Redis cannot answer.
func (v UserView) Get(ctx context.Context, id string) (identity.User, bool) {
	x, ok := v.p.get(ctx, v.p.userLookups, userName(id), v.redisKey(id), func(b []byte) (any, time.Time, bool) {
		var u cachedUser
		if err := json.Unmarshal(b, &u); err != nil || u.ID != id {
			return nil, time.Time{}, false
		}
		return identity.User{ID: u.ID, CustomerID: u.CustomerID, Username: u.Username, Permission: identity.Permission(u.Permission),
			TMCreate: u.TMCreate, TMUpdate: u.TMUpdate}, u.Until, true
	})
	if !ok {
		return identity.User{}, false
	}
	return x.(identity.User), true
}

// Set caches u (just read from the store) for the TTL, without its password hash, unless it was
// revoked within the TTL.
func (v UserView) Set(ctx context.Context, u identity.User) {
	u.PasswordHash = ""
	v.p.set(ctx, userName(u.ID), v.redisKey(u.ID), u, func(until time.Time) []byte {
		b, _ := json.Marshal(cachedUser{ID: u.ID, CustomerID: u.CustomerID, Username: u.Username, Permission: uint32(u.Permission),
			TMCreate: u.TMCreate, TMUpdate: u.TMUpdate, Until: until})
		return b
	})
}

// Delete revokes a user (deleted, or its permission changed) on every instance.
func (v UserView) Delete(ctx context.Context, id string) {
	v.p.revoke(ctx, userName(id), v.redisKey(id))
}

// Run receives the revocations other instances announce until ctx ends, rebuilding the
// subscription whenever it fails or falls silent. It also drops expired entries.
func (p *Principals) Run(ctx context.Context) error {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if err := p.subscribe(ctx); err != nil && ctx.Err() == nil {
			p.fail(ctx, "subscribe", err)
		}
		p.live.Store(false)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
	return nil
}

// subscribe serves one subscription until it fails or ctx ends.
func (p *Principals) subscribe(ctx context.Context) error {
	ps := p.rdb.Subscribe(ctx, p.o.Channel)
	defer ps.Close()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { // keep-alive: a silent connection is noticed by the receive timeout below
		t := time.NewTicker(p.o.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				_ = ps.Ping(sctx)
				p.dropExpired()
			}
		}
	}()
	for {
		msg, err := ps.ReceiveTimeout(ctx, 3*p.o.PingInterval)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				// Announcements may have been missed before this (re)subscription.
				p.flush()
				p.live.Store(true)
				p.log.InfoContext(ctx, "revocation channel subscribed", "channel", p.o.Channel)
				p.notify()
			}
		case *redis.Message:
			p.apply(ctx, m.Payload)
		}
	}
}

// apply applies one announced revocation: forget it here, delete the Redis entry again (a
// look-up racing the revocation may have put it back), and tell the listeners.
func (p *Principals) apply(ctx context.Context, name string) {
	var redisKey string
	switch {
	case strings.HasPrefix(name, "k:") && len(name) == 2+64:
		redisKey = p.o.Prefix + "key:" + name[2:]
	case strings.HasPrefix(name, "u:") && len(name) > 2:
		redisKey = p.o.Prefix + "user:" + name[2:]
	default:
		return
	}
	p.received.Inc()
	p.forget(name)
	if err := p.rdb.Del(ctx, redisKey).Err(); err != nil {
		p.fail(ctx, "delete", err)
	}
	p.notify()
}

func (p *Principals) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.mem)
}

func (p *Principals) dropExpired() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for n, e := range p.mem {
		if !now.Before(e.until) {
			delete(p.mem, n)
		}
	}
	for n, t := range p.revoked {
		if now.Sub(t) >= p.o.TTL {
			delete(p.revoked, n)
		}
	}
}
