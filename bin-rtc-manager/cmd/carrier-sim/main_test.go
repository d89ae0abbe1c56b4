package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	if err := run(context.Background(), func(k string) string {
		return map[string]string{"CARRIER_LISTEN_ADDRESS": "no-port"}[k]
	}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "CARRIER_LISTEN_ADDRESS") {
		t.Errorf("run(bad address) = %v, want an error naming CARRIER_LISTEN_ADDRESS", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, func(k string) string { return map[string]string{"CARRIER_LISTEN_ADDRESS": "127.0.0.1:0"}[k] }, &logs)
	}()
	time.AfterFunc(200*time.Millisecond, cancel)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run() = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run() did not return after cancel")
	}
}
