package tiered

import "time"

// Option overrides a Config setting for one call.
type Option interface{ apply(*callOptions) }

type callOptions struct {
	ttl         time.Duration
	l1TTL       time.Duration
	negativeTTL time.Duration
	version     uint64
}

type optionFunc func(*callOptions)

func (f optionFunc) apply(o *callOptions) { f(o) }

// WithTTL sets the Redis freshness TTL of values written by this call.
func WithTTL(d time.Duration) Option { return optionFunc(func(o *callOptions) { o.ttl = d }) }

// WithL1TTL caps the local TTL of values filled by this call (it never
// exceeds Config.MaxL1TTL or the value's remaining Redis TTL).
func WithL1TTL(d time.Duration) Option { return optionFunc(func(o *callOptions) { o.l1TTL = d }) }

// WithNegativeTTL caches a not-found result of this call's loader for d
// (zero: use Config.NegativeTTL; negative: do not cache it).
func WithNegativeTTL(d time.Duration) Option {
	return optionFunc(func(o *callOptions) {
		if d != 0 {
			o.negativeTTL = d
		}
	})
}

// WithVersion makes a Set, SetMany or Delete versioned: v is the version of
// the data being written (the database row's version or commit timestamp;
// any increasing uint64). Redis keeps the version with the value (or, for a
// Delete, with a tombstone that lives as long as a value would, WithTTL or
// Config.TTL), and the write script refuses a write whose version is not
// newer than the stored one: the call returns an error that errors.Is
// ErrStale, writes nothing for that key and publishes nothing for it. So
// two writers racing on one key end with the newer version everywhere,
// whichever call lands last. An unversioned write always goes through; a
// load's write-back never replaces a versioned value. Zero means
// unversioned.
//
// Without Redis (L1-only), the version is compared with the entry L1 holds;
// a key that was deleted or evicted forgets its version.
func WithVersion(v uint64) Option { return optionFunc(func(o *callOptions) { o.version = v }) }

func (c *Cache[V]) options(opts []Option) callOptions {
	o := callOptions{ttl: c.cfg.TTL, l1TTL: c.cfg.MaxL1TTL, negativeTTL: c.cfg.NegativeTTL}
	if len(opts) == 0 {
		return o // withDefaults made these valid; and o does not escape
	}
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
