package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/nearcache/nearcache/internal/episode"
	"github.com/nearcache/nearcache/internal/hist"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// Errors returned by a Cache; test them with errors.Is.
var (
	// ErrNotFound reports a key with no value. Loaders return it (or an
	// error wrapping it) to say the key does not exist; with NegativeTTL the
	// answer is cached.
	ErrNotFound = errors.New("tiered: not found")
	// ErrClosed reports use of a closed Cache (or Invalidator).
	ErrClosed = errors.New("tiered: cache closed")
	// ErrUnavailable reports that Redis could not be used for a write (or
	// for a read without a loader): it is down, too slow, or the circuit
	// breaker is open. Writes are never acknowledged without Redis, because
	// their invalidation could not be published.
	ErrUnavailable = errors.New("tiered: redis unavailable")
	// ErrStale reports a versioned write (WithVersion) refused because the
	// cache holds a version as new or newer: the write lost a race with a
	// newer one, and nothing was written or published for its keys. The
	// error also wraps an *l2.StaleError naming the keys and versions.
	ErrStale = errors.New("tiered: stale version")
)

// Loader loads the value of key from the source of truth. It runs on a
// context detached from any single caller, bounded by Config.LoadTimeout.
// Return ErrNotFound for a key that does not exist.
type Loader[V any] func(ctx context.Context, key string) (V, error)

