package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

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
	// ErrClosed reports use of a closed Cache.
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
		Invalidate(keys ...string)
		InvalidateAll()
		Stats() l1.Stats
		Close() error
	}
	remoteTier interface {
		Read(ctx context.Context, key string) (l2.Entry, error)
		ReadMany(ctx context.Context, keys []string) ([]l2.Entry, error)
		SetMany(ctx context.Context, entries map[string]l2.Entry, opts ...l2.WriteOption) error
		SetManyIf(ctx context.Context, entries map[string]l2.Entry, old map[string][]byte, opts ...l2.WriteOption) (map[string]bool, error)
		CheckSize(key string, e l2.Entry) error
		DeleteMany(ctx context.Context, keys []string, opts ...l2.WriteOption) (int64, error)
		Clear(ctx context.Context, opts ...l2.WriteOption) (int64, error)
		Stats() l2.Stats
		Close() error
	}
	invalidationBus interface {
		Start(ctx context.Context) error
		Channel() string
		SeqKey(partition int) string
		EncodeDelete(partition int, keys []string) []byte
		EncodeClear(partition int) []byte
		PublishClear(ctx context.Context) error
		Health() invalidation.Health
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
)

// item is what L1 holds: a value or a cached "not found".
type item[V any] struct {
	v   V
	neg bool
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
	l2    remoteTier      // nil in L1-only mode
	bus   invalidationBus // nil in L1-only mode
	brk   breaker

	notifyDelete l2.NotifyFunc // invalidation for written or deleted keys
	notifyClear  l2.NotifyFunc // invalidation that drops every L1

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

	inlineOK bool // Redis calls are bounded by ctx deadlines (see canLeadInline); read-only after New

	st loadCounters
}

// flight is one shared fetch of a key. It runs one of three ways:
//
//   - a DoChan flight (sf) is a call in a singleflight.Group; waiters get its
//     result from DoChan's channel, or leave through abort;
//   - an inline flight is run by the caller that started it, on its own
//     goroutine (see leadInline);
//   - a batch flight is one key of a GetMany/GetManyOrLoad batch, settled by
//     the batch.
//
// Inline and batch flights are settled exactly once, under flightMu, with
// their result or an abort error (settleLocked); their waiters wait on done,
// which the first waiter makes, so a flight nobody joins costs no channel.
type flight[V any] struct {
	sf *sfState // DoChan flights only (nil otherwise)

	// Inline and batch flights; all guarded by flightMu.
	done    chan struct{} // nil until a waiter needs it; closed when settled
	settled bool
	it      item[V] // the result, set when settled
	err     error
}

// sfState is what a DoChan flight adds: abort is closed (once) when waiters
// must stop waiting without a result: the work exited through
// runtime.Goexit (x/sync then sends nothing), or it overran LoadTimeout by
// abortGrace (a loader that ignores its ctx). err is set before abort is
// closed.
type sfState struct {
	abort chan struct{}
	once  sync.Once
	err   error
}

func newSFFlight[V any]() *flight[V] {
	return &flight[V]{sf: &sfState{abort: make(chan struct{})}}
}

func (f *flight[V]) abortWith(err error) {
	f.sf.once.Do(func() {
		f.sf.err = err
		close(f.sf.abort)
	})
}

// settleLocked gives an inline or batch flight its result and wakes its
// waiters, unless it is settled already (an overrun settles it early; the
// late result is then dropped). Called with flightMu held.
func (f *flight[V]) settleLocked(it item[V], err error) {
	if f.settled {
		return
	}
	f.it, f.err, f.settled = it, err, true
	if f.done != nil {
		close(f.done)
	}
}

// doneLocked returns the channel closed when an inline or batch flight is
// settled, making it on first use. Called with flightMu held.
func (f *flight[V]) doneLocked() chan struct{} {
	if f.done == nil {
		f.done = make(chan struct{})
		if f.settled {
			close(f.done)
		}
	}
	return f.done
}

// abortGrace is how long past LoadTimeout waiters keep waiting for a load
// whose context has expired, so a loader that honours its ctx reports its
// own error first.
const abortGrace = 100 * time.Millisecond

// errLoadOverran is what waiters get from a load that ignored its context.
var errLoadOverran = errors.New("tiered: load did not return within LoadTimeout (does the loader honour its ctx?)")

