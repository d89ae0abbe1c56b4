package cache_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/cache"
	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

func newCall(version int64, status callapi.Status) *call.Call {
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	return &call.Call{Call: callapi.Call{ID: uuid.NewString(), CustomerID: uuid.NewString(), Status: status,
		Direction: "outgoing", Source: callapi.Address{Type: "tel", Target: "+15550000001"},
		Destination: callapi.Address{Type: "tel", Target: "+15550000002"}, Metadata: map[string]any{"k": "v"},
		TMCreate: at, TMUpdate: at}, NodeID: "node-1", DialTimeout: 60, Sequence: version, Version: version, TMDeadline: at.Add(time.Hour)}
}

func cleanup(t *testing.T, ids ...string) {
	rdb := testenv.Redis(t)
	t.Cleanup(func() {
		for _, id := range ids {
			rdb.Del(context.Background(), cache.Key(id))
		}
	})
}

func TestSetGetRoundTripAndVersionGuard(t *testing.T) {
	ctx := context.Background()
	c := cache.New(cache.NewClient(testenv.RedisAddress()), testenv.Logger(t), cache.Options{TTL: time.Minute})
	v3 := newCall(3, callapi.StatusProgressing)
	cleanup(t, v3.ID)

	if _, ok := c.Get(ctx, v3.ID); ok {
		t.Fatal("hit before any write")
	}
	c.Set(ctx, v3)
	got, ok := c.Get(ctx, v3.ID)
	if !ok || got.Status != callapi.StatusProgressing || got.Version != 3 || got.NodeID != "node-1" ||
		got.CustomerID != v3.CustomerID || got.Metadata["k"] != "v" || !got.TMCreate.Equal(v3.TMCreate) {
		t.Fatalf("Get = %+v, %v; want the call written", got, ok)
	}

	// An older version (a slow writer, or a read-through fill racing a change) does not win.
	v2 := *v3
	v2.Version, v2.Status = 2, callapi.StatusRinging
	c.Set(ctx, &v2)
	if got, _ := c.Get(ctx, v3.ID); got.Version != 3 || got.Status != callapi.StatusProgressing {
		t.Fatalf("after an older write: v%d %s, want v3 progressing", got.Version, got.Status)
	}
	v4 := *v3
	v4.Version, v4.Status = 4, callapi.StatusHangup
	now := v3.TMCreate
	v4.TMDelete = &now
	c.Set(ctx, &v4)
	if got, _ := c.Get(ctx, v3.ID); got.Version != 4 || got.TMDelete == nil || got.VisibleTo("") {
		t.Fatalf("after a newer write: %+v, want v4 deleted", got)
	}

	ttl := testenv.Redis(t).PTTL(ctx, cache.Key(v3.ID)).Val()
	if ttl <= 0 || ttl > time.Minute {
		t.Fatalf("TTL = %v, want within (0, 1m]", ttl)
	}
}

// closedAddr is an address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestRedisDownIsAMissAndFast(t *testing.T) {
	ctx := context.Background()
	c := cache.New(cache.NewClient(closedAddr(t)), testenv.Logger(t), cache.Options{})
	cl := newCall(1, callapi.StatusDialing)
	start := time.Now()
	c.Set(ctx, cl)
	if _, ok := c.Get(ctx, cl.ID); ok {
		t.Fatal("hit with Redis down")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("a write and a read with Redis down took %v, want well under 1s", took)
	}
	if c.Stale() != 1 {
		t.Fatalf("Stale() = %d, want 1 after a failed write", c.Stale())
	}
}

// proxy forwards TCP to Redis and can be taken down and brought back on the same address.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	l      net.Listener
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, addr: closedAddr(t), target: target}
	p.up()
	t.Cleanup(p.down)
	return p
}

func (p *proxy) up() {
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		}
	}()
}

func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		_ = p.l.Close()
		p.l = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func TestFailedWriteNeverServesTheOldCopy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	px := newProxy(t, testenv.RedisAddress())
	c := cache.New(cache.NewClient(px.addr), testenv.Logger(t), cache.Options{RetryInterval: 20 * time.Millisecond})
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	v1 := newCall(1, callapi.StatusDialing)
	cleanup(t, v1.ID)
	c.Set(ctx, v1)
	if _, ok := c.Get(ctx, v1.ID); !ok {
		t.Fatal("miss after a write through a working proxy")
	}

	px.down()
	v2 := *v1
	v2.Version, v2.Status = 2, callapi.StatusRinging
	c.Set(ctx, &v2) // fails: Redis keeps v1
	if got, _ := testenv.Redis(t).Get(ctx, cache.Key(v1.ID)).Result(); got == "" {
		t.Fatal("test setup: Redis lost v1")
	}
	if got, ok := c.Get(ctx, v1.ID); ok {
		t.Fatalf("served %s v%d from the cache after a failed write", got.Status, got.Version)
	}

	px.up()
	testenv.Eventually(t, 10*time.Second, "the stale entry to be deleted once Redis is back", func() bool {
		return c.Stale() == 0
	})
	if n := testenv.Redis(t).Exists(ctx, cache.Key(v1.ID)).Val(); n != 0 {
		t.Fatal("the stale v1 entry is still in Redis")
	}
	c.Set(ctx, &v2)
	if got, ok := c.Get(ctx, v1.ID); !ok || got.Version != 2 {
		t.Fatalf("after recovery Get = %+v, %v; want v2", got, ok)
	}
}
