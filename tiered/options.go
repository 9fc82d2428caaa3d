package tiered

import "time"

// Option overrides a Config setting for one call.
//
// Options shape what the call itself stores: the values it writes to Redis
// and the local copies it fills. A GetOrLoad or GetManyOrLoad stores only
// for the keys whose load it leads. A key it finds in L1, or whose load
// another call is already running (a GetOrLoad or GetManyOrLoad on the same
// Cache), it does not store: it returns that load's result, loaded with the
// leading call's loader and stored with the leading call's options, and
// uses neither its own options nor its own loader for that key. A key has
// one load, one value in Redis and one local copy at a time, so only one
// call's settings can apply to them; a caller that needs its own settings
// applied writes the value with Set. A GetManyOrLoad leads the keys no
// other call is loading and joins the others, key by key.
type Option interface{ apply(*callOptions) }

type callOptions struct {
	ttl         time.Duration
	l1TTL       time.Duration
	negativeTTL time.Duration
	version     uint64
	tags        []string
}

type optionFunc func(*callOptions)

func (f optionFunc) apply(o *callOptions) { f(o) }

// WithTTL sets the Redis freshness TTL of the values this call writes
// (by Set and SetMany, and by the loads a GetOrLoad or GetManyOrLoad leads),
// which also bounds their local copies, and the least lifetime of a
// versioned DeleteMany's tombstones. If d <= 0, Config.TTL. A key whose load
// the call joins keeps the leading call's TTL (see Option). A loader's
// SetTTL or SetKeyTTL overrides it for what that loader returns.
func WithTTL(d time.Duration) Option { return optionFunc(func(o *callOptions) { o.ttl = d }) }

// WithL1TTL caps the local TTL of the copies this call fills: by the loads
// a GetOrLoad or GetManyOrLoad leads (from Redis or from the loader), and by
// Set and SetMany without Redis. The TTL never exceeds Config.MaxL1TTL or
// the value's remaining Redis TTL. If d <= 0, Config.MaxL1TTL. A copy
// already in L1, or filled by a load the call joins, keeps the TTL it was
// filled with (see Option). A loader's SetL1TTL overrides it for what that
// loader returns.
func WithL1TTL(d time.Duration) Option { return optionFunc(func(o *callOptions) { o.l1TTL = d }) }

// WithNegativeTTL caches a not-found result of the loads this call leads
// for d, in Redis and in L1. If d is zero, Config.NegativeTTL; negative: the
// result is not cached. A key whose load the call joins is cached, or not,
// as the leading call says (see Option). A loader's SetTTL or SetKeyTTL
// overrides it for the not-found results that loader returns.
func WithNegativeTTL(d time.Duration) Option {
	return optionFunc(func(o *callOptions) {
		if d != 0 {
			o.negativeTTL = d
		}
	})
}

// WithVersion makes a Set, SetMany or DeleteMany versioned: v is the
// version of the data being written (the database row's version or commit
// timestamp; any uint64 that grows with each commit). Redis keeps the
// version with the value (or, for a delete, with a tombstone that lives at
// least as long as the value it replaces and as a value written now), and
// the write script refuses a write whose version is not newer than the
// stored one: the call returns an error that errors.Is ErrStale and writes
// nothing for that key. So two writers racing on one key end with the newer
// version everywhere, whichever call lands last. Every other write
// (unversioned, or a load's write-back) keeps the stored version. Clear
// removes keys and their versions. Zero means unversioned.
//
// A single-key refused write publishes nothing. In a SetMany or DeleteMany
// whose other keys were written, the invalidation names the refused keys
// too, so other instances drop their copies of them and read them again.
//
// Without Redis (L1-only), the Cache remembers the versions written (up to
// about a million keys, then it forgets them all at once); Clear forgets
// them, as it does in Redis.
//
// GetOrLoad and GetManyOrLoad ignore it, whether they lead a load or join
// one: a loader reports no version, and a load's write-back keeps the
// stored one.
func WithVersion(v uint64) Option { return optionFunc(func(o *callOptions) { o.version = v }) }

// WithTags tags the values this call writes (Set, SetMany) and the results
// of the loads it leads (GetOrLoad, GetManyOrLoad; values and cached
// not-found results, with any tags their loader adds with SetTags):
// InvalidateTag of any of them makes the entry a miss on every instance
// and in Redis. A load's tags take the versions the tags have before its
// loader runs, a write's when it begins, read from Redis (one more round
// trip) so that a tag moved on by an invalidation this instance has not
// heard yet does not make the value a miss. Tags cost, per tagged entry, its tags' names and versions
// in Redis and in L1, and on a local hit one atomic load (a read-locked
// look per tag after a tag changed). At most l2.MaxTags tags, each 1 to
// 1024 bytes; GetOrLoad and GetManyOrLoad whose tags break these limits
// ignore them and return an error.
func WithTags(tags ...string) Option {
	return optionFunc(func(o *callOptions) { o.tags = append(o.tags[:len(o.tags):len(o.tags)], tags...) })
}

func (c *Cache[V]) options(opts []Option) callOptions {
	if len(opts) == 0 { // withDefaults made these valid
		return callOptions{ttl: c.cfg.TTL, l1TTL: c.cfg.MaxL1TTL, negativeTTL: c.cfg.NegativeTTL}
	}
	return c.applyOptions(opts)
}

// applyOptions is options with options given. It is apart because opt.apply
// takes its callOptions by pointer through an interface, which moves it to
// the heap: a call without options then allocates nothing.
func (c *Cache[V]) applyOptions(opts []Option) callOptions {
	o := callOptions{ttl: c.cfg.TTL, l1TTL: c.cfg.MaxL1TTL, negativeTTL: c.cfg.NegativeTTL}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	if o.ttl <= 0 {
		o.ttl = c.cfg.TTL
	}
	if o.l1TTL <= 0 || o.l1TTL > c.cfg.MaxL1TTL {
		o.l1TTL = c.cfg.MaxL1TTL
	}
	if o.negativeTTL < 0 {
		o.negativeTTL = 0
	}
	return o
}