// waiter is one caller's handle on a flight.
type waiter[V any] struct {
	ch   <-chan singleflight.Result // DoChan flight: its result
	done <-chan struct{}            // other flights: closed once f is settled
	f    *flight[V]
}

// wait returns the flight's result, or ctx's error if ctx ends first, or the
// flight's abort error.
func (w waiter[V]) wait(ctx context.Context) (item[V], error) {
	if w.f.sf == nil {
		select {
		case <-w.done:
			return w.f.it, w.f.err
		case <-ctx.Done():
			return item[V]{}, ctx.Err()
		}
	}
	select {
	case r := <-w.ch:
		if r.Err != nil {
			return item[V]{}, r.Err
		}
		return r.Val.(item[V]), nil
	case <-w.f.sf.abort:
		return item[V]{}, w.f.sf.err
	case <-ctx.Done():
		return item[V]{}, ctx.Err()
	}
}

// joinLocked returns a waiter on key's running flight, if any. Called with
// flightMu held.
func joinLocked[V any](table map[string]*flight[V], group *singleflight.Group, key string) (waiter[V], bool) {
	f := table[key]
	switch {
	case f == nil:
		return waiter[V]{}, false
	case f.sf != nil:
		return waiter[V]{ch: group.DoChan(key, errFlightVanished), f: f}, true
	}
	return waiter[V]{done: f.doneLocked(), f: f}, true
}

// errFlightVanished is the func handed to DoChan when joining a running
// single-key flight; by the flights invariant it never runs.
func errFlightVanished() (any, error) {
	return nil, errors.New("tiered: internal error: joined a flight that had ended")
}

type loadCounters struct {
	callers, flights, loaderCalls, loadedKeys, loaderErrors, panics atomic.Uint64
	staleServed, negativeCached, decodeErrors, conflicts            atomic.Uint64
	l2Lookups, l2Hits, l2Errors, l2Skipped, encodeErrors            atomic.Uint64
}

// New builds a Cache. With cfg.Redis set it subscribes to the namespace's
// invalidation channel and waits up to cfg.StartTimeout for the confirmation;
// if Redis is down it still returns a working Cache (see Config.StartTimeout).
func New[V any](cfg Config[V]) (*Cache[V], error) {
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
	}
	if c.codec == nil {
		c.codec = defaultCodec[V]()
	}
	var cost func(item[V]) int64
	if cfg.L1Cost != nil {
		cost = func(it item[V]) int64 {
			if it.neg {
				return 1
			}
			return cfg.L1Cost(it.v)
		}
	}
	local, err := l1.New[item[V]](l1.Config{MaxEntries: cfg.L1MaxEntries, MaxBytes: cfg.L1MaxBytes}, cost)
	if err != nil {
		return nil, fmt.Errorf("tiered: L1: %w", err)
	}
	c.local = local
	if cfg.Redis != nil {
		if err := checkRouting(cfg.Redis, cfg.StartTimeout); err != nil {
			_ = local.Close()
			return nil, err
		}
	}
	c.base, c.cancel = context.WithCancel(context.Background())
	c.inlineOK = cfg.Redis == nil || honoursDeadlines(cfg.Redis)
	if cfg.Redis == nil {
		return c, nil
	}

	store, err := l2.New(cfg.Redis, l2.Config{KeyPrefix: cfg.Namespace + ":", MaxValueSize: cfg.MaxValueSize})
	if err != nil {
		_ = local.Close()
		return nil, fmt.Errorf("tiered: L2: %w", err)
	}
	bus, err := invalidation.New(cfg.Redis, invalidation.Config{
		Namespace:           cfg.Namespace,
		AntiEntropyInterval: cfg.AntiEntropyInterval,
		HMACKey:             cfg.HMACKey,
		Logger:              cfg.Logger,
	}, handler[V]{c})
	if err != nil {
		_ = local.Close()
		return nil, fmt.Errorf("tiered: invalidation: %w", err)
	}
	c.l2, c.bus = store, bus
	c.notifyDelete = func(p int, keys []string) l2.Notification {
		return l2.Notification{Channel: bus.Channel(), SeqKey: bus.SeqKey(p), Body: bus.EncodeDelete(p, keys)}
	}
	c.notifyClear = func(p int, _ []string) l2.Notification {
		return l2.Notification{Channel: bus.Channel(), SeqKey: bus.SeqKey(p), Body: bus.EncodeClear(p)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	if err := bus.Start(ctx); err != nil {
		if errors.Is(err, invalidation.ErrClosed) {
			_ = local.Close()
			return nil, fmt.Errorf("tiered: invalidation: %w", err)
		}
		c.log.Warn("nearcache: invalidation subscription not confirmed; serving degraded (short L1 TTLs) until Redis answers",
			zap.String("namespace", cfg.Namespace), zap.Error(err))
	}
	return c, nil
}

// handler receives invalidations from the bus.
type handler[V any] struct{ c *Cache[V] }

// InvalidateKeys implements invalidation.Handler.
func (h handler[V]) InvalidateKeys(keys []string) { h.c.invalidateLocal(keys...) }

// InvalidateAll implements invalidation.Handler.
func (h handler[V]) InvalidateAll(invalidation.Cause) { h.c.dropAll() }

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
	c.local.InvalidateAll()
	c.forgetAll()
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
	c.flightMu.Unlock()
}

