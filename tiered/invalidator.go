package tiered

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
)

// DefaultTombstoneTTL is how long the tombstones of Invalidator.Delete live
// unless InvalidatorConfig.TombstoneTTL says otherwise: three times the
// Caches' default LoadTimeout, so that a load which read the old row just
// before the change has long finished (or given up) before its write-back
// could land.
const DefaultTombstoneTTL = 3 * DefaultLoadTimeout

// InvalidatorConfig configures an Invalidator. Every zero field has the
// documented default.
type InvalidatorConfig struct {
	// Namespace is the namespace of the Caches to invalidate: their
	// Config.Namespace, with the same rules (see Config.Namespace). If
	// empty, DefaultNamespace.
	Namespace string
	// HMACKey signs the invalidation messages. It must be the Caches'
	// Config.HMACKey: Caches with a key drop unsigned messages and
	// messages signed with another key (counted in
	// Stats().Invalidation.AuthRejects), and their copies then stay until
	// a repair or their TTL. Never printed.
	HMACKey []byte
	// TombstoneTTL is how long Delete's tombstones live. A tombstone stops
	// a load that read the old row before the change from writing it back
	// into Redis, so it must outlive such a load: at least the Caches'
	// LoadTimeout plus twice their RedisTimeout (10.5 s with their
	// defaults). A longer one costs nothing but a few bytes in Redis: a
	// load that starts after the tombstone replaces it. If zero,
	// DefaultTombstoneTTL (30 s).
	TombstoneTTL time.Duration
	// DisableShardedPubSub: as Config.DisableShardedPubSub, for the
	// Invalidator's messages.
	DisableShardedPubSub bool
}

// String formats the InvalidatorConfig with HMACKey redacted.
func (c InvalidatorConfig) String() string {
	r, note := c.redacted()
	return fmt.Sprintf("%+v", r) + note
}

// GoString formats the InvalidatorConfig for %#v with HMACKey redacted.
func (c InvalidatorConfig) GoString() string {
	r, note := c.redacted()
	return fmt.Sprintf("%#v", r) + note
}

// Format implements fmt.Formatter so that no verb prints HMACKey.
func (c InvalidatorConfig) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, c.GoString())
		return
	}
	fmt.Fprint(f, c.String())
}

// MarshalJSON encodes the InvalidatorConfig with HMACKey redacted.
func (c InvalidatorConfig) MarshalJSON() ([]byte, error) {
	r, _ := c.redacted()
	hmacKey := ""
	if len(c.HMACKey) > 0 {
		hmacKey = "[REDACTED]"
	}
	return json.Marshal(struct {
		Namespace    string
		TombstoneTTL time.Duration
		HMACKey      string `json:",omitempty"`
	}{r.Namespace, r.TombstoneTTL, hmacKey})
}

// redactedInvalidatorConfig is InvalidatorConfig without methods, for printing.
type redactedInvalidatorConfig InvalidatorConfig

func (c InvalidatorConfig) redacted() (redactedInvalidatorConfig, string) {
	r := redactedInvalidatorConfig(c)
	note := ""
	if len(r.HMACKey) > 0 {
		r.HMACKey = nil
		note = " (HMACKey: [REDACTED])"
	}
	return r, note
}

// Invalidator publishes the invalidations of one namespace without a Cache,
// for a program that changes the data behind the Caches directly: another
// service, a migration, a change-data-capture follower. Every Cache of the
// namespace, on every instance, drops its local copies of the keys it
// names, exactly as for a Cache's own Delete.
//
//	inv, err := tiered.NewInvalidator(rdb, tiered.InvalidatorConfig{Namespace: "users"})
//	// after the database commit, or for each change a change stream reports:
//	err = inv.Delete(ctx, "42", "43")
//
// It holds no subscription and starts no goroutine; it needs only the Redis
// client (standalone, Sentinel or Cluster: the one the Caches use, or any
// client of the same Redis). Its messages are sequenced like the Caches'
// own, so a lost one is detected and repaired the same way.
//
// The wire contract it follows (key and channel names, the value
// envelope, the message body, the Lua scripts) is written out for programs
// in other languages in docs/WIRE.md of the repository.
//
// An Invalidator is safe for concurrent use.
type Invalidator struct {
	store *l2.Store
	bus   *invalidation.Bus
	tomb  time.Duration

	closed atomic.Bool // set by Close
}

