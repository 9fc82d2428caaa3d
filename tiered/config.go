package tiered

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults for zero Config fields.
const (
	DefaultNamespace           = "nearcache"
	DefaultTTL                 = 5 * time.Minute
	DefaultMaxL1TTL            = 30 * time.Second
	DefaultL1TTLJitter         = 0.1
	DefaultL1MaxEntries        = 100_000
	DefaultRedisTimeout        = 250 * time.Millisecond
	DefaultLoadTimeout         = 10 * time.Second
	DefaultUnhealthyL1TTL      = time.Second
	DefaultFailSafeRetryAfter  = time.Second
	DefaultBreakerFailures     = 5
	DefaultBreakerCooldown     = 2 * time.Second
	DefaultStartTimeout        = 2 * time.Second
	DefaultAntiEntropyInterval = time.Second
	DefaultMaxValueSize        = 4 << 20 // 4 MiB
)

// Settings that turn a Config feature off, for the fields whose zero value
// means their default. Any negative value does the same; these name it.
const (
	// NoJitter, as Config.L1TTLJitter, turns jitter off: every local copy
	// gets exactly the TTL its bounds allow (MaxL1TTL, WithL1TTL, the
	// value's TTL or remaining freshness in Redis, and so on), unshortened.
	NoJitter = -1.0
	// NoBreaker, as Config.BreakerFailures, disables the circuit breaker:
	// every operation goes to Redis, however many failed before it.
	NoBreaker = -1
	// NoL1WhileUnhealthy, as Config.UnhealthyL1TTL, fills nothing into L1
	// while the invalidation stream is unhealthy, so that reads go to Redis
	// until it recovers.
	NoL1WhileUnhealthy time.Duration = -1
	// NoValueSizeLimit, as Config.MaxValueSize, lifts the bound on encoded
	// values.
	NoValueSizeLimit = -1
)

