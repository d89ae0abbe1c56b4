package cache_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// eventTypes reads the outbox as event types, oldest first.
func eventTypes(t *testing.T, outbox *cache.Outbox) []string {
	t.Helper()
	raw, err := outbox.Peek(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range raw {
		var ev event.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev.EventType)
	}
	return out
}

// Redis restarting empty loses neither a live dialog nor its unpublished events: the next change
// writes back what was lost first (so the end is not dropped, and the outbox keeps its order), and
// the heartbeat does the same for a dialog nothing changes. A stale copy is replaced too.
func TestStoreRestoresWhatRedisLost(t *testing.T) {
	srv := testenv.PrivateRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	store := cache.NewStore(rdb, "rtc", "n1")
	outbox := store.Outbox()
	newDialog := func(id string) *dialog.Dialog {
		d := &dialog.Dialog{CallID: id, CustomerID: "cust-1", NodeID: "n1", State: dialog.StateCalling,
			DialTimeout: time.Minute, MaxDuration: time.Hour}
		if err := store.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	change := func(id string, fn func(d *dialog.Dialog) []dialog.Emitted) error {
		_, err := store.Update(ctx, id, func(d *dialog.Dialog) ([]dialog.Emitted, error) { return fn(d), nil })
		return err
	}
	ring := func(d *dialog.Dialog) []dialog.Emitted { return d.Ring(time.Now(), 180) }
	answer := func(d *dialog.Dialog) []dialog.Emitted { return d.Answered(time.Now(), dialog.Answer{SIPCode: 200}) }
	end := func(d *dialog.Dialog) []dialog.Emitted {
		return d.Ended(time.Now(), dialog.End{SIPCode: 200, By: "remote"})
	}
	if err := store.Beat(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("a change after the loss", func(t *testing.T) {
		newDialog("a")
		for _, fn := range []func(*dialog.Dialog) []dialog.Emitted{ring, answer} {
			if err := change("a", fn); err != nil {
				t.Fatal(err)
			}
		}
		// The relay published rtc.ringing; rtc.answered still waits when Redis goes.
		raw, _ := outbox.Peek(ctx, 1)
		if err := outbox.Remove(ctx, raw); err != nil {
			t.Fatal(err)
		}
		srv.Restart()
		if d, err := store.Get(ctx, "a"); err != nil || d.State != dialog.StateAnswered {
			t.Fatalf("Get() after the loss = %+v, %v; want the answered dialog from memory", d, err)
		}
		if err := change("a", end); err != nil {
			t.Fatalf("recording the end after the loss: %v", err)
		}
		if got, want := eventTypes(t, outbox), []string{rtcapi.EventAnswered, rtcapi.EventEnded}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("outbox = %v, want %v", got, want)
		}
		raw, _ = outbox.Peek(ctx, 10)
		if err := outbox.Remove(ctx, raw); err != nil {
			t.Fatal(err)
		}
		if n := store.Pending(); n != 0 {
			t.Errorf("%d events still held after they were published", n)
		}
	})

	t.Run("the heartbeat after the loss", func(t *testing.T) {
		newDialog("b")
		if err := change("b", ring); err != nil {
			t.Fatal(err)
		}
		srv.Restart()
		if err := store.Beat(ctx); err != nil {
			t.Fatal(err)
		}
		d, err := cache.NewStore(rdb, "rtc", "n2").Get(ctx, "b") // another node reads Redis itself
		if err != nil || d.State != dialog.StateRinging || d.Seq != 1 {
			t.Fatalf("Get() by another node = %+v, %v; want the ringing dialog written back", d, err)
		}
		if live, _ := rdb.SMembers(ctx, "rtc:node:n1:live").Result(); fmt.Sprint(live) != "[b]" {
			t.Errorf("live set = %v, want [b]", live)
		}
		if got := eventTypes(t, outbox); fmt.Sprint(got) != fmt.Sprint([]string{rtcapi.EventRinging}) {
			t.Errorf("outbox = %v, want the unpublished ringing", got)
		}
	})

	t.Run("a stale copy", func(t *testing.T) {
		if err := change("b", answer); err != nil {
			t.Fatal(err)
		}
		stale, _ := json.Marshal(dialog.Dialog{CallID: "b", CustomerID: "cust-1", NodeID: "n1", State: dialog.StateCalling})
		rdb.Set(ctx, "rtc:dialog:b", stale, time.Hour)
		if err := change("b", end); err != nil {
			t.Fatal(err)
		}
		d, err := cache.NewStore(rdb, "rtc", "n2").Get(ctx, "b")
		if err != nil || d.State != dialog.StateEnded || d.Seq != 3 || d.TMAnswered.IsZero() {
			t.Fatalf("Get() = %+v, %v; want ended as sequence 3 after the answer", d, err)
		}
	})

	t.Run("the heartbeat", func(t *testing.T) {
		before := time.Now().Add(-time.Second)
		if err := store.Beat(ctx); err != nil {
			t.Fatal(err)
		}
		at, err := store.Alive(ctx, "n1")
		if err != nil || at.Before(before) {
			t.Errorf("Alive() = %s, %v; want about now", at, err)
		}
		if at, err := store.Alive(ctx, "never"); err != nil || !at.IsZero() {
			t.Errorf("Alive(unknown) = %s, %v; want zero", at, err)
		}
	})
}