func (c *Cache[V]) forgetAll() {
	c.flightMu.Lock()
	for k := range c.flights {
		forgetLocked(c.flights, &c.loads, k)
	}
	for k := range c.gets {
		forgetLocked(c.gets, &c.getsSF, k)
	}
	c.flightMu.Unlock()
}

// forgetLocked drops key's flight so that later callers start afresh; its
// current waiters still get its result. Called with flightMu held.
func forgetLocked[V any](table map[string]*flight[V], group *singleflight.Group, key string) {
	if f := table[key]; f != nil {
		delete(table, key)
		if f.sf != nil {
			group.Forget(key)
		}
	}
}

// Get returns the value of key from L1 or L2 without loading it. A key in
// neither is ErrNotFound; with Redis unreachable the error wraps
// ErrUnavailable.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	if it, ok := c.local.Get(key); ok {
		return it.result()
	}
	return c.miss(ctx, key, nil, nil)
}

// GetOrLoad returns the value of key from L1, else L2, else load (whose
// result is written back to L2 and to L1). Concurrent
// misses for one key share one load; each caller waits on its own ctx. An
// L1 hit costs one ristretto lookup: no allocation, no lock, no clock read.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load Loader[V], opts ...Option) (V, error) {
	if it, ok := c.local.Get(key); ok {
		return it.result()
	}
	if load == nil {
		var zero V
		return zero, fmt.Errorf("tiered: GetOrLoad %q: nil loader", key)
	}
	return c.miss(ctx, key, load, opts)
}

func (it item[V]) result() (V, error) {
	if it.neg {
		var zero V
		return zero, ErrNotFound
	}
	return it.v, nil
}

func (c *Cache[V]) miss(ctx context.Context, key string, load Loader[V], opts []Option) (V, error) {
	var zero V
	o := c.options(opts)
	w, lead, err := c.join(ctx, key, load, o)
	if err != nil {
		return zero, err
	}
	var it item[V]
	if lead {
		it, err = c.leadInline(ctx, key, w.f, load, o)
	} else {
		it, err = w.wait(ctx)
	}
	if err != nil {
		return zero, err
	}
	return it.result()
}

// canLeadInline reports whether a caller with ctx may run the flight it
// leads on its own goroutine: its ctx can never end (Done returns nil, as
// for context.Background), so it has nothing to leave on early, and every
// Redis call is bounded by RedisTimeout, which needs a client that applies
// context deadlines to its connections (go-redis ContextTimeoutEnabled; see
// Config.Redis). Such a caller saves the goroutine hand-off that DoChan
// makes; its followers still wait on their own ctx.
func (c *Cache[V]) canLeadInline(ctx context.Context) bool {
	return ctx.Done() == nil && c.inlineOK
}

// honoursDeadlines reports whether go-redis applies context deadlines to
// r's connections (ContextTimeoutEnabled). Unknown client types do not
// count.
func honoursDeadlines(r redis.UniversalClient) bool {
	switch r := r.(type) {
	case *redis.Client: // also what NewFailoverClient returns
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return r.Options().ContextTimeoutEnabled
	}
	return false
}