// BatchLoader loads several keys at once. Keys absent from the returned map
// do not exist (as if ErrNotFound).
type BatchLoader[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// Consumer-side views of the tiers: what this package needs from each.
type (
	localTier[V any] interface {
		Get(key string) (V, bool)
		Reserve(key string) l1.Ticket
		Valid(t l1.Ticket) bool
		Fill(t l1.Ticket, v V, ttl time.Duration) bool
		FillRefresh(t l1.Ticket, v V, ttl, refreshIn time.Duration) bool
		Invalidate(keys ...string)
		InvalidateAll()
		Stats() l1.Stats
		Close() error
	}
	remoteTier interface {
		Read(ctx context.Context, key string) (l2.Entry, error)
		AppendReadMany(ctx context.Context, dst []l2.Entry, keys []string) ([]l2.Entry, error)
		SetMany(ctx context.Context, entries map[string]l2.Entry, opts ...l2.WriteOption) error
		SetManyIf(ctx context.Context, entries map[string]l2.Entry, old map[string][]byte, opts ...l2.WriteOption) (map[string]bool, error)
		CheckSize(key string, e l2.Entry) error
		DeleteMany(ctx context.Context, keys []string, opts ...l2.WriteOption) (int64, error)
		Clear(ctx context.Context, opts ...l2.WriteOption) (int64, error)
		Claim(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
		TagVersions(ctx context.Context, tags []string) ([]uint64, error)
		InvalidateTags(ctx context.Context, tags []string, fn l2.NotifyFunc) error
		ClaimMany(ctx context.Context, keys []string, token string, ttl time.Duration) (map[string]bool, error)
		ReleaseMany(ctx context.Context, keys []string, token string, keep time.Duration) error
		Stats() l2.Stats
		Close() error
	}
	invalidationBus interface {
		Start(ctx context.Context) error
		NotifyDelete(partition int, keys []string) l2.Notification
		NotifyClear(partition int, keys []string) l2.Notification
		NotifyTags(partition int, tags []string) l2.Notification
		PublishClear(ctx context.Context) error
		Health() invalidation.Health
		Healthy() bool
		Stats() invalidation.Stats
		Close() error
	}
)

var (
	_ localTier[int]          = (*l1.Cache[int])(nil)
	_ remoteTier              = (*l2.Store)(nil)
	_ invalidationBus         = (*invalidation.Bus)(nil)
	_ invalidation.Handler    = handler[int]{}
	_ invalidation.OwnHandler = handler[int]{}
	_ invalidation.TagHandler = handler[int]{}
)

// item is what L1 holds: a value or a cached "not found".
type item[V any] struct {
	v    V
	neg  bool
	tags *tagStamps // nil: untagged (see tags.go)
}

// Cache is a two-tier near cache: a local L1 in front of a shared Redis L2,
// with coalesced loads and cross-instance invalidation. See the package
// documentation for its consistency contract. All methods are safe for
// concurrent use.
type Cache[V any] struct {
	cfg   Config[V] // with defaults; read-only after New
	codec Codec[V]
	log   *zap.Logger
	local localTier[item[V]]
	// hot is local's concrete L1, for the hit path only: an interface call
	// there would cost a dynamic dispatch and block inlining.
	hot *l1.Cache[item[V]]
	l2  remoteTier // nil in L1-only mode
	// batcher sends Sets that overlap in one script (Config.WriteBatchWindow);
	// nil when off.
	batcher *l2.Batcher
	bus     invalidationBus // nil in L1-only mode
	brk     breaker

	notifyDelete l2.NotifyFunc // invalidation for written or deleted keys
	notifyClear  l2.NotifyFunc // invalidation that drops every L1
	notifyTags   l2.NotifyFunc // invalidation of tags (InvalidateTags)

	tags    tagState                                          // the tag versions this Cache knows (see tags.go)
	stampFn func(context.Context, []string) ([]l2.Tag, error) // c.stampTags, for SetTags; set by build

	// base is cancelled by Close; shared work runs on contexts derived from it.
	base   context.Context
	cancel context.CancelFunc

	verMu     sync.Mutex        // L1-only mode: serialises versioned writes (see setLocal)
	localVers map[string]uint64 // guarded by verMu: L1-only mode, the versions written
	doubt     doubts            // keys of writes that ended in doubt

	flightMu sync.Mutex // guards flights, gets and closed; held across DoChan
	// flights maps a key to its running load, from the moment a caller
	// starts it until its work ends or an invalidation forgets it; callers
	// that find a flight here join it. A single-key flight is a call in
	// loads (x/sync singleflight) and is in this table exactly while loads
	// holds it: both change together under flightMu, and the work forgets its
	// call before returning. A batch-led flight is finished by its batch.
	flights map[string]*flight[V]
	gets    map[string]*flight[V] // the same for Get (reads without a loader)
	loads   singleflight.Group    // single-key flights of flights
	getsSF  singleflight.Group    // single-key flights of gets
	closed  bool                  // set by Close under flightMu: no new work starts
	work    sync.WaitGroup        // running shared work; Close waits for it
	isDone  atomic.Bool           // closed, readable without the lock

	// inlineFlights holds inline flights that ended with nobody joined
	// (see leadInline), for reuse by join: an L2 hit then allocates none.
	inlineFlights sync.Pool

	inlineOK bool // Redis calls are bounded by ctx deadlines (see canLeadInline); read-only after New

	// Working memory of batch reads, reused (see manyScratch, batchState).
	manyPool    sync.Pool    // *manyScratch[V]
	statePool   sync.Pool    // *batchState[V]
	batchPool   sync.Pool    // *batch[V] (see putBatch)
	opDeadlines *opDeadlines // bounds Redis calls on contexts that never end (see redisCtx); set by New
	// flightDeadlines is opDeadlines for the Redis calls of flights led
	// inline: min(RedisTimeout, LoadTimeout), since LoadTimeout bounds a
	// flight whoever runs it. The same as opDeadlines unless LoadTimeout is
	// the shorter.
	flightDeadlines *opDeadlines

	st loadCounters
	rf refreshCounters
	cl claimCounters

	// claimWaits holds, per key, the channel that wakes loads waiting for
	// another instance's claimed load of it (see loadClaimed), while any
	// waits: removed by the key's invalidation or by the last load to stop
	// waiting (claimUnwake); guarded by flightMu.
	claimWaits map[string]*claimWait

	// Degradations logged once per episode (see Config.Logger); closed by
	// Close.
	writeFails  *episode.Tracker // Redis writes that failed: callers' writes and write-backs
	staleServes *episode.Tracker // stale values served by fail-safe
	refreshFail *episode.Tracker // refresh-ahead refreshes that failed (loader, Redis, claim refused)
	claimFail   *episode.Tracker // load claims (LoadClaim) Redis refused or did not answer
	unreadable  *episode.Tracker // values read from Redis that were corrupt or did not decode
	unstored    *episode.Tracker // loaded values left out of Redis: unencodable, or above MaxValueSize
	// Panics recovered from Observer callbacks.
	observerFails *episode.Tracker

	obs []*Observer // Config.Observer, or the members it joined (see joined); read-only after New
}

// Messages of the episodes (see Config.Logger); an episode's end is logged
// with the same message followed by episode.EndSuffix.
const (
	msgWriteFails  = "nearcache: redis writes failing"
	msgStaleServes = "nearcache: loader failing; serving stale values (fail-safe)"
	msgRefreshFail = "nearcache: refresh-ahead failing; serving current values until they expire"
	msgClaimFail   = "nearcache: load claims failing; loading without them"
	msgUnreadable  = "nearcache: unreadable values in Redis; reloading them"
	msgUnstored    = "nearcache: loaded values not stored in Redis (kept in this instance's L1 only)"
)

type loadCounters struct {
	callers, flights, loaderCalls, loadedKeys, loaderErrors, panics       atomic.Uint64
	staleServed, staleServedSoft, negativeCached, decodeErrors, conflicts atomic.Uint64
	l2Lookups, l2Hits, l2Errors, l2Skipped, encodeErrors                  atomic.Uint64
	tagMisses                                                             atomic.Uint64  // values read from Redis whose tags moved on
	l1TagStale                                                            atomic.Uint64  // L1 copies found whose tags moved on (counted by l1 as hits)
	loadLatency                                                           hist.Histogram // loader calls
}

// New builds a Cache. With cfg.Redis set it subscribes to the namespace's
// invalidation channel and waits up to cfg.StartTimeout for the confirmation;
// if Redis is down it still returns a working Cache (see Config.StartTimeout).
func New[V any](cfg Config[V]) (*Cache[V], error) { return build(cfg, nil) }

// build is New. wrapL1, if not nil, wraps the L1 before anything uses it
// (tests observe the fills with it).
func build[V any](cfg Config[V], wrapL1 func(localTier[item[V]]) localTier[item[V]]) (*Cache[V], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{
		cfg:     cfg,
		codec:   cfg.Codec,
		log:     cfg.Logger,
		flights: map[string]*flight[V]{},
		gets:    map[string]*flight[V]{},
		brk:     breaker{threshold: cfg.BreakerFailures, cooldown: cfg.BreakerCooldown, now: time.Now},

		writeFails:  episode.New(cfg.Logger, msgWriteFails, episode.DefaultQuiet),
		staleServes: episode.New(cfg.Logger, msgStaleServes, episode.DefaultQuiet),
		refreshFail: episode.New(cfg.Logger, msgRefreshFail, episode.DefaultQuiet),
		claimFail:   episode.New(cfg.Logger, msgClaimFail, episode.DefaultQuiet),
		unreadable:  episode.New(cfg.Logger, msgUnreadable, episode.DefaultQuiet),
		unstored:    episode.New(cfg.Logger, msgUnstored, episode.DefaultQuiet),

		observerFails: episode.New(cfg.Logger, msgObserverPanics, episode.DefaultQuiet),
		obs:           joined(cfg.Observer),
	}
	if c.codec == nil {
		c.codec = defaultCodec[V]()
	}
	for _, o := range c.obs {
		if o.BreakerChanged != nil {
			c.brk.changed = c.breakerChanged
		}
	}
	var cost func(item[V]) int64
	if cfg.L1Cost != nil {
		cost = func(it item[V]) int64 {
			if it.neg {
				return 1 + it.tags.bytes()
			}
			return cfg.L1Cost(it.v) + it.tags.bytes()
		}
	}
	local, err := l1.New[item[V]](l1.Config{
		MaxEntries: cfg.L1MaxEntries, MaxBytes: cfg.L1MaxBytes, RefreshRetry: cfg.FailSafeRetryAfter,
	}, cost)
	if err != nil {
		return nil, fmt.Errorf("tiered: %w", err) // l1's errors name their package
	}
	c.local, c.hot = local, local
	c.stampFn = c.stampTags
	c.tags.epoch.Store(1)
	if wrapL1 != nil {
		c.local = wrapL1(local)
	}
	if cfg.Redis != nil {
		if err := checkRouting(cfg.Redis, cfg.StartTimeout); err != nil {
			_ = local.Close()
			return nil, err
		}
	}
	c.base, c.cancel = context.WithCancel(context.Background())
	c.opDeadlines = newOpDeadlines(cfg.RedisTimeout)
	c.flightDeadlines = c.opDeadlines
	if cfg.LoadTimeout < cfg.RedisTimeout {
		c.flightDeadlines = newOpDeadlines(cfg.LoadTimeout)
	}
	c.inlineOK = cfg.Redis == nil || honoursDeadlines(cfg.Redis)
	if cfg.Redis == nil {
		return c, nil
	}

	store, err := l2.New(cfg.Redis, l2.Config{KeyPrefix: wire.KeyPrefix(cfg.Namespace), MaxValueSize: cfg.MaxValueSize})
	if err != nil {
		_ = local.Close()
		return nil, fmt.Errorf("tiered: %w", err)
	}
	bus, err := invalidation.New(cfg.Redis, invalidation.Config{
		Namespace:            cfg.Namespace,
		AntiEntropyInterval:  cfg.AntiEntropyInterval,
		DisableShardedPubSub: cfg.DisableShardedPubSub,
		HMACKey:              cfg.HMACKey,
		Logger:               cfg.Logger,
	}, handler[V]{c})
	if err != nil {
		_ = local.Close()
		return nil, fmt.Errorf("tiered: %w", err)
	}
	c.l2, c.bus = store, bus
	c.notifyDelete, c.notifyClear, c.notifyTags = bus.NotifyDelete, bus.NotifyClear, bus.NotifyTags
	if cfg.WriteBatchWindow > 0 {
		c.batcher = store.NewBatcher(c.notifyDelete, cfg.WriteBatchWindow)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	if err := bus.Start(ctx); err != nil {
		if errors.Is(err, invalidation.ErrClosed) {
			_ = local.Close()
			return nil, fmt.Errorf("tiered: %w", err)
		}
		c.log.Warn("nearcache: invalidation subscription not confirmed; serving degraded (short L1 TTLs) until Redis answers",
			zap.String("namespace", cfg.Namespace), zap.Error(err))
	}
	return c, nil
}

// handler receives invalidations from the bus.
type handler[V any] struct{ c *Cache[V] }

// InvalidateKeys implements invalidation.Handler.
func (h handler[V]) InvalidateKeys(keys []string) {
	h.c.invalidateLocal(keys...)
	h.c.invalidated(keys)
}

// InvalidateAll implements invalidation.Handler.
func (h handler[V]) InvalidateAll(cause invalidation.Cause) {
	h.c.dropAll()
	h.c.repaired(cause)
}

// OwnKeys implements invalidation.OwnHandler: an own message drops only the
// keys whose write ended in doubt (see doubts).
func (h handler[V]) OwnKeys(keys []string) {
	if ks := h.c.doubt.match(keys, time.Now()); len(ks) > 0 {
		h.c.invalidateLocal(ks...)
	}
}

// OwnClear implements invalidation.OwnHandler. An own clear-all is a Clear,
// or a write whose keys did not fit in one message: it is applied while any
// write is in doubt.
func (h handler[V]) OwnClear() {
	if h.c.doubt.any(time.Now()) {
		h.c.dropAll()
	}
}

// dropAll makes every L1 entry unreachable (an epoch bump) and forgets every
// running flight.
func (c *Cache[V]) dropAll() {
	if c.l2 != nil {
		c.forgetTags() // messages may have been lost: read the versions again
	}
	c.local.InvalidateAll()
	c.forgetAll()
	c.flightMu.Lock()
	c.wakeClaimsLocked(nil)
	c.flightMu.Unlock()
}

// invalidateLocal drops keys from L1 (bumping their generations, so fills
// reserved earlier are refused) and forgets their running flights, so later
// callers start a fresh load instead of joining one that may be overtaken.
func (c *Cache[V]) invalidateLocal(keys ...string) {
	c.local.Invalidate(keys...)
	c.flightMu.Lock()
	for _, k := range keys {
		forgetLocked(c.flights, &c.loads, k)
		forgetLocked(c.gets, &c.getsSF, k)
	}
	c.wakeClaimsLocked(keys)
	c.flightMu.Unlock()
}