// NewInvalidator returns an Invalidator for the namespace in cfg that
// publishes through client (never closed by the Invalidator). It does no
// I/O. It refuses a nil client, a redis.Ring (its shards share no sequence
// keys and no channel), a namespace a Cache would refuse, and a negative
// TombstoneTTL.
func NewInvalidator(client redis.UniversalClient, cfg InvalidatorConfig) (*Invalidator, error) {
	if client == nil {
		return nil, errors.New("tiered: NewInvalidator needs a non-nil redis client")
	}
	if _, ok := client.(*redis.Ring); ok {
		return nil, errors.New("tiered: a redis.Ring is not supported: its shards share no sequence keys and no invalidation channel; use one server, Sentinel, or Redis Cluster")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if err := checkNamespace(cfg.Namespace); err != nil {
		return nil, err
	}
	switch {
	case cfg.TombstoneTTL < 0:
		return nil, fmt.Errorf("tiered: TombstoneTTL %v is negative", cfg.TombstoneTTL)
	case cfg.TombstoneTTL == 0:
		cfg.TombstoneTTL = DefaultTombstoneTTL
	}
	store, err := l2.New(client, l2.Config{KeyPrefix: wire.KeyPrefix(cfg.Namespace), MaxValueSize: l2.NoValueSizeLimit})
	if err != nil {
		return nil, fmt.Errorf("tiered: %w", err)
	}
	// The bus is never started: NotifyDelete and Publish need no
	// subscription, and an unstarted bus runs no goroutine. Its Handler is
	// never called.
	bus, err := invalidation.New(client, invalidation.Config{Namespace: cfg.Namespace, HMACKey: cfg.HMACKey, DisableShardedPubSub: cfg.DisableShardedPubSub}, ignoreAll{})
	if err != nil {
		return nil, fmt.Errorf("tiered: %w", err)
	}
	return &Invalidator{store: store, bus: bus, tomb: cfg.TombstoneTTL}, nil
}

// ignoreAll is the Handler of an Invalidator's bus, which never subscribes.
type ignoreAll struct{}

func (ignoreAll) InvalidateKeys([]string)          {}
func (ignoreAll) InvalidateAll(invalidation.Cause) {}

// Delete is for a program that changed the database: it replaces the keys'
// values in Redis with tombstones that live TombstoneTTL and publishes
// their invalidation, in one atomic script per partition (one on a
// standalone or Sentinel-managed Redis; one per hash slot on Redis
// Cluster), as Cache.Delete does. Every Cache then drops its copies and
// loads the keys anew on their next read; a load that read the old row
// before the change cannot write it back while the tombstone lives (the
// Caches' write-back is compare-and-set). A key that has a version in
// Redis (WithVersion) keeps it in its tombstone, which then lives at least
// as long as the value would have.
//
// Call it after the change is committed. On Redis Cluster the partitions
// succeed or fail apart: after an error, call it again.
func (v *Invalidator) Delete(ctx context.Context, keys ...string) error {
	return v.run(ctx, "delete", keys, false, func(ctx context.Context) error {
		_, err := v.store.DeleteMany(ctx, keys, l2.Notify(v.bus.NotifyDelete), l2.Tombstone(v.tomb))
		return err
	})
}

// Invalidate is for a program that wrote the keys' new values into Redis
// itself: it publishes a correctly sequenced invalidation for them without
// touching any data key. Every Cache drops its copies and reads the keys
// from Redis again. Values the program wrote as envelopes (l2.Store.Set
// with the key prefix "NAMESPACE:", in the Caches' Codec) are served as
// they are; other bytes are unreadable to the Caches, which count them
// and load the keys with their loaders, writing the loaded value back
// over those bytes.
//
// Call it after the write. A Cache's load that read Redis before the write
// cannot overwrite it (compare-and-set), and the invalidation drops a copy
// it filled meanwhile.
func (v *Invalidator) Invalidate(ctx context.Context, keys ...string) error {
	return v.run(ctx, "invalidate", keys, false, func(ctx context.Context) error {
		return v.publishKeys(ctx, keys)
	})
}

// InvalidateTags is Cache.InvalidateTags for a program without a Cache:
// it moves each tag to a new version in Redis and publishes the tags'
// invalidation, one atomic script per partition (one on a standalone or
// Sentinel-managed Redis; one per hash slot of the tags' version keys on
// Redis Cluster). Every entry carrying one of the tags (see WithTags) is
// then a miss on every instance within the propagation bound, and in
// Redis. Call it after the change is committed.
func (v *Invalidator) InvalidateTags(ctx context.Context, tags ...string) error {
	if err := checkTags("InvalidateTags", tags); err != nil {
		return err
	}
	return v.run(ctx, "invalidate tags", tags, false, func(ctx context.Context) error {
		return v.store.InvalidateTags(ctx, tags, v.bus.NotifyTags)
	})
}

// InvalidateAll makes every Cache of the namespace, on every instance,
// drop its whole L1 (the clear-all message of Cache.Clear); nothing in
// Redis changes but the sequence key of partition 0. Use it after a bulk
// change whose keys are not known, such as a migration.
func (v *Invalidator) InvalidateAll(ctx context.Context) error {
	return v.run(ctx, "invalidate all", nil, true, v.bus.PublishClear)
}

// Close releases the Invalidator; it never closes the Redis client, and
// a call already sent to Redis runs to its end. Close is idempotent;
// afterwards every method returns an error that errors.Is ErrClosed.
func (v *Invalidator) Close() error {
	if v.closed.Swap(true) {
		return nil
	}
	return errors.Join(v.bus.Close(), v.store.Close())
}

// errInvalidatorClosed is what the methods of a closed Invalidator return.
var errInvalidatorClosed = &closedError{"tiered: invalidator closed"}

// closedError is ErrClosed with a message of its own.
type closedError struct{ msg string }

func (e *closedError) Error() string { return e.msg }

// Is makes errors.Is(err, ErrClosed) hold.
func (e *closedError) Is(target error) bool { return target == ErrClosed }

// run runs one call of op on keys (whole: on the namespace, keys nil):
// the closed error after Close, the ctx's error if it has ended, nothing
// for no keys, and fn's error classified as a Cache's write errors are.
func (v *Invalidator) run(ctx context.Context, op string, keys []string, whole bool, fn func(context.Context) error) error {
	if v.closed.Load() {
		return errInvalidatorClosed
	}
	if err := ctx.Err(); err != nil {
		return &opError{op: op, keys: keys, err: err}
	}
	if !whole && len(keys) == 0 {
		return nil
	}
	err := fn(ctx)
	switch cerr := ctx.Err(); {
	case err == nil:
		return nil
	case errors.Is(err, l2.ErrClosed) || errors.Is(err, invalidation.ErrClosed): // Close ran meanwhile
		return errInvalidatorClosed
	case cerr != nil && errors.Is(err, cerr):
		return remoteError(op, keys, nil, err)
	case cerr != nil:
		return remoteError(op, keys, cerr, err)
	case errors.Is(err, l2.ErrOperation) || isReply(err): // an answer from Redis
		return remoteError(op, keys, nil, err)
	}
	return remoteError(op, keys, ErrUnavailable, err) // unreachable or too slow
}

// publishKeys publishes the invalidation of keys, one message per partition
// (their hash slot on Redis Cluster, of the prefixed key; 0 elsewhere):
// each advances its partition's sequence key and publishes, atomically,
// as the Caches' write scripts do. Several partitions go in one pipeline
// (per node on Redis Cluster); they succeed or fail apart.
func (v *Invalidator) publishKeys(ctx context.Context, keys []string) error {
	var order []int
	byPart := map[int][]string{}
	for _, k := range keys {
		p := v.store.Partition(k)
		if _, ok := byPart[p]; !ok {
			order = append(order, p)
		}
		byPart[p] = append(byPart[p], k)
	}
	if len(order) == 1 {
		p := order[0]
		return v.bus.Publish(ctx, p, v.bus.EncodeDelete(p, byPart[p]))
	}
	client := v.store.Client()
	_, err := client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, p := range order {
			n := v.bus.NotifyDelete(p, byPart[p])
			ks, argv := wire.Args(nil, &n)
			wire.PublishScript.Eval(ctx, pipe, ks, argv...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("invalidation: publish: %w", err) // the first failed partition's
	}
	return nil
}