// ErrReplicaRouting reports a Config.Redis that may send reads to replicas.
// Every read that the consistency contract rests on (the L2 read after a
// fill ticket, anti-entropy's sequence and epoch keys) must see the master:
// a lagging replica would hand back a value that an applied invalidation has
// already overtaken, L1 would keep it, and nothing would repair it until
// MaxL1TTL. Give the Cache a client of its own that reads from masters.
var ErrReplicaRouting = errors.New("tiered: the Redis client may read from replicas")

// checkRouting refuses clients that route reads to replicas: Cluster
// clients with ReadOnly, RouteByLatency or RouteRandomly (which is also
// what NewFailoverClusterClient builds from FailoverOptions.ReplicaOnly and
// RouteBy*), Ring clients (whose shards share no sequence keys or
// channel), and a plain or failover client whose server reports the replica
// role (an address of a replica, FailoverOptions.ReplicaOnly). The role is
// asked once, within timeout (StartTimeout, at most 2 s), or the client's
// ReadTimeout for a client without ContextTimeoutEnabled; a client with
// neither bound is not asked (the question could hang New on a server that
// never answers). A server that cannot answer is not refused: New must work
// while Redis is down.
func checkRouting(r redis.UniversalClient, timeout time.Duration) error {
	switch r := r.(type) {
	case *redis.ClusterClient:
		o := r.Options()
		if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
			return fmt.Errorf("%w: ClusterOptions ReadOnly=%v RouteByLatency=%v RouteRandomly=%v (from FailoverOptions: ReplicaOnly, RouteByLatency, RouteRandomly); "+
				"a lagging replica would refill local copies with overtaken values; build a separate client without these options for the Cache",
				ErrReplicaRouting, o.ReadOnly, o.RouteByLatency, o.RouteRandomly)
		}
	case *redis.Ring:
		return errors.New("tiered: a redis.Ring is not supported: its shards share no sequence keys and no invalidation channel; use one server, Sentinel, or Redis Cluster")
	case *redis.Client:
		if o := r.Options(); !o.ContextTimeoutEnabled && o.ReadTimeout <= 0 {
			return nil // nothing bounds the question: it could hang New on a silent server
		}
		wait := 2 * time.Second
		if timeout > 0 {
			wait = min(timeout, wait)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		role, err := r.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 {
			return nil // unreachable, or a server without ROLE: nothing to tell
		}
		if kind, _ := role[0].(string); kind == "slave" || kind == "replica" {
			return fmt.Errorf("%w: the server at %s answers ROLE with %q; give the Cache the master's address, or a failover client without ReplicaOnly",
				ErrReplicaRouting, r.Options().Addr, kind)
		}
	}
	return nil
}

// join joins key's running flight, or starts one. A started flight runs the
// x/sync way: DoChan, so each caller waits on its own ctx, while the work
// runs on a context detached from every caller (see detached), and a panic
// in it becomes an error for every waiter. The exception is a caller that
// can lead inline (see canLeadInline): join then registers a flight that
// the caller runs itself with leadInline, reported by lead.
func (c *Cache[V]) join(ctx context.Context, key string, load Loader[V], o callOptions) (w waiter[V], lead bool, err error) {
	table, group := c.flightsFor(load == nil)
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	if c.closed {
		return waiter[V]{}, false, ErrClosed
	}
	c.st.callers.Add(1)
	if w, ok := joinLocked(table, group, key); ok {
		return w, false, nil
	}
	c.st.flights.Add(1)
	c.work.Add(1)
	if c.canLeadInline(ctx) {
		f := &flight[V]{}
		table[key] = f
		return waiter[V]{f: f}, true, nil
	}
	f := newSFFlight[V]()
	table[key] = f
	wctx, cancel := c.detached(ctx, time.Now().Add(c.cfg.LoadTimeout))
	overrun := time.AfterFunc(c.cfg.LoadTimeout+abortGrace, func() {
		c.release(table, group, key, f) // first, so that woken waiters who call again start afresh
		f.abortWith(errLoadOverran)
	})
	ch := group.DoChan(key, func() (v any, err error) {
		var returned, panicked bool
		defer func() {
			overrun.Stop()
			if !returned && !panicked { // runtime.Goexit: x/sync sends no result
				f.abortWith(fmt.Errorf("tiered: load of key %q aborted (runtime.Goexit in the loader)", key))
			}
		}()
		defer c.work.Done()
		defer cancel()
		defer c.release(table, group, key, f)
		defer func() {
			if r := recover(); r != nil {
				panicked = true
				err = c.loadPanicked(key, r)
			}
		}()
		v, err = c.fetch(wctx, key, load, o)
		returned = true
		return v, err
	})
	return waiter[V]{ch: ch, f: f}, false, nil
}

