package cache_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/pkg/testenv"
)

// deadRedis is a client of an address where nothing listens.
func deadRedis(t *testing.T) *redis.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestIdempotency(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Name("idem") + ":"
	t.Cleanup(func() { rdb.Del(context.Background(), prefix+"k1", prefix+"k2", prefix+"k3") })
	s := cache.NewIdempotency(rdb, prefix, time.Hour)
	const lease = time.Minute

	_, claim, err := s.Begin(ctx, "k1", "h1", lease)
	if err != nil || claim == nil || claim.Resolving {
		t.Fatalf("first Begin = %+v, %v; want a new claim", claim, err)
	}
	rec, other, err := s.Begin(ctx, "k1", "h1", lease)
	if err != nil || other != nil || !rec.Pending || rec.Hash != "h1" || time.Until(rec.LeaseUntil) < 50*time.Second {
		t.Fatalf("Begin while pending = %+v, %+v, %v", rec, other, err)
	}
	answer := cache.Record{Hash: "h1", Status: 201, Body: []byte(`{"calls":[]}`)}
	if stood, err := s.Finish(ctx, claim, answer); err != nil || string(stood.Body) != string(answer.Body) {
		t.Fatalf("Finish = %+v, %v", stood, err)
	}
	rec, other, err = s.Begin(ctx, "k1", "h2", lease)
	if err != nil || other != nil || rec.Pending || rec.Status != 201 || rec.Hash != "h1" || string(rec.Body) != `{"calls":[]}` {
		t.Fatalf("Begin after Finish = %+v, %+v, %v", rec, other, err)
	}
	// The first answer stands: a late Finish of the same key returns it instead of replacing it.
	if stood, err := s.Finish(ctx, claim, cache.Record{Hash: "h1", Status: 201, Body: []byte(`{"calls":[1]}`)}); err != nil || string(stood.Body) != `{"calls":[]}` {
		t.Fatalf("second Finish = %+v, %v; want the first answer", stood, err)
	}

	// Released (a definite failure that created nothing): usable again.
	_, claim, _ = s.Begin(ctx, "k2", "h", lease)
	if err := s.Release(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if _, c, _ := s.Begin(ctx, "k2", "h", lease); c == nil || c.Resolving {
		t.Fatal("a released key must be usable again")
	}

	// Yielded (outcome unknown): never free; the next request with the same body takes it over to
	// ask again, one with another body is told the key is taken.
	_, claim, _ = s.Begin(ctx, "k3", "h", lease)
	if err := s.Yield(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if rec, c, _ := s.Begin(ctx, "k3", "other", lease); c != nil || !rec.Pending || rec.Hash != "h" {
		t.Fatalf("Begin with another body after Yield = %+v, %+v", rec, c)
	}
	_, resolving, err := s.Begin(ctx, "k3", "h", lease)
	if err != nil || resolving == nil || !resolving.Resolving {
		t.Fatalf("Begin after Yield = %+v, %v; want a resolving claim", resolving, err)
	}
	if rec, c, _ := s.Begin(ctx, "k3", "h", lease); c != nil || !rec.Pending {
		t.Fatalf("Begin while resolving = %+v, %+v; want in use", rec, c)
	}
	// The first claim, superseded, can no longer release or yield the record.
	if err := s.Release(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if rec, c, _ := s.Begin(ctx, "k3", "h", lease); c != nil || !rec.Pending {
		t.Fatalf("a stale claim released the key: %+v, %+v", rec, c)
	}
	if ttl := rdb.PTTL(ctx, prefix+"k3").Val(); ttl < 59*time.Minute {
		t.Fatalf("a pending record lives %s, want the full TTL", ttl)
	}

	dead := cache.NewIdempotency(deadRedis(t), "idem:", time.Hour)
	if _, _, err := dead.Begin(ctx, "k", "h", lease); err == nil {
		t.Fatal("Begin without Redis must fail")
	}
}

func TestLimiter(t *testing.T) {
	ctx := context.Background()
	l := cache.NewLimiter(testenv.Redis(t), testenv.Name("rl")+":")
	allowed := 0
	var retry time.Duration
	for range 10 {
		ok, ra, err := l.Allow(ctx, "ip:1", 1, 5)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			allowed++
		} else {
			retry = ra
		}
	}
	if allowed != 5 {
		t.Fatalf("allowed %d of a burst of 10 with burst 5, want 5", allowed)
	}
	if retry <= 0 || retry > time.Second {
		t.Fatalf("retry after %s, want within (0, 1s]", retry)
	}
	if ok, _, _ := l.Allow(ctx, "ip:2", 1, 5); !ok {
		t.Fatal("another key shares the budget")
	}
	if _, _, err := cache.NewLimiter(deadRedis(t), "rl:").Allow(ctx, "k", 1, 1); err == nil {
		t.Fatal("Allow without Redis must fail")
	}
}

func TestFailures(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Name("fail") + ":"
	t.Cleanup(func() { rdb.Del(context.Background(), prefix+"k", prefix+"never") })
	f := cache.NewFailures(rdb, prefix)
	for i := int64(1); i <= 3; i++ {
		n, left, err := f.Add(ctx, "k", 2*time.Second)
		if err != nil || n != i || left <= time.Second || left > 2*time.Second {
			t.Fatalf("add %d: n=%d left=%s err=%v", i, n, left, err)
		}
	}
	if err := f.Undo(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := f.Add(ctx, "k", 2*time.Second); n != 3 {
		t.Fatalf("after an undo: n=%d, want 3", n)
	}
	// Undo never creates a key nor goes below zero.
	if err := f.Undo(ctx, "never"); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, prefix+"never").Result(); n != 0 {
		t.Fatal("undo created a key")
	}
	// The window ends: the count starts again.
	testenv.Eventually(t, 5*time.Second, "the window to end", func() bool {
		n, _ := rdb.Exists(ctx, prefix+"k").Result()
		return n == 0
	})
	if n, _, _ := f.Add(ctx, "k", 2*time.Second); n != 1 {
		t.Fatalf("new window: n=%d, want 1", n)
	}
	if _, _, err := cache.NewFailures(deadRedis(t), prefix).Add(ctx, "k", time.Second); err == nil {
		t.Fatal("Add with Redis down: no error")
	}
}

func TestLeases(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Name("lease") + ":"
	t.Cleanup(func() { rdb.Del(context.Background(), prefix+"c", prefix+"ip", prefix+"ip2") })
	l := cache.NewLeases(rdb, prefix, time.Second)
	take := func(member string, keys ...string) int {
		t.Helper()
		limits := map[string]int{"c": 2, "ip": 3, "ip2": 3}
		var ls []int
		for _, k := range keys {
			ls = append(ls, limits[k])
		}
		full, err := l.Acquire(ctx, keys, ls, member)
		if err != nil {
			t.Fatal(err)
		}
		return full
	}
	if take("a", "c", "ip") != -1 || take("b", "c", "ip") != -1 {
		t.Fatal("the first two leases were refused")
	}
	if got := take("c", "c", "ip"); got != 0 {
		t.Fatalf("third lease on a key of limit 2: full=%d, want 0", got)
	}
	if n, _ := rdb.ZCard(ctx, prefix+"ip").Result(); n != 2 {
		t.Fatalf("a refused lease was taken on the other key: %d members", n)
	}
	if take("x", "ip2") != -1 || take("y", "ip2") != -1 || take("z", "ip2") != -1 || take("w", "ip2") != 0 {
		t.Fatal("limit 3 not held on ip2")
	}
	if err := l.Release(ctx, []string{"c", "ip"}, "a"); err != nil {
		t.Fatal(err)
	}
	if got := take("c", "c", "ip"); got != -1 {
		t.Fatalf("after a release: full=%d, want taken", got)
	}
	// b is renewed, c is not: once the lease time has passed only c's slot is free again.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if err := l.Renew(ctx, []string{"c", "ip"}, "b"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // renewing at a pace, as the holder does
	}
	if got := take("d", "c", "ip"); got != -1 {
		t.Fatalf("an unrenewed lease did not end: full=%d", got)
	}
	if got := take("e", "c", "ip"); got != 0 {
		t.Fatalf("the renewed lease ended: full=%d, want the key full", got)
	}
	if _, err := cache.NewLeases(deadRedis(t), prefix, time.Second).Acquire(ctx, []string{"c"}, []int{1}, "m"); err == nil {
		t.Fatal("Acquire with Redis down: no error")
	}
}
