package cache_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-rtc-manager/internal/cache"
	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/pkg/event"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.RedisAddress()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t)
	prefix := testenv.Name("rtctest")
	t.Cleanup(func() {
		keys, _ := rdb.Keys(ctx, prefix+":*").Result()
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	})
	store := cache.NewStore(rdb, prefix, "n1")
	outbox := cache.NewOutbox(rdb, prefix, "n1")
	d := &dialog.Dialog{CallID: "call-1", CustomerID: "cust-1", NodeID: "n1", State: dialog.StateCalling, SIPCallID: "abc",
		DialTimeout: time.Minute, MaxDuration: time.Hour, RouteSet: []string{"<sip:p1;lr>"}}

	if _, err := store.Get(ctx, "call-1"); !errors.Is(err, dialog.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := store.Update(ctx, "call-1", func(*dialog.Dialog) ([]dialog.Emitted, error) { return nil, nil }); !errors.Is(err, dialog.ErrNotFound) {
		t.Fatalf("Update(missing) = %v, want ErrNotFound", err)
	}
	if err := store.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := store.Create(ctx, d); !errors.Is(err, dialog.ErrExists) {
		t.Fatalf("second Create() = %v, want ErrExists", err)
	}
	if live, _ := store.Live(ctx, "n1"); len(live) != 1 || live[0] != "call-1" {
		t.Errorf("Live() = %v", live)
	}

	// Concurrent changes all land (WATCH retries), each with its event in the outbox.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := store.Update(ctx, "call-1", func(d *dialog.Dialog) ([]dialog.Emitted, error) {
				d.CSeq++
				d.Seq++
				return []dialog.Emitted{{Type: rtcapi.EventRinging, Sequence: d.Seq, Data: rtcapi.Event{CallID: d.CallID}}}, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, err := store.Get(ctx, "call-1")
	if err != nil || got.CSeq != 20 || got.SIPCallID != "abc" || len(got.RouteSet) != 1 {
		t.Fatalf("Get() = %+v, %v; want CSeq 20", got, err)
	}
	raw, err := outbox.Peek(ctx, 100)
	if err != nil || len(raw) != 20 {
		t.Fatalf("Peek() = %d events, %v; want 20", len(raw), err)
	}
	seen := map[int64]bool{}
	for _, b := range raw {
		var ev event.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.CustomerID != "cust-1" || ev.ResourceType != "call" || ev.ResourceID != "call-1" || ev.EventID == "" {
			t.Errorf("envelope %+v", ev)
		}
		seen[ev.Sequence] = true
	}
	if len(seen) != 20 {
		t.Errorf("sequences %v are not 20 distinct ones", seen)
	}

	// Ending takes the dialog off the node's live set.
	if _, err := store.Update(ctx, "call-1", func(d *dialog.Dialog) ([]dialog.Emitted, error) {
		return d.Ended(time.Now(), dialog.End{SIPCode: 200, By: "remote"}), nil
	}); err != nil {
		t.Fatal(err)
	}
	if live, _ := store.Live(ctx, "n1"); len(live) != 0 {
		t.Errorf("Live() after the end = %v", live)
	}
	if ttl := rdb.TTL(ctx, prefix+":dialog:call-1").Val(); ttl <= 0 || ttl > cache.EndedTTL {
		t.Errorf("ended dialog TTL = %s", ttl)
	}
	// A failing change writes nothing.
	boom := errors.New("boom")
	if _, err := store.Update(ctx, "call-1", func(d *dialog.Dialog) ([]dialog.Emitted, error) { d.CSeq = 99; return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("Update() = %v, want boom", err)
	}
	if got, _ := store.Get(ctx, "call-1"); got.CSeq != 20 {
		t.Errorf("CSeq = %d after a failed change, want 20", got.CSeq)
	}

	raw, _ = outbox.Peek(ctx, 5)
	if err := outbox.Remove(ctx, raw); err != nil {
		t.Fatal(err)
	}
	if n, _ := outbox.Len(ctx); n != 16 {
		t.Errorf("Len() = %d after removing 5 of 21, want 16", n)
	}
}

func TestStoreRedisDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	store := cache.NewStore(rdb, "x", "n")
	ctx := context.Background()
	if err := store.Create(ctx, &dialog.Dialog{CallID: "c"}); err == nil || errors.Is(err, dialog.ErrExists) {
		t.Errorf("Create() = %v, want a connection error", err)
	}
	if _, err := store.Get(ctx, "c"); err == nil || errors.Is(err, dialog.ErrNotFound) {
		t.Errorf("Get() = %v, want a connection error", err)
	}
}
