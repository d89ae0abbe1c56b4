// Package envconf reads a service's configuration from environment variables and collects every
// problem it finds, so a service reports all of them in one error at start-up instead of failing
// on the first. Each service's internal/config.Load uses it with its own variable names.
package envconf

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Reader reads typed variables through getenv and remembers every problem.
type Reader struct {
	getenv func(string) string
	errs   []error
	vars   []Var
}

// Var describes one variable a service reads, for documentation and deployment checks.
type Var struct {
	Name     string `json:"name"`
	Required bool   `json:"required"`
	Default  string `json:"default,omitempty"`
}

// Vars lists every variable read so far, in order.
func (r *Reader) Vars() []Var { return r.vars }

// New makes a Reader over getenv (os.Getenv in main, a map in tests).
func New(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// Err is every problem found so far joined into one error, or nil.
func (r *Reader) Err() error {
	if len(r.errs) == 0 {
		return nil
	}
	msgs := make([]string, len(r.errs))
	for i, e := range r.errs {
		msgs[i] = e.Error()
	}
	return errors.New("invalid configuration: " + strings.Join(msgs, "; "))
}

// Fail records a problem found by the caller's own validation.
func (r *Reader) Fail(name, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

func (r *Reader) raw(name, def string, required bool) (string, bool) {
	r.vars = append(r.vars, Var{Name: name, Required: required, Default: def})
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		if required {
			r.Fail(name, "is required")
			return "", false
		}
		return def, def != ""
	}
	return v, true
}

// String reads a string; required means an empty value is a problem.
func (r *Reader) String(name, def string, required bool) string {
	v, _ := r.raw(name, def, required)
	return v
}

// Int reads an integer within [min, max].
func (r *Reader) Int(name string, def, min, max int) int {
	v, ok := r.raw(name, strconv.Itoa(def), false)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.Fail(name, "%q is not an integer", v)
		return def
	}
	if n < min || n > max {
		r.Fail(name, "%d is outside [%d, %d]", n, min, max)
	}
	return n
}

// Int64 reads a 64-bit integer within [min, max].
func (r *Reader) Int64(name string, def, min, max int64) int64 {
	v, ok := r.raw(name, strconv.FormatInt(def, 10), false)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		r.Fail(name, "%q is not an integer", v)
		return def
	}
	if n < min || n > max {
		r.Fail(name, "%d is outside [%d, %d]", n, min, max)
	}
	return n
}

// Duration reads a Go duration ("3s", "1h") that must be positive.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v, ok := r.raw(name, def.String(), false)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.Fail(name, "%q is not a duration like 30s or 1h", v)
		return def
	}
	if d <= 0 {
		r.Fail(name, "must be positive, got %s", v)
	}
	return d
}

// Bool reads true/false/1/0.
func (r *Reader) Bool(name string, def bool) bool {
	v, ok := r.raw(name, strconv.FormatBool(def), false)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.Fail(name, "%q is not a boolean", v)
		return def
	}
	return b
}

// List reads a comma-separated list, trimming blanks.
func (r *Reader) List(name, def string) []string {
	v, _ := r.raw(name, def, false)
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// HostPort reads a listen or dial address "host:port".
func (r *Reader) HostPort(name, def string, required bool) string {
	v, ok := r.raw(name, def, required)
	if !ok {
		return v
	}
	if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
		r.Fail(name, "%q is not host:port", v)
	}
	return v
}

// URL reads an absolute URL whose scheme is one of schemes. The value is never echoed in the
// problem, since URLs may carry passwords.
func (r *Reader) URL(name, def string, required bool, schemes ...string) string {
	v, ok := r.raw(name, def, required)
	if !ok {
		return v
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		r.Fail(name, "is not an absolute URL")
		return v
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return v
		}
	}
	r.Fail(name, "scheme must be one of %s", strings.Join(schemes, ", "))
	return v
}

// MySQLDSN reads a go-sql-driver DSN and returns it with the options every service relies on:
// parseTime, UTC, and interpolateParams (one round trip per query). The value is never echoed.
func (r *Reader) MySQLDSN(name, def string, required bool) string {
	v, ok := r.raw(name, def, required)
	if !ok {
		return v
	}
	cfg, err := mysql.ParseDSN(v)
	if err != nil {
		r.Fail(name, "is not a MySQL DSN like user:pass@tcp(host:3306)/db")
		return v
	}
	if cfg.DBName == "" {
		r.Fail(name, "names no database")
	}
	cfg.ParseTime = true
	cfg.InterpolateParams = true
	cfg.Loc = time.UTC
	return cfg.FormatDSN()
}
