package tiered

import "time"

// Option overrides a Config setting for one call.
type Option interface{ apply(*callOptions) }

type callOptions struct {
	ttl         time.Duration
	l1TTL       time.Duration
	negativeTTL time.Duration
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
