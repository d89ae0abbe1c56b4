// Package config loads the billing manager's configuration from the environment.
package config

import (
	"voipbin/pkg/envconf"
)

// Config is everything the billing manager reads from its environment.
type Config struct {
	DatabaseDSN     string
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string
}

// Load reads and validates the configuration, reporting every problem in one error.
func Load(getenv func(string) string) (Config, error) {
	r := envconf.New(getenv)
	c := Config{
		DatabaseDSN:     r.MySQLDSN("DATABASE_DSN", "", true),
		RabbitMQAddress: r.URL("RABBITMQ_ADDRESS", "", true, "amqp", "amqps"),
		RedisAddress:    r.HostPort("REDIS_ADDRESS", "", true),
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9102", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),
	}
	return c, r.Err()
}
