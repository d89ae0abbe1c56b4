// Package outage tells a dependency that is down from a request that is wrong. Classify is the one
// place that reads MySQL/MariaDB driver errors, Redis client errors and network errors and marks
// those that mean "the database, the cache or the network to them is down or overloaded" with
// apierr.ErrUnavailable, which every edge answers as 503 SERVICE_UNAVAILABLE: a client that retries
// only 503 then retries instead of dropping the request. Everything else is left as it is.
package outage

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/apierr"
)

// MySQL/MariaDB server error numbers that mean "try again": the server is overloaded, shutting
// down, read-only during a failover, or rolled the transaction back to break a lock cycle.
var retryableMySQL = map[uint16]string{
	1040: "too many connections",
	1203: "max user connections",
	1205: "lock wait timeout",
	1213: "deadlock",
	1053: "server shutdown in progress",
	1077: "normal shutdown",
	1152: "aborted connection",
	1290: "read-only (--read-only)",
	1836: "read-only mode",
	1927: "connection was killed",
	2002: "cannot connect (socket)",
	2003: "cannot connect (TCP)",
	2006: "server has gone away",
	2013: "lost connection during query",
	4031: "disconnected for inactivity",
}

// Redis replies that mean the server cannot answer now, whatever the command.
var retryableRedis = []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY"}

// Classify returns err marked with apierr.ErrUnavailable (and still wrapping err) when it means a
// dependency is unavailable; nil and every other error are returned unchanged. Typed errors
// (*apierr.Error) are left alone: whoever made them chose their status.
func Classify(err error) error {
	if err == nil || errors.Is(err, apierr.ErrUnavailable) {
		return err
	}
	if _, typed := apierr.As(err); typed {
		return err
	}
	if Unavailable(err) {
		return fmt.Errorf("%w: %w", apierr.ErrUnavailable, err)
	}
	return err
}

// Unavailable reports whether err means a dependency is down or overloaded (see Classify).
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, apierr.ErrUnavailable) {
		return true
	}
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		_, ok := retryableMySQL[my.Number]
		return ok
	}
	switch {
	// A pooled connection that died (server killed or restarted): the driver's and database/sql's words for it.
	// (A bare io.EOF is not taken: a truncated request body says the same.)
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, mysql.ErrInvalidConn), errors.Is(err, sql.ErrConnDone):
		return true
	case errors.Is(err, redis.ErrClosed), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	for _, prefix := range retryableRedis {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	// Any other failure to reach or talk to the server over the network (dial, i/o timeout).
	var op *net.OpError
	if errors.As(err, &op) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
