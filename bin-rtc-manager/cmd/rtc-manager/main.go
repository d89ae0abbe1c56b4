// Command rtc-manager speaks SIP: it dials, rings, answers and hangs up calls for the call manager.
//
//	rtc-manager          serve until SIGINT/SIGTERM
//	rtc-manager migrate  no-op (the rtc manager keeps its dialog state in Redis, not MySQL)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	sipgosip "github.com/emiago/sipgo/sip"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"voipbin/bin-rtc-manager/internal/cache"
	"voipbin/bin-rtc-manager/internal/config"
	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/rabbit"
	"voipbin/bin-rtc-manager/internal/rpcserver"
	"voipbin/bin-rtc-manager/internal/sip"
	"voipbin/pkg/amqp"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

const service = "rtc-manager"

// keyPrefix namespaces the rtc manager's Redis keys.
const keyPrefix = "rtc"

// drainTimeout bounds the graceful end of live dialogs at shutdown.
const drainTimeout = 15 * time.Second

// reapGrace is how long a started node waits before it ends the dialogs its previous run left:
// a peer that hung up one of them while the node was down retransmits its BYE over UDP at least
// every T2 (4 s, RFC 3261) until timer F (32 s), so within this grace the BYE reaches the node,
// which records the true end (by remote, at the BYE) instead of sending a BYE of its own that
// the peer, still waiting for an answer to its own, would accept.
const reapGrace = 5 * time.Second

// beatEvery is how often the node records that it is alive and checks that Redis still holds its
// state (restoring it from memory if not). It bounds how early the end of a call is dated when its
// node dies and the far end hangs up meanwhile.
const beatEvery = time.Second

