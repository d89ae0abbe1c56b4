package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func TestLocalAllowsBurstThenRate(t *testing.T) {
	clk := newClock()
	l := NewLocal()
	l.now = clk.now
	var allowed int
	for range 10 {
		if ok, _ := l.Allow("k", 2, 4); ok {
			allowed++
		}
	}
	if allowed != 4 {
		t.Fatalf("%d of 10 allowed at once with burst 4, want 4", allowed)
	}
	ok, retry := l.Allow("k", 2, 4)
	if ok || retry <= 0 || retry > 500*time.Millisecond {
		t.Fatalf("over the burst: allowed %v, retry %s; want refused within 500ms", ok, retry)
	}
	if ok, _ := l.Allow("other", 2, 4); !ok {
		t.Fatal("another key was refused")
	}
	clk.advance(retry)
	if ok, _ := l.Allow("k", 2, 4); !ok {
		t.Fatal("refused after its retry-after")
	}
	if ok, _ := l.Allow("k", 0, 0); !ok {
		t.Fatal("rate 0 must not limit")
	}
}

func TestCounterWindows(t *testing.T) {
	clk := newClock()
	c := NewCounter()
	c.now = clk.now
	for i := int64(1); i <= 3; i++ {
		if n, left := c.Add("k", time.Minute); n != i || left != time.Minute {
			t.Fatalf("add %d: n=%d left=%s", i, n, left)
		}
	}
	c.Undo("k")
	clk.advance(30 * time.Second)
	if n, left := c.Add("k", time.Minute); n != 3 || left != 30*time.Second {
		t.Fatalf("after undo: n=%d left=%s, want 3 and 30s", n, left)
	}
	clk.advance(30 * time.Second)
	if n, left := c.Add("k", time.Minute); n != 1 || left != time.Minute {
		t.Fatalf("new window: n=%d left=%s, want 1 and 1m", n, left)
	}
	c.Undo("k")
	c.Undo("k")
	if n, _ := c.Add("k", time.Minute); n != 1 {
		t.Fatalf("undo went below zero: n=%d", n)
	}
}

func TestTablesStayBounded(t *testing.T) {
	clk := newClock()
	l, c := NewLocal(), NewCounter()
	l.now, c.now = clk.now, clk.now
	for i := range maxKeys + 10 {
		l.Allow(fmt.Sprint(i), 1, 1)
		c.Add(fmt.Sprint(i), time.Hour)
	}
	if len(l.tat) > maxKeys || len(c.entries) > maxKeys {
		t.Fatalf("tables grew to %d and %d keys, want at most %d", len(l.tat), len(c.entries), maxKeys)
	}
}
