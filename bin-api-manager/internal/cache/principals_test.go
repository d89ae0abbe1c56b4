package cache_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/testenv"
)

// instance is one api-manager's Principals, running its subscription until the test ends.
func instance(t *testing.T, rdb *redis.Client, prefix string, ttl time.Duration, reg prometheus.Registerer) (*cache.Principals, *atomic.Int64) {
	t.Helper()
	p := cache.NewPrincipals(rdb, cache.PrincipalOptions{Prefix: prefix, Channel: prefix + "revoked", TTL: ttl,
		PingInterval: 200 * time.Millisecond, Log: testenv.Logger(t), Registerer: reg})
	var revokes atomic.Int64
	p.OnRevoke(func() { revokes.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 5*time.Second, "the revocation channel subscribed", p.Live)
	return p, &revokes
}

func testKey() identity.AccessKey {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return identity.AccessKey{ID: uuid.NewString(), CustomerID: uuid.NewString(), UserID: uuid.NewString(), ParentKeyID: uuid.NewString(),
		Name: "ci", TokenHash: identity.HashAccessKey("vb_" + uuid.NewString()), Permission: identity.PermCustomerAdmin,
		TMExpire: now.Add(time.Hour), TMCreate: now}
}

func testUser() identity.User {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return identity.User{ID: uuid.NewString(), CustomerID: uuid.NewString(), Username: "alice", PasswordHash: "secret-hash",
		Permission: identity.PermCustomerAdmin, TMCreate: now, TMUpdate: now}
}

// TestPrincipalsRevokeReachesEveryInstance: two instances share Redis; what one caches the other
// reads from Redis (then from its memory, without Redis); a revocation on either is applied by
// both at once.
func TestPrincipalsRevokeReachesEveryInstance(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Name("auth") + ":"
	regB := prometheus.NewRegistry()
	a, revokesA := instance(t, rdb, prefix, 5*time.Second, nil)
	b, revokesB := instance(t, rdb, prefix, 5*time.Second, regB)
	k, u := testKey(), testUser()

	if _, ok := a.Keys().Get(ctx, k.TokenHash); ok {
		t.Fatal("empty cache hit")
	}
	a.Keys().Set(ctx, k)
	a.Users().Set(ctx, u)
	if got, ok := b.Keys().Get(ctx, k.TokenHash); !ok || got != k {
		t.Fatalf("B's key = %+v, %v; want %+v", got, ok, k)
	}
	want := u
	want.PasswordHash = ""
	if got, ok := b.Users().Get(ctx, u.ID); !ok || got != want {
		t.Fatalf("B's user = %+v, %v; want %+v (no password hash)", got, ok, want)
	}
	if raw, _ := rdb.Get(ctx, prefix+"user:"+u.ID).Result(); raw == "" || strings.Contains(raw, "secret-hash") {
		t.Fatalf("Redis holds %q", raw)
	}
	b.Users().Get(ctx, u.ID) // from B's memory now
	if got := testutil.ToFloat64(lookupCounter(t, regB, "user", "memory")); got != 1 {
		t.Fatalf("memory hits on B = %v, want 1", got)
	}

	a.Keys().Delete(ctx, k.TokenHash)
	b.Users().Delete(ctx, u.ID)
	testenv.Eventually(t, 2*time.Second, "both revocations applied on both instances", func() bool {
		_, k1 := a.Keys().Get(ctx, k.TokenHash)
		_, k2 := b.Keys().Get(ctx, k.TokenHash)
		_, u1 := a.Users().Get(ctx, u.ID)
		_, u2 := b.Users().Get(ctx, u.ID)
		return !k1 && !k2 && !u1 && !u2 && revokesA.Load() >= 2 && revokesB.Load() >= 2
	})

	// A value read from the store before the revocation and set after it is not cached.
	b.Keys().Set(ctx, k)
	if _, ok := a.Keys().Get(ctx, k.TokenHash); ok {
		t.Fatal("a revoked key was cached again on another instance")
	}
	if _, ok := b.Keys().Get(ctx, k.TokenHash); ok {
		t.Fatal("a revoked key was cached again")
	}
}

// TestPrincipalsTrustAnEntryForTheTTLOnly: memory keeps an entry no longer than Redis does, so a
// revocation nobody announced (Redis unreachable when it happened) takes effect within the TTL.
func TestPrincipalsTrustAnEntryForTheTTLOnly(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Name("auth") + ":"
	a, _ := instance(t, rdb, prefix, 300*time.Millisecond, nil)
	u := testUser()
	a.Users().Set(ctx, u)
	if _, ok := a.Users().Get(ctx, u.ID); !ok {
		t.Fatal("miss right after Set")
	}
	testenv.Eventually(t, 2*time.Second, "the entry to expire in memory and Redis", func() bool { _, ok := a.Users().Get(ctx, u.ID); return !ok })
}

func TestPrincipalsWithRedisDownMissAndCount(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := cache.NewPrincipals(deadRedis(t), cache.PrincipalOptions{Prefix: "x:", Channel: "x:revoked", TTL: time.Second, Log: testenv.Logger(t), Registerer: reg})
	ctx := context.Background()
	k := testKey()
	p.Keys().Delete(ctx, k.TokenHash) // delete and publish fail
	if _, ok := p.Keys().Get(ctx, k.TokenHash); ok {
		t.Fatal("hit without Redis")
	}
	for _, op := range []string{"delete", "publish", "get"} {
		if v := testutil.ToFloat64(errCounter(t, reg, op)); v != 1 {
			t.Errorf("errors{op=%s} = %v, want 1", op, v)
		}
	}
}

func lookupCounter(t *testing.T, reg *prometheus.Registry, kind, layer string) prometheus.Collector {
	return gathered(t, reg, "api_auth_cache_lookups_total", map[string]string{"kind": kind, "layer": layer})
}

func errCounter(t *testing.T, reg *prometheus.Registry, op string) prometheus.Collector {
	return gathered(t, reg, "api_auth_cache_errors_total", map[string]string{"op": op})
}

// gathered is a collector of the one counter value of name with labels, read from reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
			c.Add(m.GetCounter().GetValue())
			return c
		}
	}
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name})
}

// BenchmarkPrincipalsLookup is what the revocation check adds to a request whose principal is
// cached: a memory hit (no network), against a Redis GET when memory does not hold it.
//
//	go test -run '^$' -bench PrincipalsLookup -count 6 ./internal/cache/
func BenchmarkPrincipalsLookup(b *testing.B) {
	ctx := context.Background()
	rdb := testenv.Redis(b)
	prefix := testenv.Name("auth") + ":"
	p := cache.NewPrincipals(rdb, cache.PrincipalOptions{Prefix: prefix, Channel: prefix + "revoked", TTL: 5 * time.Second})
	u := testUser()
	b.Cleanup(func() { rdb.Del(ctx, prefix+"user:"+u.ID) })
	b.Run("memory", func(b *testing.B) {
		p.Users().Set(ctx, u) // trusted for 5 s: each run starts afresh
		for b.Loop() {
			if _, ok := p.Users().Get(ctx, u.ID); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("redis", func(b *testing.B) { // another instance's first look-up: memory is cold
		p.Users().Set(ctx, u)
		for b.Loop() {
			cold := cache.NewPrincipals(rdb, cache.PrincipalOptions{Prefix: prefix, Channel: prefix + "revoked", TTL: 5 * time.Second})
			if _, ok := cold.Users().Get(ctx, u.ID); !ok {
				b.Fatal("miss")
			}
		}
	})
}
