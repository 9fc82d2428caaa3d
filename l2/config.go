package l2

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Defaults for zero Config fields.
const (
	DefaultAddr          = "localhost:6379"
	DefaultSocketTimeout = time.Second
	DefaultDialTimeout   = 2 * time.Second
	DefaultMaxValueSize  = 4 << 20 // 4 MiB
	DefaultScanCount     = 1000
)

// Settings that turn a Config feature off, for the fields whose zero value
// means their default. Any negative value does the same; these name it.
const (
	// NoRetries, as Config.MaxRetries, sends each command once (go-redis's
	// MaxRetries -1).
	NoRetries = -1
	// NoValueSizeLimit, as Config.MaxValueSize, lifts the bound on encoded
	// values.
	NoValueSizeLimit = -1
)

// Config describes how a Store reaches Redis. It is the Go counterpart of the
// seed's RedisConfig; every zero field has a documented default, and the zero
// Config works against a Redis on localhost:6379.
//
// Printing a Config in any form (%v, %+v, %#v, %s, JSON) redacts Password.
//
// The seed's decode_responses has no counterpart: values are always []byte and
// the caller's codec decides what they mean.
type Config struct {
	// Addrs lists host:port addresses. One address means a standalone server;
	// several mean a Redis Cluster (seed nodes); with MasterName they are
	// Sentinel addresses. If empty, DefaultAddr is used.
	Addrs []string
	// MasterName selects Sentinel mode: the name of the master set.
	MasterName string
	// ForceCluster uses a cluster client even for a single address.
	ForceCluster bool
	// DB is the database number (standalone and Sentinel only).
	DB int
	// Username is the ACL user name. If empty, the default user.
	Username string
	// Password authenticates (with Username when set). Never printed.
	Password string
	// KeyPrefix is prepended to every key this Store reads or writes, and
	// bounds Keys and Clear. Clear refuses to run with an empty prefix.
	KeyPrefix string

	// SocketTimeout is the read and write timeout of one command (the seed's
	// socket_timeout). Context deadlines are honoured too (go-redis
	// ContextTimeoutEnabled). If zero, DefaultSocketTimeout. Negative: no
	// socket timeout; only the ctx bounds a command.
	SocketTimeout time.Duration
	// DialTimeout bounds establishing a connection. If zero, DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxRetries is the number of retries of a failed command, at most 1 so
	// that a dead server fails fast (larger values count as 1). If zero, 1.
	// NoRetries (or any negative value): no retry.
	MaxRetries int
	// PoolSize is the maximum number of connections per node (the seed's
	// max_connections). If zero, go-redis's default (10 per GOMAXPROCS).
	PoolSize int
	// TLS enables TLS with the given settings when non-nil.
	TLS *tls.Config

	// MaxValueSize bounds an encoded value, on write and on read. If zero,
	// DefaultMaxValueSize. NoValueSizeLimit (or any negative value): no
	// bound.
	MaxValueSize int
	// ScanCount is the COUNT hint of SCAN in Keys and Clear. If zero,
	// DefaultScanCount.
	ScanCount int

	// ApplyServerConfig opts in to changing the server's configuration with
	// CONFIG SET at Open/New: MaxMemory and EvictionPolicy are applied only
	// when it is true, because they change a server other applications may
	// share. A refusal (managed Redis often disables CONFIG) is returned as an
	// error wrapping ErrOperation.
	ApplyServerConfig bool
	// MaxMemory is the server's maxmemory, e.g. "256mb" (seed: max_memory).
	MaxMemory string
	// EvictionPolicy is the server's maxmemory-policy, e.g. "allkeys-lru"
	// (seed: eviction_policy).
	EvictionPolicy string
}

func (c Config) withDefaults() Config {
	if len(c.Addrs) == 0 {
		c.Addrs = []string{DefaultAddr}
	}
	if c.SocketTimeout == 0 {
		c.SocketTimeout = DefaultSocketTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	switch {
	case c.MaxRetries == 0 || c.MaxRetries > 1:
		c.MaxRetries = 1
	case c.MaxRetries < 0:
		c.MaxRetries = NoRetries
	}
	if c.MaxValueSize == 0 {
		c.MaxValueSize = DefaultMaxValueSize
	}
	if c.ScanCount <= 0 {
		c.ScanCount = DefaultScanCount
	}
	return c
}

const redacted = "[REDACTED]"

// redactedCopy is Config with the password masked; a distinct type so fmt
// does not call Config's methods again.
type redactedCopy Config

func (c Config) redact() redactedCopy {
	r := redactedCopy(c)
	if r.Password != "" {
		r.Password = redacted
	}
	return r
}

// String implements fmt.Stringer without the password.
func (c Config) String() string { return fmt.Sprintf("%+v", c.redact()) }

// GoString implements fmt.GoStringer without the password.
func (c Config) GoString() string {
	return strings.Replace(fmt.Sprintf("%#v", c.redact()), "l2.redactedCopy", "l2.Config", 1)
}

// Format implements fmt.Formatter so every verb and flag redacts the password.
func (c Config) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		fmt.Fprint(f, c.GoString())
	case verb == 'v' && f.Flag('+'), verb == 's', verb == 'q':
		fmt.Fprintf(f, "%+v", c.redact())
	default:
		fmt.Fprintf(f, "%v", c.redact())
	}
}

// MarshalJSON encodes the Config with the password redacted.
func (c Config) MarshalJSON() ([]byte, error) {
	r := c.redact()
	type alias redactedCopy // no methods
	return json.Marshal(struct {
		alias
		TLS bool `json:"TLS"`
	}{alias(r), r.TLS != nil})
}
