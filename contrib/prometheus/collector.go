package nearcacheprom

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// ErrDuplicateNamespace is returned (wrapped) by [Collector.Add], and by
// registration of a Collector built by [NewCollector], when two caches have
// the same namespace: their series would carry the same cache label.
var ErrDuplicateNamespace = errors.New("nearcacheprom: duplicate namespace")

// ErrInvalidCache is returned (wrapped) for a nil cache or one whose
// namespace is not valid UTF-8 (not a valid label value).
var ErrInvalidCache = errors.New("nearcacheprom: invalid cache")

// Collector is a [prometheus.Collector] that reads the Stats of a set of
// caches at scrape time. It is safe for concurrent use.
type Collector struct {
	d   descs
	now func() time.Time // the clock of nearcache_invalidation_unhealthy_seconds

	// err is set by NewCollector when its arguments were invalid, and
	// never changes: the Collector then cannot be registered.
	err     error
	errDesc *prometheus.Desc // an invalid Desc carrying err

	mu     sync.Mutex               // serialises Add and Remove
	caches atomic.Pointer[[]source] // written under mu, never modified in place; read by Collect without a lock
}

// source is a cache with the namespace it had when it was added.
type source struct {
	ns  string
	src tiered.StatsSource
}

// NewCollector returns a prometheus.Collector reading the Stats of caches at
// scrape time.
//
// NewCollector does not fail. If caches holds a nil cache, a namespace that
// is not valid UTF-8, or two caches with the same namespace, the Collector
// reads none of them and carries the error, as an invalid
// [prometheus.NewDesc] does: registering it fails with that error (errors.Is
// [ErrDuplicateNamespace] or [ErrInvalidCache]; MustRegister panics with it),
// and a Gather that reaches its Collect fails too, so two caches never end up
// in one series. Later calls of Add and Remove do not clear that error.
func NewCollector(caches ...tiered.StatsSource) *Collector {
	c := &Collector{d: newDescs(), now: time.Now}
	empty := []source{}
	c.caches.Store(&empty)
	if err := c.Add(caches...); err != nil {
		c.err = err
		c.errDesc = prometheus.NewInvalidDesc(err)
	}
	return c
}

// Add makes the Collector read caches too, from the next scrape on (safe
// while scraping). It adds nothing and returns an error if one of the caches
// is nil or has a namespace that is not valid UTF-8 (errors.Is
// [ErrInvalidCache]), or has the namespace of a cache already read or of
// another one of caches (errors.Is [ErrDuplicateNamespace]): Remove the old
// cache first to replace it.
func (c *Collector) Add(caches ...tiered.StatsSource) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := *c.caches.Load()
	next := slices.Clone(cur)
	var errs []error
	for i, src := range caches {
		if src == nil {
			errs = append(errs, fmt.Errorf("%w: cache %d is nil", ErrInvalidCache, i))
			continue
		}
		ns := src.Namespace()
		switch {
		case !utf8.ValidString(ns):
			errs = append(errs, fmt.Errorf("%w: namespace %q is not valid UTF-8", ErrInvalidCache, ns))
		case slices.ContainsFunc(next, func(s source) bool { return s.ns == ns }):
			errs = append(errs, fmt.Errorf("%w: %q is already collected", ErrDuplicateNamespace, ns))
		default:
			next = append(next, source{ns: ns, src: src})
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	c.caches.Store(&next)
	return nil
}

// Remove stops reading the caches with the namespaces of caches, from the
// next scrape on (safe while scraping): their series disappear. Namespaces
// not read are ignored, and so are nil caches.
func (c *Collector) Remove(caches ...tiered.StatsSource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	drop := make(map[string]bool, len(caches))
	for _, src := range caches {
		if src != nil {
			drop[src.Namespace()] = true
		}
	}
	next := slices.DeleteFunc(slices.Clone(*c.caches.Load()), func(s source) bool { return drop[s.ns] })
	c.caches.Store(&next)
}

// Describe sends the fixed Desc of every metric the Collector exports, and
// an invalid Desc if NewCollector was given invalid caches.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	if c.err != nil {
		ch <- c.errDesc
	}
	for _, d := range c.d.all() {
		ch <- d
	}
}

// Collect reads each cache's Stats once and sends its metrics. It does no
// I/O.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.err != nil {
		ch <- prometheus.NewInvalidMetric(c.errDesc, c.err)
		return
	}
	now := c.now()
	for _, s := range *c.caches.Load() {
		st := s.src.Stats()
		c.collect(ch, s.ns, &st, now)
	}
}

func (c *Collector) collect(ch chan<- prometheus.Metric, ns string, st *tiered.Stats, now time.Time) {
	d := &c.d
	for i, m := range counters {
		ch <- prometheus.MustNewConstMetric(d.counters[i], prometheus.CounterValue, float64(m.value(st)), ns)
	}
	for i, m := range gauges {
		ch <- prometheus.MustNewConstMetric(d.gauges[i], prometheus.GaugeValue, m.value(st), ns)
	}

	for _, b := range breakerStates {
		ch <- prometheus.MustNewConstMetric(d.breakerState, prometheus.GaugeValue, boolValue(st.L2.Breaker == b), ns, b.String())
	}
	for _, cause := range invalidation.Causes() {
		var n uint64
		if int(cause) < len(st.Invalidation.InvalidateAll) {
			n = st.Invalidation.InvalidateAll[cause]
		}
		ch <- prometheus.MustNewConstMetric(d.repairs, prometheus.CounterValue, float64(n), ns, cause.String())
	}
	h := st.Health
	ch <- prometheus.MustNewConstMetric(d.healthy, prometheus.GaugeValue, boolValue(h.Healthy), ns)
	for _, r := range invalidation.AllHealthReasons() {
		ch <- prometheus.MustNewConstMetric(d.reasons, prometheus.GaugeValue, boolValue(!h.Healthy && h.Reasons&r != 0), ns, r.String())
	}
	var unhealthy float64
	if !h.Healthy && !h.UnhealthySince.IsZero() {
		unhealthy = max(now.Sub(h.UnhealthySince).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(d.unhealthySeconds, prometheus.GaugeValue, unhealthy, ns)

	// Every histogram has the same fixed bounds; those of a tier that is
	// not in use (L1-only: no Redis, no invalidation stream) are empty,
	// and are exported with the loader histogram's bounds.
	bounds := st.Loads.LatencyHistogram.Bounds
	ch <- histogram(d.roundTrip, &st.L2.Store.LatencyHistogram, bounds, ns)
	ch <- histogram(d.loadDuration, &st.Loads.LatencyHistogram, bounds, ns)
	ch <- histogram(d.lag, &st.Invalidation.LagHistogram, bounds, ns)
}

// breakerStates are the values of nearcache_breaker_state's state label.
var breakerStates = [...]tiered.BreakerState{tiered.BreakerClosed, tiered.BreakerOpen, tiered.BreakerHalfOpen}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// histogram converts a cumulative fixed-bucket histogram to a constant
// Prometheus histogram, in seconds. An empty h (no bounds: a tier not in
// use) gets the bounds given, with zero counts.
func histogram(desc *prometheus.Desc, h *l2.Histogram, bounds []time.Duration, ns string) prometheus.Metric {
	if len(h.Bounds) > 0 {
		bounds = h.Bounds
	}
	buckets := make(map[float64]uint64, len(bounds))
	for i, b := range bounds {
		var n uint64
		if i < len(h.Counts) && len(h.Bounds) > 0 {
			n = h.Counts[i]
		}
		buckets[b.Seconds()] = n
	}
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum.Seconds(), buckets, ns)
}
