// Command healthcheck is the container health probe of the voipbin images. The images are built
// FROM scratch (no shell, no curl), so docker and docker compose run this static binary instead:
//
//	healthcheck http://127.0.0.1:9100/readyz   exit 0 on a 2xx answer, 1 otherwise
//	healthcheck tcp://127.0.0.1:5080           exit 0 when a TCP connection opens, 1 otherwise
//
// It has no dependencies beyond the standard library so that it builds in a second without the
// module's other requirements, and it never follows redirects: a probe that lands elsewhere is
// a misconfiguration, not health.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "healthcheck: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w (usage: healthcheck [-timeout 3s] http://host:port/path | tcp://host:port)", err)
	}
	if fs.NArg() != 1 {
		return errors.New("usage: healthcheck [-timeout 3s] http://host:port/path | tcp://host:port")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return probe(ctx, fs.Arg(0), stdout)
}

// probe checks target once and reports the answer on stdout (docker keeps it in the health log).
func probe(ctx context.Context, target string, stdout io.Writer) error {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL like http://127.0.0.1:9100/readyz or tcp://127.0.0.1:5080", target)
	}
	switch u.Scheme {
	case "http":
		return probeHTTP(ctx, u.String(), stdout)
	case "tcp":
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "connected to %s\n", u.Host)
		return conn.Close()
	default:
		return fmt.Errorf("scheme %q: want http or tcp", u.Scheme)
	}
}

func probeHTTP(ctx context.Context, target string, stdout io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	fmt.Fprintf(stdout, "%s %s\n", resp.Status, body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return nil
}
