package main

import (
	"context"
	"testing"
	"time"

	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

// A Redis that restarts empty during a call loses neither the call's end nor its time: the node
// holds its live dialogs and unpublished events in memory and writes them back, and the end is
// dated when the carrier's BYE arrived, even when Redis was down at that moment. Through the real
// call manager: the call ends at once (not by the reaper a minute later), lasted 3 s, by remote.
func TestRedisLossKeepsTheEndOfACall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the call manager")
	}
	srv := testenv.PrivateRedis(t)
	w := newWorld(t)
	n := w.node(t, map[string]string{"REDIS_ADDRESS": srv.Addr})
	calls := startCallManager(t, w)

	get := func(t *testing.T, id string) callapi.Call {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := calls.Get(ctx, w.customer, id)
		if err != nil {
			t.Logf("Get: %v", err)
		}
		return c
	}
	tests := []struct {
		name string
		// lose runs once the call is answered; the carrier hangs up 3 s after its answer.
		lose func(t *testing.T)
	}{
		{"restarted empty before the BYE", func(t *testing.T) { srv.Restart() }},
		{"down when the BYE arrives, back empty after", func(t *testing.T) {
			srv.Stop()
			testenv.Eventually(t, 10*time.Second, "the carrier's BYE", func() bool { return w.sim.Active() == 0 })
			// The end waits in the node's memory; give its retries time to fail a few times.
			deadline := time.Now().Add(1500 * time.Millisecond)
			testenv.Eventually(t, 5*time.Second, "a second and a half of outage", func() bool { return time.Now().After(deadline) })
			srv.Start()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			created, err := calls.Create(ctx, callapi.CreateRequest{CustomerID: w.customer,
				Source:       callapi.Address{Type: "tel", Target: "+15550001111"},
				Destinations: []callapi.Address{{Type: "tel", Target: "+1200000003"}}})
			if err != nil || len(created) != 1 {
				t.Fatalf("Create() = %v, %v", created, err)
			}
			id := created[0].ID
			testenv.Eventually(t, 10*time.Second, "the answer", func() bool { return get(t, id).Status == callapi.StatusProgressing })
			tt.lose(t)
			// Well before the reaper's two failed probes (a minute), and from the node's event.
			testenv.Eventually(t, 15*time.Second, "the call to end", func() bool { return get(t, id).Status == callapi.StatusHangup })
			got := get(t, id)
			if got.HangupBy != callapi.HangupByRemote || got.HangupReason != "normal" || got.Duration != 3 || got.SIPCode != 200 {
				t.Errorf("call = by %s reason %s duration %d sip %d; want by remote, normal, 3 s, 200",
					got.HangupBy, got.HangupReason, got.Duration, got.SIPCode)
			}
			if got.TMProgressing == nil || got.TMHangup == nil {
				t.Fatalf("call has no answer or hangup time: %+v", got)
			}
			if talk := got.TMHangup.Sub(*got.TMProgressing); talk < 3*time.Second || talk > 3500*time.Millisecond {
				t.Errorf("tm_hangup - tm_progressing = %s, want the carrier's 3 s", talk)
			}
			end := w.waitEnded(t, id, 5*time.Second)
			if !end.At.Truncate(time.Microsecond).Equal(*got.TMHangup) || end.By != callapi.HangupByRemote || end.NodeID != n.id {
				t.Errorf("rtc.ended = %+v, want at %s by remote from %s", end, got.TMHangup, n.id)
			}
		})
	}
}