func main() {
	// `<binary> vars` prints the variables config.Load reads, as JSON (deploy/check uses it).
	if len(os.Args) > 1 && os.Args[1] == "vars" {
		if err := json.NewEncoder(os.Stdout).Encode(config.Vars()); err != nil {
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// sipgo logs a few things through its package-wide logger, which must be set before any use
	// (and so here, not in run, which tests call concurrently).
	sipgosip.SetDefaultLogger(telemetry.NewLogger(os.Stderr, service, telemetry.ParseLevel(os.Getenv("LOG_LEVEL"))).With("component", "sipgo"))
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(stderr, service, telemetry.ParseLevel(cfg.LogLevel))

	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if len(args) > 0 && args[0] == "migrate" {
		return nil
	}

	conn, err := amqp.Dial(startCtx, cfg.RabbitMQAddress, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.Declare(startCtx, rabbit.DeclareExchange); err != nil {
		return fmt.Errorf("declare %s: %w", "rtc.events", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddress})
	defer rdb.Close()

	reg := telemetry.NewRegistry()
	admin := telemetry.NewAdmin(cfg.AdminAddress, reg, map[string]telemetry.Check{
		"rabbitmq": conn.Check,
		"redis":    func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
	})

	store := cache.NewStore(rdb, keyPrefix, cfg.NodeID)
	relay := rabbit.NewRelay(store.Outbox(), conn, log, reg)
	ua, err := sip.NewUA(sip.Params{ListenAddress: cfg.SIP.ListenAddress, ExternalAddress: cfg.SIP.ExternalAddress,
		Username: cfg.SIP.TrunkUsername, Password: cfg.SIP.TrunkPassword,
		RTPPortMin: cfg.SIP.RTPPortMin, RTPPortMax: cfg.SIP.RTPPortMax,
		Policy:         &sip.AddressPolicy{Allowed: cfg.SIP.AllowedNetworks, TrunkURI: cfg.SIP.TelTrunkURI},
		TCPIdleTimeout: cfg.SIP.TCPIdleTimeout, TCPMaxConnections: cfg.SIP.TCPMaxConnections,
		Log: log, Registerer: reg})
	if err != nil {
		return err
	}
	rpcClient := rpc.NewClient(conn, log, rpc.ClientOptions{})
	defer rpcClient.Close()
	// The previous run's last heartbeat, read before this run's first one: the last moment the
	// dialogs it left were known alive.
	prevAlive, err := store.Alive(startCtx, cfg.NodeID)
	if err != nil {
		log.WarnContext(ctx, "reading the previous run's last heartbeat failed", "error", err)
	}
	svc := dialog.NewService(dialog.Params{PreviousRunAlive: prevAlive, NodeID: cfg.NodeID, TrunkURI: cfg.SIP.TelTrunkURI,
		DialTimeout: cfg.SIP.DialTimeout, MaxDuration: cfg.SIP.MaxDuration,
		Store: store, Index: store, Phone: ua, Forward: rtcapi.NewClient(rpcClient), Relay: relay, Log: log})
	ua.OnOrphanBye(svc.RemoteBye)

	routes := rpcserver.New(svc)
	shared := rpc.NewServer(conn, rtcapi.Queue, log, rpc.ServerOptions{Registerer: reg})
	routes.Shared(shared)
	node := rpc.NewServer(conn, rtcapi.NodeQueue(cfg.NodeID), log, rpc.ServerOptions{Exclusive: true, Registerer: reg})
	routes.Node(node)

	// The SIP side and the relay outlive the RPC servers: live dialogs are ended and their
	// outcomes published after dials stop coming in.
	sipCtx, stopSIP := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSIP()
	sipDone := make(chan error, 1)
	go func() { sipDone <- ua.Run(sipCtx) }()
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()

	// Dialogs a previous run of this node left open are ended after reapGrace (see there), in
	// the background: new dials are running dialogs, which the reap leaves alone.
	reapDone := make(chan struct{})
	go func() {
		defer close(reapDone)
		select {
		case <-ctx.Done():
			return
		case <-time.After(reapGrace):
		}
		if n, err := svc.Reap(ctx, ua.Running); err != nil {
			log.WarnContext(ctx, "ending dialogs left by a previous run failed", "error", err)
		} else if n > 0 {
			log.InfoContext(ctx, "ended dialogs left by a previous run", "count", n)
		}
	}()
	// The heartbeat runs as long as the relay: dialogs ended at shutdown are restored too.
	beatDone := make(chan struct{})
	go func() { defer close(beatDone); heartbeat(relayCtx, store, log) }()

	work, workCtx := errgroup.WithContext(ctx)
	work.Go(func() error { return shared.Run(workCtx) })
	work.Go(func() error { return node.Run(workCtx) })
	work.Go(func() error {
		select {
		case err := <-sipDone:
			return err
		case <-workCtx.Done():
			return nil
		}
	})

	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Run(adminCtx, log) }()

	log.Info("started", "node_id", cfg.NodeID, "sip", ua.Addr())
	<-workCtx.Done()
	admin.Drain()
	log.Info("shutting down: no more dials; ending live dialogs", "active", ua.Active())
	err = work.Wait()
	<-reapDone
	hctx, cancelH := context.WithTimeout(context.Background(), drainTimeout)
	if herr := ua.HangupAll(hctx); herr != nil {
		log.Error("live dialogs did not all end cleanly", "error", herr)
	}
	cancelH()
	stopRelay() // its last pass publishes the outcomes just recorded
	<-relayDone
	<-beatDone
	stopSIP()
	_ = ua.Close()
	stopAdmin()
	if aerr := <-adminDone; aerr != nil && err == nil {
		err = aerr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}

// heartbeat beats until ctx ends, logging a failure once per outage.
func heartbeat(ctx context.Context, store *cache.Store, log *slog.Logger) {
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	failing := false
	restored := store.Restored()
	for {
		err := store.Beat(ctx)
		if n := store.Restored(); n > restored {
			log.WarnContext(ctx, "Redis had lost this node's dialogs or events; written back from memory")
			restored = n
		}
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			log.WarnContext(ctx, "heartbeat failed; the node keeps its dialogs in memory and restores them when Redis is back", "error", err)
			failing = true
		case err == nil && failing:
			log.InfoContext(ctx, "heartbeat recovered")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