// leadInline runs flight f of key, registered by join, on the caller's
// goroutine: the fill ticket and the L2 read (bounded by RedisTimeout), and
// the L1 fill. When the loader must run, the rest of the work is handed to
// a goroutine with a detached context bounded by LoadTimeout (see
// goDetached), and the caller waits for it like any follower, so a
// loader that ignores its ctx holds no caller past LoadTimeout+abortGrace.
func (c *Cache[V]) leadInline(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions) (it item[V], err error) {
	table, _ := c.flightsFor(load == nil)
	deadline := time.Now().Add(c.cfg.LoadTimeout) // the whole flight's, as for a DoChan flight
	settled, handed := false, false
	defer func() {
		if handed {
			return
		}
		if r := recover(); r != nil {
			it, err, settled = item[V]{}, c.loadPanicked(key, r), true
		}
		if !settled { // runtime.Goexit in a codec: followers must not hang
			err = fmt.Errorf("tiered: load of key %q aborted (runtime.Goexit)", key)
		}
		c.finish(table, key, f, it, err)
		c.work.Done()
	}()
	t, look, it, err, done := c.fetchL2(ctx, key, load, o)
	if done {
		settled = true
		return it, err
	}
	handed = true
	c.flightMu.Lock()
	fdone := f.doneLocked()
	c.flightMu.Unlock()
	var lit item[V]
	var lerr error
	c.goDetached(ctx, deadline,
		func(wctx context.Context) {
			defer func() {
				if r := recover(); r != nil {
					lerr = c.loadPanicked(key, r)
				}
			}()
			lit, lerr = c.fetchLoad(wctx, key, load, o, t, look)
		},
		func() { c.finish(table, key, f, item[V]{}, errLoadOverran) }, // later callers start afresh
		func(completed bool) {
			if !completed {
				lerr = fmt.Errorf("tiered: load of key %q aborted (runtime.Goexit in the loader)", key)
			}
			c.finish(table, key, f, lit, lerr)
		})
	return waiter[V]{done: fdone, f: f}.wait(ctx)
}

// goDetached runs work on its own goroutine, on a context detached from ctx
// and ending at deadline (a flight's or batch's start plus LoadTimeout),
// then calls settle, with completed false if work exited through
// runtime.Goexit, and releases the c.work count it takes over. If work is
// still running abortGrace after the deadline (a loader that ignores its
// ctx), overran releases the waiters meanwhile. work must recover its own
// panics.
func (c *Cache[V]) goDetached(ctx context.Context, deadline time.Time, work func(context.Context), overran func(), settle func(completed bool)) {
	wctx, cancel := c.detached(ctx, deadline)
	overrun := time.AfterFunc(time.Until(deadline)+abortGrace, overran)
	go func() {
		completed := false
		defer func() {
			overrun.Stop()
			cancel()
			settle(completed)
			c.work.Done()
		}()
		work(wctx)
		completed = true
	}()
}

// finish settles flight f of key (not a DoChan flight) and removes it from
// table, unless an invalidation already forgot it.
func (c *Cache[V]) finish(table map[string]*flight[V], key string, f *flight[V], it item[V], err error) {
	c.flightMu.Lock()
	if table[key] == f {
		delete(table, key)
	}
	f.settleLocked(it, err)
	c.flightMu.Unlock()
}

// flightsFor returns the flight table and singleflight group of loads, or
// of Gets (reads without a loader, which must not join a load or be joined
// by one).
func (c *Cache[V]) flightsFor(isGet bool) (map[string]*flight[V], *singleflight.Group) {
	if isGet {
		return c.gets, &c.getsSF
	}
	return c.flights, &c.loads
}

