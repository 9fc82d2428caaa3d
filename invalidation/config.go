package invalidation

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Defaults for zero Config fields.
const (
	DefaultNamespace           = "nearcache"
	DefaultAntiEntropyInterval = time.Second
	DefaultPingInterval        = time.Second
	DefaultRouteCheckInterval  = 250 * time.Millisecond
	DefaultBufferSize          = 16384
)

// Config configures a [Bus]. Every zero field means its documented default.
type Config struct {
	// Namespace prefixes the channel and every key the bus uses. It must be
	// the namespace l2 uses, so that l2's scripts and the bus agree.
	// If empty, DefaultNamespace is used.
	//
	// A namespace must not be another one used on the same Redis followed
	// by ':' and more ("a" and "a:b"): the Redis key of "a" with key "b:c"
	// is then that of "a:b" with key "c", but their invalidation channels
	// differ, so neither hears the other's writes. Package tiered refuses
	// ':' in namespaces; when using this package directly, choose the
	// namespaces accordingly.
	Namespace string

	// InstanceID identifies this bus in the messages it publishes; messages
	// carrying it are recognised as its own. If zero, a random 128-bit id is
	// drawn. Two buses must never share an id.
	InstanceID InstanceID

	// AntiEntropyInterval is how often the bus reads the tracked sequence
	// keys, the namespace epoch key and the server run ids to find losses
	// that the stream itself cannot show. If zero, DefaultAntiEntropyInterval
	// (1s). Negative: anti-entropy is off (not recommended). A round that
	// fails keeps the stream unhealthy and is retried sooner (after 10 ms,
	// doubling up to 1 s), not a whole interval later.
	AntiEntropyInterval time.Duration

	// PingInterval is how long the subscription may stay silent before the
	// bus pings it; a ping unanswered for another PingInterval marks the
	// stream unhealthy (a stall), and after four intervals of silence the
	// connection is replaced. If zero or negative, DefaultPingInterval (1s) is used.
	PingInterval time.Duration

	// RouteCheckInterval is how often the bus asks the server behind the
	// client's command connections (PUBSUB NUMSUB) whether its subscription
	// is on that same server, and moves the subscription there when it is
	// not: after a Sentinel failover, go-redis moves the commands at once
	// but leaves the subscription on the old master. Only for a
	// *redis.Client (plain or from NewFailoverClient); Redis Cluster
	// follows its masters otherwise. If zero, DefaultRouteCheckInterval
	// (250ms). Negative: the check is off (the route channel is not
	// subscribed) and only anti-entropy's run id check moves the
	// subscription.
	//
	// The check subscribes a route channel, "NS:inv:route:<instance id>",
	// beside the invalidation channel: an ACL user needs &NS:inv:route:*
	// (besides &NS:inv) for it. Without that grant the invalidation
	// subscription is unaffected, the check turns itself off and one Warn
	// names the grant; a failover is then followed about one
	// AntiEntropyInterval later.
	RouteCheckInterval time.Duration

	// DisableShardedPubSub makes the bus publish on Redis Cluster with
	// PUBLISH on the namespace channel, as releases before sharded pub/sub
	// did: every message then crosses the cluster bus to every node. By
	// default a bus on a cluster client publishes each partition's
	// messages with SPUBLISH on the partition's shard channel, which stays
	// on the master that owns the slot (its script falls back to PUBLISH
	// where Redis refuses SPUBLISH: a server before 7.0, an ACL without the
	// shard channels; and where SPUBLISH reached no subscriber, as during
	// a slot's migration). Subscriptions carry both kinds whatever this says,
	// so buses that differ in it hear each other. A build from before
	// sharded pub/sub hears only plain messages, and its anti-entropy reads
	// only the partitions it has heard of, so it would keep copies that
	// sharded messages invalidated until they expire: set this on every
	// instance while such builds share the namespace (during the upgrade),
	// then turn it off. Ignored off Redis Cluster.
	DisableShardedPubSub bool

	// BufferSize is the capacity of the queue between the connection reader
	// and the worker that calls the Handler. A full queue drops the message
	// and invalidates everything. If zero or negative, DefaultBufferSize is used.
	BufferSize int

	// HMACKey, when set, signs every published body with HMAC-SHA256 and
	// makes the bus reject (and count) every received message without a
	// valid signature. Keep it out of Redis. It is never printed.
	HMACKey []byte

	// Logger receives the bus's events, under the name "invalidation". If
	// nil, zap.NewNop() is used.
	//
	// Once per event: a Warn when the stream is interrupted (a disconnect
	// or a stall), when the namespace epoch key or a server's run id
	// changes, when the subscription is moved to the server the commands go
	// to, when Redis Cluster's masters change, and when Redis refuses the
	// route channel; an Info when a subscription is confirmed again, and for
	// a sequence gap, a sequence key reset or gone backwards, and a lost
	// tail. One Warn when the route check starts failing (none while it
	// keeps failing). Rejected unsigned messages are logged at Debug.
	//
	// Once per episode: failed anti-entropy rounds, messages that do not
	// decode or are oversized (without an HMAC key; each invalidates
	// everything), and on Redis Cluster failed listings of the masters. The
	// first failure logs a Warn with its error ("anti-entropy rounds
	// failing", "undecodable invalidation messages; invalidating
	// everything", "cannot list the cluster's masters"); later ones are only
	// counted; once the larger of 10s and three AntiEntropyIntervals passes
	// without another, or at Close, an Info with the same message followed
	// by ": episode ended" gives the count, the time from the first failure
	// to the last, and the last error.
	Logger *zap.Logger

	// testDrop, when set (tests only, via export_test.go), is asked about
	// every decoded message before it is applied; true drops it as if the
	// network had lost it.
	testDrop func(partition int, seq uint64) bool
	// testEpisodeQuiet, when positive (tests only), replaces the quiet
	// period of the bus's (and its transport's) episodes.
	testEpisodeQuiet time.Duration
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.AntiEntropyInterval == 0 {
		c.AntiEntropyInterval = DefaultAntiEntropyInterval
	}
	if c.RouteCheckInterval == 0 {
		c.RouteCheckInterval = DefaultRouteCheckInterval
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.BufferSize <= 0 {
		c.BufferSize = DefaultBufferSize
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// redacted is Config without its secret, for printing.
type redacted struct {
	Namespace           string
	InstanceID          string
	AntiEntropyInterval time.Duration
	PingInterval        time.Duration
	RouteCheckInterval  time.Duration
	BufferSize          int
	HMACKey             string
}

func (c Config) redacted() redacted {
	r := redacted{
		Namespace:           c.Namespace,
		InstanceID:          hex.EncodeToString(c.InstanceID[:]),
		AntiEntropyInterval: c.AntiEntropyInterval,
		PingInterval:        c.PingInterval,
		RouteCheckInterval:  c.RouteCheckInterval,
		BufferSize:          c.BufferSize,
	}
	if c.HMACKey != nil {
		r.HMACKey = "REDACTED"
	}
	return r
}

// String prints the configuration with the HMAC key redacted.
func (c Config) String() string { return fmt.Sprintf("%+v", c.redacted()) }

// GoString is String, for %#v.
func (c Config) GoString() string { return "invalidation.Config" + c.String() }

// Format makes every fmt verb print the redacted form.
func (c Config) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, c.GoString())
		return
	}
	fmt.Fprint(f, c.String())
}

// MarshalJSON encodes the configuration with the HMAC key redacted.
func (c Config) MarshalJSON() ([]byte, error) { return json.Marshal(c.redacted()) }