// Config configures a Cache. Every zero field has the documented default.
// New refuses a negative duration unless its field says what negative means.
type Config[V any] struct {
	// Redis is the shared tier and the invalidation transport. If nil, the
	// Cache runs L1-only, for one process: loaders fill L1 and writes act on
	// L1 alone. The Cache never closes this client.
	//
	// Build it with ContextTimeoutEnabled: go-redis then applies the
	// deadline of each call's ctx (RedisTimeout) to the connection. Without
	// it, only the client's own ReadTimeout and WriteTimeout bound a call,
	// waiters still leave after LoadTimeout, and no caller runs a flight on
	// its own goroutine (see the package documentation).
	Redis redis.UniversalClient
	// Namespace prefixes every Redis key ("NS:key") and names the
	// invalidation channel. Instances that share data must share it, and
	// different data sets must not. If empty, DefaultNamespace.
	//
	// It may not contain ':' (the separator: namespace "a" with key "b:c"
	// and namespace "a:b" with key "c" would be the same Redis key, heard on
	// different channels), '{' or '}' (a hash tag would put every key of
	// the namespace in one Redis Cluster slot), spaces or control
	// characters, and is at most MaxNamespaceLen bytes. Keys may contain
	// anything.
	Namespace string

	// TTL is how long a value stays fresh in Redis. If zero, DefaultTTL.
	TTL time.Duration
	// MaxL1TTL bounds how long an instance keeps a local copy: the last line
	// of defence should every invalidation detector fail. A local copy never
	// outlives the value's remaining Redis TTL either. If zero,
	// DefaultMaxL1TTL.
	MaxL1TTL time.Duration
	// L1TTLJitter shortens each local TTL by a random fraction of it, up to
	// this value (which must be below 1), so that copies filled together do
	// not expire together. If zero, DefaultL1TTLJitter. NoJitter (or any
	// negative value): no jitter, each local TTL is exactly its bound.
	L1TTLJitter float64
	// L1MaxEntries is the local capacity in entries. If zero (and
	// L1MaxBytes is zero), DefaultL1MaxEntries.
	L1MaxEntries int64
	// L1MaxBytes, with L1Cost, sizes the local tier in bytes instead.
	L1MaxBytes int64
	// L1Cost returns the size of a value in bytes; required with L1MaxBytes.
	// A tagged copy costs its tags' bytes too (each name, plus 8).
	L1Cost func(V) int64

	// Codec turns values into bytes for Redis. If nil: raw bytes for
	// []byte, UTF-8 for string, JSON otherwise. Values from a shared Redis
	// are untrusted input: never use encoding/gob here.
	Codec Codec[V]

	// NegativeTTL caches a loader's ErrNotFound for this long (in both
	// tiers). If zero, not-found results are not cached.
	NegativeTTL time.Duration
	// FailSafeMaxStale keeps values in Redis this long past TTL; when the
	// loader fails and Redis still holds such a stale value, it is served
	// (and counted) instead of the error. The stale value lives in Redis:
	// while Redis is unreachable, nothing stale is served. If zero,
	// fail-safe is off.
	FailSafeMaxStale time.Duration
	// FailSafeRetryAfter is how long a stale value served by fail-safe is
	// kept locally before the loader is tried again, and how long a
	// refresh-ahead that failed or was left to another instance waits
	// before it is tried again. If zero, DefaultFailSafeRetryAfter.
	FailSafeRetryAfter time.Duration
	// SoftTimeout, with FailSafeMaxStale, bounds how long callers wait for
	// a slow loader when Redis holds a stale value of the key (past TTL,
	// within FailSafeMaxStale). Once the loader has run this long, every
	// caller of its flight gets the stale value, and so does every caller
	// that joins the flight later, at once, until FailSafeMaxStale has
	// passed for it (a caller that comes after then starts a load of its
	// own); the load goes on detached (bounded by LoadTimeout) and, when
	// it returns, writes its value back to Redis and fills L1 as any load
	// does, unless a write or delete of the key overtook it. Each such
	// serve is counted (one per caller and key) in
	// Stats.Loads.StaleServedSoftTimeout and reported to
	// Observer.StaleServed with StaleEvent.SoftTimeout set; it is not
	// logged, and the stale value is not kept in L1. A loader that fails
	// before the soft timeout is answered by fail-safe as usual; one that
	// fails after it changes nothing for its callers, who have the stale
	// value already. Without a stale value callers wait for the loader. If
	// zero, off; it has no effect without FailSafeMaxStale, nor at or above
	// LoadTimeout.
	SoftTimeout time.Duration

	// RefreshAhead, a fraction of the TTL between 0 and 1, turns
	// refresh-ahead on: a value written with TTL t (by a load or a Set) is
	// due for refresh RefreshAhead×t after it was written. A GetOrLoad or
	// GetManyOrLoad that finds a due value in L1 returns it at once and
	// starts one background refresh of the key, coalesced with every other
	// reader and any load of the key running in this process. The refresh
	// reads Redis first and takes a value another instance has already
	// refreshed; only when Redis's value is due too does it call the
	// loader, and then only in the one instance that takes the key's claim
	// in Redis (the others keep serving their value). A refresh that fails
	// or is left to another instance is tried again after
	// FailSafeRetryAfter; meanwhile the current value is served until it
	// expires. The refreshed value is written back like any loaded value
	// (compare-and-set, invalidation), so a refresh that races a write
	// never brings the old value back. Refresh never extends a value's
	// life. Get and GetMany, which have no loader, never refresh; a
	// GetManyOrLoad refreshes its due keys one by one (a BatchLoader call
	// of one key each). A refresh whose loader reports the key not found,
	// where the not-found is not cached, deletes the value (a tombstone,
	// compare-and-set, and its invalidation), as Delete would.
	// Zero: off. With Redis ACLs, the Cache's user needs the claim keys
	// (~*NS:claim:*).
	RefreshAhead float64

	// LoadClaim turns fleet-wide stampede protection on, and is the lease
	// of a load's claim. Without it, instances that miss one key in Redis
	// at once each call their loader. With it, the first to miss takes the
	// key's claim in Redis (SET NX PX LoadClaim, renewed every third of it
	// while its loader runs, removed when its value is written back), and
	// the others wait for that value instead of calling their loader: the
	// owner's write-back announces the key, which wakes them, and they poll
	// Redis meanwhile as a fallback. A claim whose owner died expires after
	// LoadClaim, and the next waiter takes it over; a refresh-ahead (see
	// RefreshAhead) takes the same claim with the same lease. A waiter that has
	// waited LoadClaimWait loads by itself. The write-back keeps its rules
	// (compare-and-set against what was read, tombstones), so a write
	// racing a claimed load wins as it does without claims. A
	// GetManyOrLoad claims its keys together: it loads those it claimed in
	// one loader call, waits for the others, and loads the leftovers in a
	// second call. Zero: off.
	// With Redis ACLs, the Cache's user needs the claim keys
	// (~*NS:claim:*).
	LoadClaim time.Duration
	// LoadClaimWait bounds how long an instance waits for another
	// instance's claimed load before it calls its own loader. If zero,
	// LoadTimeout/2; at most LoadTimeout (the bound of every load).
	LoadClaimWait time.Duration

	// WriteBatchWindow lets writes that overlap share one invalidation
	// message: Redis delivers every message to every subscribed instance,
	// so under a high write rate a fleet's deliveries fall by the batch
	// size. A Set, SetMany, Delete or DeleteMany that finds no other write
	// of its kind and partition in flight runs at once, alone; one that
	// arrives while such a write is in flight queues, and the queue goes
	// as one script, writing every queued value (or tombstone) and
	// publishing one message that names every key, when WriteBatchWindow
	// has passed since the first queued (or 512 keys are queued). A write
	// is still acknowledged only once the script that wrote it and
	// published its message has returned; a queued write waits at most
	// WriteBatchWindow before it is sent, and one whose ctx ends first
	// returns its ctx's error (in doubt, as any write cut short). Versioned
	// writes (WithVersion) and writes over several partitions (Redis
	// Cluster slots) are not batched; on a Cluster only writes to keys of
	// one slot (a hash tag) share a message. Zero: off. At most 10ms.
	WriteBatchWindow time.Duration

	// RedisTimeout bounds each Redis operation. If zero,
	// DefaultRedisTimeout. Negative: the Cache sets no bound of its own, so
	// an operation is bounded by its ctx (the caller's for a write,
	// LoadTimeout for a load's) and by the client's own timeouts. On a ctx
	// that cannot end (context.Background) the bound is rounded up by at
	// most RedisTimeout/16 and 10 ms, so that operations begun together
	// share one timer.
	RedisTimeout time.Duration
	// LoadTimeout bounds a shared load (L2 read, loader, L2 write), which
	// runs detached from any single caller's context. If zero,
	// DefaultLoadTimeout.
	LoadTimeout time.Duration
	// StartTimeout bounds how long New waits for the invalidation
	// subscription to be confirmed. If Redis is down, New still succeeds:
	// the Cache serves from L1 and loaders, keeps local copies short, and
	// recovers when Redis returns. If zero, DefaultStartTimeout. Negative:
	// New does not wait (the routing check still runs, bounded by
	// DefaultStartTimeout).
	StartTimeout time.Duration

	// BreakerFailures is the number of consecutive Redis connection failures
	// that opens the circuit breaker; while open, reads skip Redis. If zero,
	// DefaultBreakerFailures. NoBreaker (or any negative value): no breaker.
	BreakerFailures int
	// BreakerCooldown is how long the breaker stays open before one probe
	// is let through. If zero, DefaultBreakerCooldown.
	BreakerCooldown time.Duration

	// UnhealthyL1TTL caps local copies filled while the invalidation stream
	// is unhealthy (disconnected, or a loss not yet repaired). If zero,
	// DefaultUnhealthyL1TTL. NoL1WhileUnhealthy (or any negative value):
	// nothing is filled into L1 while the stream is unhealthy.
	UnhealthyL1TTL time.Duration
	// AntiEntropyInterval is how often the invalidation bus compares
	// Redis's sequence numbers, epoch key and run ids with what it received.
	// If zero, DefaultAntiEntropyInterval. Negative: anti-entropy is off (not
	// recommended): a loss the stream cannot show by itself, such as its
	// last messages or a Redis restart, then lasts until the local copies
	// expire (MaxL1TTL).
	AntiEntropyInterval time.Duration
	// DisableShardedPubSub makes writes on Redis Cluster publish their
	// invalidations with PUBLISH on NS:inv, which crosses the cluster bus
	// to every node, instead of SPUBLISH on their slot's shard channel,
	// which stays on the slot's master (Redis 7; the default). Caches hear
	// both whatever it says. Set it on every instance while instances of a
	// release from before sharded pub/sub share the namespace (during the
	// upgrade), then turn it off: they hear plain messages only, and their
	// anti-entropy reads only partitions they have heard of, so copies a
	// sharded message invalidated would stay until they expire. Ignored off
	// Redis Cluster.
	DisableShardedPubSub bool
	// HMACKey, when set, signs invalidation messages and rejects unsigned
	// ones. All instances of a namespace must share it. Never printed.
	HMACKey []byte
	// MaxValueSize bounds an encoded value in Redis. A larger value passed
	// to Set or SetMany fails the call (l2.ErrTooLarge) and nothing is
	// written; a larger loaded value is returned and kept in this
	// instance's L1 only, left out of the write-back without holding back
	// the rest of its batch. If zero, DefaultMaxValueSize. NoValueSizeLimit
	// (or any negative value): no bound.
	MaxValueSize int

	// Logger receives degradations and faults; the L1-hit path never logs.
	// If nil, zap.NewNop().
	//
	// Once per event: a Warn when the circuit breaker opens and when it
	// closes again (a failed probe that reopens it logs nothing), and when
	// New cannot confirm the invalidation subscription; an Error, with
	// the stack, when a loader panics.
	//
	// Once per episode, so that an outage does not log at request rate:
	// Redis writes that fail (one per call of Set, SetMany, Delete,
	// DeleteMany and Clear, and per write-back of loaded values; skips by
	// the open breaker included), stale values served by fail-safe because
	// the loader failed (one per value; those served by SoftTimeout are
	// not logged), values read from Redis that are corrupt or do not
	// decode (one per value), and loaded values left out of Redis because
	// the Codec cannot encode them or they exceed MaxValueSize (one per
	// value), refresh-ahead refreshes that fail (the loader, Redis, or a
	// claim refused, for instance by an ACL without the claim keys; one
	// per refresh), load claims (LoadClaim) that Redis refuses or does not
	// answer (one per claim; the load goes on without it), and panics of Observer callbacks (one per panic; the
	// error's "errorVerbose" has the stack). The first failure of a kind
	// logs a
	// Warn with its key and error ("nearcache: redis writes failing",
	// "nearcache: loader failing; serving stale values (fail-safe)",
	// "nearcache: unreadable values in Redis; reloading them", "nearcache:
	// loaded values not stored in Redis (kept in this instance's L1 only)",
	// "nearcache: refresh-ahead failing; serving current values until they
	// expire", "nearcache: load claims failing; loading without them",
	// "nearcache: Observer callback panicked (recovered; its event is
	// lost)"); later ones are only counted; once
	// 10s pass without another, or at Close, an Info with the same message
	// followed by ": episode ended" gives the count, the time from the
	// first failure to the last, and the last key and error.
	//
	// The invalidation bus logs to it under the name "invalidation" (see
	// invalidation.Config.Logger); its failed anti-entropy rounds are
	// episodes too.
	Logger *zap.Logger

	// Observer, if set, hears loads, writes, invalidations, repairs,
	// breaker changes and stale values served, off the L1-hit path (see
	// Observer; JoinObservers combines several).
	Observer *Observer
}