// release ends a single-key flight before its work returns: it forgets the
// call (unless an invalidation already did), so later callers start afresh.
func (c *Cache[V]) release(table map[string]*flight[V], group *singleflight.Group, key string, f *flight[V]) {
	c.flightMu.Lock()
	if table[key] == f {
		delete(table, key)
		group.Forget(key)
	}
	c.flightMu.Unlock()
}

// detached returns a context carrying ctx's values but not its cancellation,
// ending at deadline and cancelled by Close: its deadline and Done come from
// the Cache's base context, its values from ctx. (Deriving it from
// context.WithoutCancel(ctx) and linking Close with context.AfterFunc costs
// more allocations and a registration under the base context's lock on
// every miss.)
func (c *Cache[V]) detached(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc) {
	d, cancel := context.WithDeadline(c.base, deadline)
	return valuesFrom{Context: d, values: context.WithoutCancel(ctx)}, cancel
}

// valuesFrom is a context whose deadline, Done, Err and cancellation are
// Context's and whose values are values'. values is the caller's context
// seen through context.WithoutCancel, which hides the caller's cancellation
// from the context package, so context.Cause reports this context's own
// cause.
type valuesFrom struct {
	context.Context
	values context.Context
}

// Value implements context.Context with the caller's values.
func (v valuesFrom) Value(key any) any { return v.values.Value(key) }

// AfterFunc lets contexts derived from this one (WithTimeout, WithCancel)
// register on it instead of starting a goroutine each to watch Done.
func (v valuesFrom) AfterFunc(f func()) func() bool { return context.AfterFunc(v.Context, f) }

// redisCtx bounds one Redis operation by RedisTimeout.
func (c *Cache[V]) redisCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.RedisTimeout < 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.RedisTimeout)
}

// fetch is the shared work of one miss: ticket, L2, loader, L2 write, fill.
func (c *Cache[V]) fetch(ctx context.Context, key string, load Loader[V], o callOptions) (item[V], error) {
	t, look, it, err, done := c.fetchL2(ctx, key, load, o)
	if done {
		return it, err
	}
	return c.fetchLoad(ctx, key, load, o, t, look)
}

// fetchL2 is the first part of a miss: the fill ticket, the L2 read, and on
// a fresh L2 value the L1 fill. done reports that the miss is settled with
// it and err: an L2 hit, or a Get (no loader) that missed. Otherwise the
// miss goes on with fetchLoad.
func (c *Cache[V]) fetchL2(ctx context.Context, key string, load Loader[V], o callOptions) (t l1.Ticket, look lookup[V], it item[V], err error, done bool) {
	t = c.local.Reserve(key)
	look = c.readL2(ctx, key)
	if look.fresh {
		c.fill(t, look.it, o.l1TTL, look.until, look.at)
		return t, look, look.it, nil, true
	}
	if load == nil {
		if look.err != nil {
			return t, look, item[V]{}, look.err, true
		}
		return t, look, item[V]{neg: true}, nil, true
	}
	return t, look, item[V]{}, nil, false
}

// fetchLoad is the rest of a miss that L2 did not answer: the loader, the
// L2 write-back and the fill, or fail-safe's stale value.
func (c *Cache[V]) fetchLoad(ctx context.Context, key string, load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	now := time.Now()
	c.st.loaderCalls.Add(1)
	c.st.loadedKeys.Add(1)
	v, err := load(ctx, key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		c.st.loaderErrors.Add(1)
		if look.stale != nil {
			c.st.staleServed.Add(1)
			c.log.Warn("nearcache: loader failed; serving a stale value (fail-safe)", zap.String("key", key), zap.Error(err))
			c.fill(t, *look.stale, min(o.l1TTL, c.cfg.FailSafeRetryAfter), time.Time{}, now)
			return *look.stale, nil
		}
		return item[V]{}, fmt.Errorf("tiered: load %q: %w", key, err)
	}
	it := item[V]{v: v, neg: err != nil}
	ttl := o.ttl
	if it.neg {
		if o.negativeTTL <= 0 {
			return it, nil // not cached
		}
		ttl = o.negativeTTL
		c.st.negativeCached.Add(1)
	}
	if !c.local.Valid(t) {
		// Invalidated while loading: the value may predate that write. Serve
		// it to the callers who asked before, but do not keep it anywhere.
		c.st.conflicts.Add(1)
		return it, nil
	}
	if look.reachable {
		if !c.storeLoaded(ctx, key, it, ttl, look) {
			return it, nil // a newer write or delete won: serve, do not keep
		}
	}
	c.fill(t, it, min(o.l1TTL, ttl), time.Time{}, time.Now())
	return it, nil
}

