package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"voipbin/pkg/envconf"
)

// RunFunc is a service's run: everything main does, with its inputs passed in so tests can call it.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error

// Main is a service's main. `<binary> vars` prints, as JSON, the variables the service's config
// reads (for deployment checks); otherwise it runs until SIGINT or SIGTERM and exits 1 with the
// error printed if run fails.
func Main(service string, vars func() []envconf.Var, run RunFunc) {
	if len(os.Args) > 1 && os.Args[1] == "vars" {
		if err := json.NewEncoder(os.Stdout).Encode(vars()); err != nil {
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(1)
	}
}