func (c Config[V]) withDefaults() (Config[V], error) {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.TTL, DefaultTTL)
	def(&c.MaxL1TTL, DefaultMaxL1TTL)
	def(&c.RedisTimeout, DefaultRedisTimeout)
	def(&c.LoadTimeout, DefaultLoadTimeout)
	def(&c.StartTimeout, DefaultStartTimeout)
	def(&c.LoadClaimWait, c.LoadTimeout/2)
	c.LoadClaimWait = min(c.LoadClaimWait, c.LoadTimeout)
	def(&c.BreakerCooldown, DefaultBreakerCooldown)
	def(&c.UnhealthyL1TTL, DefaultUnhealthyL1TTL)
	def(&c.FailSafeRetryAfter, DefaultFailSafeRetryAfter)
	def(&c.AntiEntropyInterval, DefaultAntiEntropyInterval)
	if c.L1TTLJitter == 0 {
		c.L1TTLJitter = DefaultL1TTLJitter
	}
	if c.L1TTLJitter < 0 {
		c.L1TTLJitter = 0
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = DefaultBreakerFailures
	}
	if c.MaxValueSize == 0 {
		c.MaxValueSize = DefaultMaxValueSize
	}
	if c.L1MaxEntries == 0 && c.L1MaxBytes == 0 {
		c.L1MaxEntries = DefaultL1MaxEntries
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if err := checkNamespace(c.Namespace); err != nil {
		return c, err
	}
	switch {
	case c.TTL < 0:
		return c, fmt.Errorf("tiered: TTL %v is negative", c.TTL)
	case c.MaxL1TTL < 0:
		return c, fmt.Errorf("tiered: MaxL1TTL %v is negative", c.MaxL1TTL)
	case c.LoadTimeout < 0:
		return c, fmt.Errorf("tiered: LoadTimeout %v is negative", c.LoadTimeout)
	case c.NegativeTTL < 0:
		return c, fmt.Errorf("tiered: NegativeTTL %v is negative", c.NegativeTTL)
	case c.FailSafeMaxStale < 0:
		return c, fmt.Errorf("tiered: FailSafeMaxStale %v is negative", c.FailSafeMaxStale)
	case c.L1MaxEntries < 0:
		return c, fmt.Errorf("tiered: L1MaxEntries %d is negative", c.L1MaxEntries)
	case c.L1MaxBytes < 0:
		return c, fmt.Errorf("tiered: L1MaxBytes %d is negative", c.L1MaxBytes)
	case c.L1MaxBytes > 0 && c.L1Cost == nil:
		return c, fmt.Errorf("tiered: L1MaxBytes %d needs L1Cost (the size of a value)", c.L1MaxBytes)
	case c.FailSafeRetryAfter < 0:
		return c, fmt.Errorf("tiered: FailSafeRetryAfter %v is negative", c.FailSafeRetryAfter)
	case c.SoftTimeout < 0:
		return c, fmt.Errorf("tiered: SoftTimeout %v is negative", c.SoftTimeout)
	case c.BreakerCooldown < 0:
		return c, fmt.Errorf("tiered: BreakerCooldown %v is negative", c.BreakerCooldown)
	case c.LoadClaim < 0:
		return c, fmt.Errorf("tiered: LoadClaim %v is negative", c.LoadClaim)
	case c.LoadClaim > 0 && c.LoadClaim < 10*time.Millisecond:
		return c, fmt.Errorf("tiered: LoadClaim %v is below 10ms (the lease must outlast a Redis round trip)", c.LoadClaim)
	case c.LoadClaimWait < 0:
		return c, fmt.Errorf("tiered: LoadClaimWait %v is negative", c.LoadClaimWait)
	case c.WriteBatchWindow < 0 || c.WriteBatchWindow > maxWriteBatchWindow:
		return c, fmt.Errorf("tiered: WriteBatchWindow %v must be between 0 and %v (a queued write waits this long)", c.WriteBatchWindow, maxWriteBatchWindow)
	case !(c.RefreshAhead >= 0 && c.RefreshAhead < 1): // also NaN
		return c, fmt.Errorf("tiered: RefreshAhead %v must be at least 0 and below 1 (a fraction of the TTL)", c.RefreshAhead)
	case !(c.L1TTLJitter < 1): // also NaN
		return c, fmt.Errorf("tiered: L1TTLJitter %v must be below 1", c.L1TTLJitter)
	}
	return c, nil
}