// lookup is the outcome of reading one key from L2.
type lookup[V any] struct {
	it        item[V]
	fresh     bool      // it can be served and cached
	until     time.Time // when the L2 value stops being fresh (zero: no bound)
	at        time.Time // when it was classified (the clock until is compared with)
	stale     *item[V]  // a soft-expired value for fail-safe
	raw       []byte    // the bytes read (nil: absent), for SetIf
	announce  bool      // raw is a value (stale, expired, corrupt) that others may hold a copy of
	reachable bool      // L2 answered: a loaded value may be written back
	err       error     // why L2 could not answer (wraps ErrUnavailable)
}

func (c *Cache[V]) readL2(ctx context.Context, key string) lookup[V] {
	if c.l2 == nil {
		return lookup[V]{}
	}
	var e l2.Entry
	err := c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		e, err = c.l2.Read(rctx, key)
		c.st.l2Lookups.Add(1)
		return err
	})
	switch {
	case errors.Is(err, l2.ErrNotFound):
		return lookup[V]{reachable: true}
	case errors.Is(err, errBreakerOpen):
		return lookup[V]{err: fmt.Errorf("tiered: get %q: %w", key, err)}
	case err != nil && !e.Corrupt:
		c.st.l2Errors.Add(1)
		return lookup[V]{err: fmt.Errorf("tiered: get %q: %w: %w", key, ErrUnavailable, err)}
	}
	return c.classify(key, e, time.Now())
}

// classify turns an entry read from L2 (possibly a tombstone or corrupt
// bytes) into a lookup.
func (c *Cache[V]) classify(key string, e l2.Entry, now time.Time) lookup[V] {
	lk := lookup[V]{reachable: true, raw: e.Raw, announce: !e.Tombstone, at: now}
	if e.Corrupt {
		c.st.decodeErrors.Add(1)
		c.log.Warn("nearcache: unreadable value in Redis; reloading", zap.String("key", key))
		return lk
	}
	if e.Tombstone || (!e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)) {
		return lk // deleted, or expired by the writer's clock though Redis still holds it
	}
	it, ok := c.decodeEntry(key, &e)
	if !ok {
		return lk
	}
	if !e.StaleAt.IsZero() && !now.Before(e.StaleAt) {
		stale := it // a copy of its own, so that it stays off the heap on a hit
		lk.stale = &stale
		return lk
	}
	c.st.l2Hits.Add(1)
	lk.it, lk.fresh = it, true
	lk.until = e.ExpiresAt
	if !e.StaleAt.IsZero() {
		lk.until = e.StaleAt
	}
	return lk
}

func (c *Cache[V]) decodeEntry(key string, e *l2.Entry) (item[V], bool) {
	if e.Negative {
		return item[V]{neg: true}, true
	}
	v, err := safeUnmarshal(c.codec, e.Value)
	if err != nil {
		c.st.decodeErrors.Add(1)
		c.log.Warn("nearcache: value in Redis does not decode; reloading", zap.String("key", key), zap.Error(err))
		return item[V]{}, false
	}
	return item[V]{v: v}, true
}

// errBreakerOpen is what a Redis operation skipped by the open circuit
// breaker returns.
var errBreakerOpen = fmt.Errorf("%w (circuit breaker open)", ErrUnavailable)

// redisOp runs one Redis operation of the Cache's own shared work (a
// flight's L2 read or write-back, on a context the Cache owns) through the
// circuit breaker, bounded by RedisTimeout (fn gets the bounded context):
// while the breaker is open it is skipped (counted) and returns
// errBreakerOpen; otherwise its outcome is recorded, so every call the
// breaker lets through, including a half-open probe, settles the breaker.
// The flight's own deadline (LoadTimeout) ending a call is a failure of
// Redis like RedisTimeout.
func (c *Cache[V]) redisOp(ctx context.Context, fn func(ctx context.Context) error) error {
	return c.redisCall(ctx, false, true, fn)
}

