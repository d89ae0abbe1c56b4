// Command carrier-sim is the SIP carrier simulator of the local stack (see internal/carrier for
// the number plan). It listens on CARRIER_LISTEN_ADDRESS (default 127.0.0.1:5080), UDP and TCP.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/emiago/sipgo/sip"

	"voipbin/bin-rtc-manager/internal/carrier"
	"voipbin/pkg/envconf"
	"voipbin/pkg/telemetry"
)

func main() {
	// `carrier-sim vars` prints the variables it reads, as JSON (deploy/check uses it).
	if len(os.Args) > 1 && os.Args[1] == "vars" {
		r := envconf.New(func(string) string { return "" })
		readConfig(r)
		if err := json.NewEncoder(os.Stdout).Encode(r.Vars()); err != nil {
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// sipgo's package-wide logger must be set before any use.
	sip.SetDefaultLogger(telemetry.NewLogger(os.Stderr, "carrier-sim", telemetry.ParseLevel(os.Getenv("LOG_LEVEL"))).With("component", "sipgo"))
	if err := run(ctx, os.Getenv, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "carrier-sim: %v\n", err)
		os.Exit(1)
	}
}

// readConfig reads the simulator's variables through r.
func readConfig(r *envconf.Reader) (addr, level string) {
	return r.HostPort("CARRIER_LISTEN_ADDRESS", "127.0.0.1:5080", false), r.String("LOG_LEVEL", "info", false)
}

func run(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
	r := envconf.New(getenv)
	addr, level := readConfig(r)
	if err := r.Err(); err != nil {
		return err
	}
	log := telemetry.NewLogger(stderr, "carrier-sim", telemetry.ParseLevel(level))
	s, err := carrier.New(addr, log)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