// MaxNamespaceLen bounds Config.Namespace.
const MaxNamespaceLen = 128

// checkNamespace refuses namespaces that would make the mapping from
// (namespace, key) to Redis key ambiguous, or pin a namespace to one slot.
func checkNamespace(ns string) error {
	if len(ns) > MaxNamespaceLen {
		return fmt.Errorf("tiered: Namespace %q is %d bytes; at most %d", ns, len(ns), MaxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		switch b := ns[i]; {
		case b == ':':
			return fmt.Errorf("tiered: Namespace %q contains ':', the separator between namespace and key (namespace %q with key %q would be the same Redis key %q); use another character, such as '.' or '/'",
				ns, ns[:i], ns[i+1:]+":k", ns+":k")
		case b == '{' || b == '}':
			return fmt.Errorf("tiered: Namespace %q contains %q: a Redis Cluster hash tag would put every key of the namespace in one slot", ns, b)
		case b <= ' ' || b == 0x7f:
			return fmt.Errorf("tiered: Namespace %q contains a space or control character at byte %d", ns, i)
		}
	}
	return nil
}

// redactedConfig is Config without methods, for printing.
type redactedConfig[V any] Config[V]

func (c Config[V]) redacted() (redactedConfig[V], string) {
	r := redactedConfig[V](c)
	note := ""
	if len(r.HMACKey) > 0 {
		r.HMACKey = nil
		note = " (HMACKey: [REDACTED])"
	}
	return r, note
}

// String formats the Config with HMACKey redacted.
func (c Config[V]) String() string {
	r, note := c.redacted()
	return fmt.Sprintf("%+v", r) + note
}

// GoString formats the Config for %#v with HMACKey redacted.
func (c Config[V]) GoString() string {
	r, note := c.redacted()
	return fmt.Sprintf("%#v", r) + note
}

// Format implements fmt.Formatter so that no verb prints HMACKey.
func (c Config[V]) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, c.GoString())
		return
	}
	fmt.Fprint(f, c.String())
}