// callerOp is redisOp for a call on the caller's ctx (writes): a caller
// whose ctx has already ended sends nothing and gets the ctx's error, and
// an error while the caller's ctx has ended says nothing about Redis (an
// HTTP handler out of budget must not open the breaker for everyone). It
// is not recorded; a half-open probe it held is released at once.
func (c *Cache[V]) callerOp(ctx context.Context, bounded bool, fn func(ctx context.Context) error) error {
	return c.redisCall(ctx, true, bounded, fn)
}

func (c *Cache[V]) redisCall(ctx context.Context, caller, bounded bool, fn func(ctx context.Context) error) error {
	if caller {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if !c.brk.allow() {
		c.st.l2Skipped.Add(1)
		return errBreakerOpen
	}
	var err error
	if bounded {
		rctx, cancel := c.redisCtx(ctx)
		err = fn(rctx)
		cancel()
	} else {
		err = fn(ctx)
	}
	if caller && err != nil && ctx.Err() != nil {
		c.brk.release()
		return err
	}
	c.recordRedis(err)
	return err
}

// recordRedis tells the breaker whether err means Redis is unreachable: any
// failure except an answer from Redis (l2.ErrOperation, a server error
// reply) and a cancellation (Close).
func (c *Cache[V]) recordRedis(err error) {
	conn := err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, l2.ErrNotFound) &&
		!errors.Is(err, l2.ErrOperation) && !isReply(err)
	if changed, state := c.brk.record(conn); changed {
		c.log.Warn("nearcache: redis circuit breaker changed state", zap.Stringer("state", state), zap.Error(err))
	}
}

// isReply reports whether err is an error reply from Redis. (A function of
// its own, so that the target of errors.As is allocated only on errors.)
func isReply(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}

// entry builds the L2 envelope of an item with ttl as its freshness.
func (c *Cache[V]) entry(key string, it item[V], ttl time.Duration) (l2.Entry, error) {
	if it.neg {
		return l2.Entry{Negative: true, TTL: ttl}, nil
	}
	b, err := safeMarshal(c.codec, it.v)
	if err != nil {
		c.st.encodeErrors.Add(1)
		return l2.Entry{}, fmt.Errorf("tiered: encode %q: %w", key, err)
	}
	e := l2.Entry{Value: b, TTL: ttl}
	if c.cfg.FailSafeMaxStale > 0 {
		e.TTL, e.FreshFor = ttl+c.cfg.FailSafeMaxStale, ttl
	}
	return e, nil
}

// storeLoaded writes a loaded item to L2 unless the key changed since it was
// read (raw), publishing its invalidation; it reports whether the item may
// be kept in L1.
func (c *Cache[V]) storeLoaded(ctx context.Context, key string, it item[V], ttl time.Duration, look lookup[V]) bool {
	e, err := c.entry(key, it, ttl)
	if err != nil {
		c.log.Warn("nearcache: loaded value not stored in Redis", zap.String("key", key), zap.Error(err))
		return true // this process's value; L1 may keep it
	}
	written := c.storeLoadedMany(ctx, map[string]l2.Entry{key: e}, map[string][]byte{key: look.raw}, map[string]bool{key: look.announce})
	if written != nil && !written[key] {
		c.st.conflicts.Add(1)
		return false
	}
	return true
}

// fill stores it in L1 through ticket t, for at most ttl, never past until
// (the L2 value's freshness), and briefly or not at all while the
// invalidation stream is unhealthy.
func (c *Cache[V]) fill(t l1.Ticket, it item[V], ttl time.Duration, until, now time.Time) {
	if !until.IsZero() {
		if r := until.Sub(now); r < ttl {
			ttl = r
		}
	}
	if c.bus != nil {
		if h := c.bus.Health(); !h.Healthy {
			if c.cfg.UnhealthyL1TTL < 0 {
				return
			}
			ttl = min(ttl, c.cfg.UnhealthyL1TTL)
		}
	}
	if c.cfg.L1TTLJitter > 0 {
		ttl -= time.Duration(rand.Float64() * c.cfg.L1TTLJitter * float64(ttl))
	}
	if ttl <= 0 {
		return
	}
	c.local.Fill(t, it, ttl)
}
