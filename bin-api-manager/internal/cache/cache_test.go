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
	t.Cleanup(func() { rdb.Del(context.Background(), prefix+"k1", prefix+"k2") })
	s := cache.NewIdempotency(rdb, prefix, time.Hour, time.Minute)

	_, started, err := s.Begin(ctx, "k1", "h1")
	if err != nil || !started {
		t.Fatalf("first Begin = %v, %v; want started", started, err)
	}
	rec, started, err := s.Begin(ctx, "k1", "h1")
	if err != nil || started || !rec.Pending || rec.Hash != "h1" {
		t.Fatalf("Begin while pending = %+v, %v, %v", rec, started, err)
	}
	if err := s.Finish(ctx, "k1", cache.Record{Hash: "h1", Status: 201, Body: []byte(`{"calls":[]}`)}); err != nil {
		t.Fatal(err)
	}
	rec, started, err = s.Begin(ctx, "k1", "h2")
	if err != nil || started || rec.Pending || rec.Status != 201 || rec.Hash != "h1" || string(rec.Body) != `{"calls":[]}` {
		t.Fatalf("Begin after Finish = %+v, %v, %v", rec, started, err)
	}

	if _, started, _ := s.Begin(ctx, "k2", "h"); !started {
		t.Fatal("k2 not started")
	}
	if err := s.Abort(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	if _, started, _ := s.Begin(ctx, "k2", "h"); !started {
		t.Fatal("an aborted key must be usable again")
	}

	dead := cache.NewIdempotency(deadRedis(t), "idem:", time.Hour, time.Minute)
	if _, _, err := dead.Begin(ctx, "k", "h"); err == nil {
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
