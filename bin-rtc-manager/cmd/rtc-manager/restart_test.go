package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// A node killed mid-call while the carrier hangs up, then restarted with the same NODE_ID, ends
// the dialog its previous run left — and records what is true: the carrier had hung up (it
// answers the restarted node's BYE with 481), so the call ended by remote, no later than the
// dead run's last heartbeat. (It used to end by local at the restart, seconds too late.)
func TestRestartedNodeRecordsTheCarriersHangup(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	w := newWorld(t)
	bin := filepath.Join(t.TempDir(), "rtc-manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	nodeID := testenv.Name("restarted")
	env, _ := nodeEnv(t, w.url, nodeID, w.sim.Addr(), nil)
	cmd := exec.Command(bin)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("first run's logs:\n%s", logs.String())
		}
	})
	waitServing(t, w.rtc, nodeID)
	callID, resp := w.dial(t, tel("+1200000003"), 0) // answers after 1 s ringing, hangs up 3 s later
	if resp.NodeID != nodeID {
		t.Fatalf("dialled by %s, want %s", resp.NodeID, nodeID)
	}
	testenv.Eventually(t, 10*time.Second, "answer", func() bool { return len(w.events.byCall(callID)) == 2 })
	var answered rtcapi.Event
	_ = json.Unmarshal(w.events.byCall(callID)[1].Data, &answered)

	// Killed once a heartbeat after the answer is stored (about a second before the carrier's BYE).
	rdb := testenv.Redis(t)
	var beat time.Time
	testenv.Eventually(t, 5*time.Second, "a heartbeat after the answer", func() bool {
		v, err := rdb.Get(context.Background(), "rtc:node:"+nodeID+":alive").Result()
		if err != nil {
			return false
		}
		_, at, _ := strings.Cut(v, " ")
		beat, err = time.Parse(time.RFC3339Nano, at)
		return err == nil && beat.After(answered.At.Add(time.Second))
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	_ = cmd.Wait()
	killed = true
	// The carrier's BYE (3 s after the answer) goes to the dead node; its dialog is over.
	testenv.Eventually(t, 15*time.Second, "the carrier to hang up", func() bool { return w.sim.Active() == 0 })

	startNodeID(t, w.url, nodeID, w.sim.Addr(), nil)
	end := w.waitEnded(t, callID, 20*time.Second)
	if end.By != callapi.HangupByRemote || end.SIPCode != 200 || end.Cause != 16 {
		t.Errorf("rtc.ended = %+v, want by remote, 200, cause 16", end)
	}
	if end.At.Before(beat) || end.At.After(killedAt) {
		t.Errorf("ended at %s, want the dead run's last heartbeat: between %s and the kill %s", end.At, beat, killedAt)
	}
	t.Logf("answered %s, killed %s, ended at %s (%.2f s after the answer)", answered.At, killedAt, end.At, end.At.Sub(answered.At).Seconds())
}

// The carrier's BYE for a dialog whose node died reaches the node now at that address (here a
// new node on the dead one's SIP port): it finds the dialog by its SIP Call-ID, answers 200 and
// records the end by remote at the BYE's arrival. (It used to answer 481, and the dialog stayed
// live until the call manager's reaper gave up on it.)
func TestBYEForADeadNodesDialogIsRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	w := newWorld(t)
	bin := filepath.Join(t.TempDir(), "rtc-manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sipAddr := "127.0.0.1:" + strconv.Itoa(siptest.FreePort(t))
	deadID := testenv.Name("dead")
	env, _ := nodeEnv(t, w.url, deadID, w.sim.Addr(), map[string]string{"SIP_LISTEN_ADDRESS": sipAddr})
	cmd := exec.Command(bin)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("dead node's logs:\n%s", logs.String())
		}
	})
	waitServing(t, w.rtc, deadID)
	callID, resp := w.dial(t, tel("+1200000003"), 0) // answers after 1 s ringing, hangs up 3 s later
	if resp.NodeID != deadID {
		t.Fatalf("dialled by %s, want %s", resp.NodeID, deadID)
	}
	testenv.Eventually(t, 10*time.Second, "answer", func() bool { return len(w.events.byCall(callID)) == 2 })
	var answered rtcapi.Event
	_ = json.Unmarshal(w.events.byCall(callID)[1].Data, &answered)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true

	next := w.node(t, map[string]string{"SIP_LISTEN_ADDRESS": sipAddr}) // another identity, same address
	end := w.waitEnded(t, callID, 40*time.Second)
	if end.By != callapi.HangupByRemote || end.SIPCode != 200 || end.Cause != 16 {
		t.Errorf("rtc.ended = %+v, want by remote, 200, cause 16", end)
	}
	// At the carrier's BYE (3 s after its answer) or one of its retransmissions, never before.
	if talk := end.At.Sub(answered.At); talk < 2900*time.Millisecond || talk > 35*time.Second {
		t.Errorf("ended %s after the answer, want the carrier's BYE at 3 s or a retransmission of it", talk)
	}
	testenv.Eventually(t, 10*time.Second, "the carrier to see its BYE answered", func() bool { return w.sim.Active() == 0 })
	t.Logf("ended %.2f s after the answer, recorded by %s", end.At.Sub(answered.At).Seconds(), next.id)
}