// MarshalJSON encodes the scalar settings with HMACKey redacted; the client,
// codec, cost function and logger are omitted.
func (c Config[V]) MarshalJSON() ([]byte, error) {
	hmacKey := ""
	if len(c.HMACKey) > 0 {
		hmacKey = "[REDACTED]"
	}
	return json.Marshal(struct {
		Namespace                                     string
		TTL, MaxL1TTL, RedisTimeout, LoadTimeout      time.Duration
		NegativeTTL, FailSafeMaxStale, UnhealthyL1TTL time.Duration
		FailSafeRetryAfter, SoftTimeout               time.Duration
		LoadClaim, LoadClaimWait, WriteBatchWindow    time.Duration
		AntiEntropyInterval, BreakerCooldown          time.Duration
		L1MaxEntries, L1MaxBytes                      int64
		BreakerFailures, MaxValueSize                 int
		L1TTLJitter, RefreshAhead                     float64
		HasRedis, DisableShardedPubSub                bool
		HMACKey                                       string `json:",omitempty"`
	}{
		c.Namespace, c.TTL, c.MaxL1TTL, c.RedisTimeout, c.LoadTimeout,
		c.NegativeTTL, c.FailSafeMaxStale, c.UnhealthyL1TTL,
		c.FailSafeRetryAfter, c.SoftTimeout,
		c.LoadClaim, c.LoadClaimWait, c.WriteBatchWindow,
		c.AntiEntropyInterval, c.BreakerCooldown,
		c.L1MaxEntries, c.L1MaxBytes, c.BreakerFailures, c.MaxValueSize, c.L1TTLJitter, c.RefreshAhead,
		c.Redis != nil, c.DisableShardedPubSub, hmacKey,
	})
}

// maxWriteBatchWindow bounds Config.WriteBatchWindow: a queued Set waits
// this long at most before it is sent.
const maxWriteBatchWindow = 10 * time.Millisecond
