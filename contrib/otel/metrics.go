package nearcacheotel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// ErrDuplicateNamespace is returned (wrapped) by [RegisterMetrics] and
// [Registration.Add] when two caches have the same namespace: their
// measurements would carry the same attributes.
var ErrDuplicateNamespace = errors.New("nearcacheotel: duplicate namespace")

// ErrInvalidCache is returned (wrapped) for a nil cache or one whose
// namespace is not valid UTF-8 (not a valid attribute value).
var ErrInvalidCache = errors.New("nearcacheotel: invalid cache")

// ErrUnregistered is returned by [Registration.Add] after
// [Registration.Unregister].
var ErrUnregistered = errors.New("nearcacheotel: metrics unregistered")

// Registration is the set of caches whose Stats a MeterProvider reads, as
// [RegisterMetrics] set it up. It is safe for concurrent use: Add and
// Remove change the set while collections go on.
type Registration struct {
	inst    instruments
	causes  []invalidation.Cause        // the values of CauseKey, every one always observed
	reasons []invalidation.HealthReason // the values of ReasonKey, every one always observed
	now     func() time.Time            // the clock of nearcache.invalidation.unhealthy_duration
	reg     metric.Registration         // the callback; set once by RegisterMetrics

	mu     sync.Mutex               // serialises Add, Remove and Unregister
	done   bool                     // guarded by mu: Unregister was called
	caches atomic.Pointer[[]source] // written under mu, never modified in place; read by the callback without a lock
}

// source is a cache with the namespace it had when it was added, and the
// attribute sets of its measurements, built once so that a collection
// allocates none.
type source struct {
	ns        string
	src       tiered.StatsSource
	cache     metric.ObserveOption                     // {cache}
	states    [len(breakerStates)]metric.ObserveOption // {cache, state}
	causes    []metric.ObserveOption                   // {cache, cause}, in the order of Registration.causes
	reasons   []metric.ObserveOption                   // {cache, reason}, in the order of Registration.reasons
	quantiles [len(quantiles)]metric.ObserveOption     // {cache, quantile}
}

// instruments are a Registration's observable instruments.
type instruments struct {
	counters      [len(counterDefs)]metric.Int64ObservableCounter
	upDowns       [len(upDownDefs)]metric.Int64ObservableUpDownCounter
	repairs       metric.Int64ObservableCounter
	breakerState  metric.Int64ObservableGauge
	healthy       metric.Int64ObservableGauge
	reasons       metric.Int64ObservableGauge
	unhealthyTime metric.Float64ObservableGauge
	roundTripQ    metric.Float64ObservableGauge
	loadQ         metric.Float64ObservableGauge
	lagQ          metric.Float64ObservableGauge
}

// RegisterMetrics creates nearcache's observable instruments on a Meter of
// mp (the global MeterProvider if mp is nil) and registers one callback
// that, at each collection, calls Stats once per cache and observes every
// instrument from that snapshot. It does no I/O and keeps no counters of its
// own: every value is cumulative since the cache was created (see doc.go
// for the list).
//
// It returns an error, and registers nothing, if an instrument cannot be
// created, the callback cannot be registered, or caches holds a nil cache,
// a namespace that is not valid UTF-8, or two caches with one namespace.
// Register once per MeterProvider and Add further caches to the
// Registration: two Registrations of one cache on one MeterProvider would
// observe it twice.
func RegisterMetrics(mp metric.MeterProvider, caches ...tiered.StatsSource) (*Registration, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(ScopeName)
	r := &Registration{
		causes:  invalidation.Causes(),
		reasons: invalidation.AllHealthReasons(),
		now:     time.Now,
	}
	empty := []source{}
	r.caches.Store(&empty)
	observables, err := r.inst.create(meter)
	if err != nil {
		return nil, err
	}
	if err := r.Add(caches...); err != nil {
		return nil, err
	}
	reg, err := meter.RegisterCallback(r.observe, observables...)
	if err != nil {
		return nil, fmt.Errorf("nearcacheotel: register callback: %w", err)
	}
	r.reg = reg
	return r, nil
}

// Add makes the Registration read caches too, from the next collection on.
// It adds nothing and returns an error if one of the caches is nil, has a
// namespace that is not valid UTF-8 ([ErrInvalidCache]), or has the
// namespace of a cache already read or of another one of caches
// ([ErrDuplicateNamespace]): Remove the old cache first to replace it.
// After Unregister it returns [ErrUnregistered].
func (r *Registration) Add(caches ...tiered.StatsSource) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return ErrUnregistered
	}
	next := slices.Clone(*r.caches.Load())
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
			errs = append(errs, fmt.Errorf("%w: %q is already read", ErrDuplicateNamespace, ns))
		default:
			next = append(next, r.newSource(ns, src))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	r.caches.Store(&next)
	return nil
}

// Remove stops reading the caches with the namespaces of caches, from the
// next collection on: their data points disappear. Namespaces not read, and
// nil caches, are ignored.
func (r *Registration) Remove(caches ...tiered.StatsSource) {
	r.mu.Lock()
	defer r.mu.Unlock()
	drop := make(map[string]bool, len(caches))
	for _, src := range caches {
		if src != nil {
			drop[src.Namespace()] = true
		}
	}
	next := slices.DeleteFunc(slices.Clone(*r.caches.Load()), func(s source) bool { return drop[s.ns] })
	r.caches.Store(&next)
}

// Unregister removes the callback: later collections hold no nearcache
// data from this Registration. It is idempotent; only the first call can
// return an error (the MeterProvider's).
func (r *Registration) Unregister() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil
	}
	r.done = true
	empty := []source{}
	r.caches.Store(&empty)
	return r.reg.Unregister()
}

func (r *Registration) newSource(ns string, src tiered.StatsSource) source {
	cache := CacheKey.String(ns)
	with := func(kv attribute.KeyValue) metric.ObserveOption {
		return metric.WithAttributeSet(attribute.NewSet(cache, kv))
	}
	s := source{ns: ns, src: src, cache: metric.WithAttributeSet(attribute.NewSet(cache))}
	for i, b := range breakerStates {
		s.states[i] = with(StateKey.String(b.String()))
	}
	s.causes = make([]metric.ObserveOption, len(r.causes))
	for i, c := range r.causes {
		s.causes[i] = with(CauseKey.String(c.String()))
	}
	s.reasons = make([]metric.ObserveOption, len(r.reasons))
	for i, reason := range r.reasons {
		s.reasons[i] = with(ReasonKey.String(reason.String()))
	}
	for i, q := range quantiles {
		s.quantiles[i] = with(QuantileKey.String(q))
	}
	return s
}

// observe is the callback: one Stats per cache.
func (r *Registration) observe(_ context.Context, o metric.Observer) error {
	now := r.now()
	list := *r.caches.Load()
	for i := range list {
		s := &list[i]
		st := s.src.Stats()
		r.observeCache(o, s, &st, now)
	}
	return nil
}

func (r *Registration) observeCache(o metric.Observer, s *source, st *tiered.Stats, now time.Time) {
	in := &r.inst
	for i := range counterDefs {
		o.ObserveInt64(in.counters[i], clamp(counterDefs[i].value(st)), s.cache)
	}
	for i := range upDownDefs {
		o.ObserveInt64(in.upDowns[i], upDownDefs[i].value(st), s.cache)
	}
	for i, c := range r.causes {
		var n uint64
		if int(c) < len(st.Invalidation.InvalidateAll) {
			n = st.Invalidation.InvalidateAll[c]
		}
		o.ObserveInt64(in.repairs, clamp(n), s.causes[i])
	}
	for i, b := range breakerStates {
		o.ObserveInt64(in.breakerState, oneIf(st.L2.Breaker == b), s.states[i])
	}
	h := &st.Health
	o.ObserveInt64(in.healthy, oneIf(h.Healthy), s.cache)
	for i, reason := range r.reasons {
		o.ObserveInt64(in.reasons, oneIf(!h.Healthy && h.Reasons&reason != 0), s.reasons[i])
	}
	var unhealthy float64
	if !h.Healthy && !h.UnhealthySince.IsZero() {
		unhealthy = max(now.Sub(h.UnhealthySince).Seconds(), 0)
	}
	o.ObserveFloat64(in.unhealthyTime, unhealthy, s.cache)
	observeQuantiles(o, in.roundTripQ, &st.L2.Store.Latency, s)
	observeQuantiles(o, in.loadQ, &st.Loads.Latency, s)
	observeQuantiles(o, in.lagQ, &st.Invalidation.Lag, s)
}

// observeQuantiles observes p's percentiles and maximum, in seconds, once
// there is an observation: a distribution with none has no quantiles.
func observeQuantiles(o metric.Observer, g metric.Float64ObservableGauge, p *l2.LatencyStats, s *source) {
	if p.Count == 0 {
		return
	}
	for i, d := range [len(quantiles)]time.Duration{p.P50, p.P90, p.P99, p.P999, p.Max} {
		o.ObserveFloat64(g, d.Seconds(), s.quantiles[i])
	}
}

// create creates the instruments on meter and returns them as the
// callback's list.
func (in *instruments) create(meter metric.Meter) ([]metric.Observable, error) {
	var errs []error
	var all []metric.Observable
	keep := func(o metric.Observable, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		all = append(all, o)
	}
	for i, d := range counterDefs {
		var err error
		in.counters[i], err = meter.Int64ObservableCounter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		keep(in.counters[i], err)
	}
	for i, d := range upDownDefs {
		var err error
		in.upDowns[i], err = meter.Int64ObservableUpDownCounter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		keep(in.upDowns[i], err)
	}
	var err error
	in.repairs, err = meter.Int64ObservableCounter(nameRepairs, metric.WithUnit("{repair}"),
		metric.WithDescription("Whole-L1 drops by cause: a clear by another instance, or the repair of a detected loss."))
	keep(in.repairs, err)
	in.breakerState, err = meter.Int64ObservableGauge(nameBreakerState, metric.WithUnit("1"),
		metric.WithDescription("State of the circuit breaker in front of Redis: 1 for the current state (closed, open, half-open), 0 for the others."))
	keep(in.breakerState, err)
	in.healthy, err = meter.Int64ObservableGauge(nameHealthy, metric.WithUnit("1"),
		metric.WithDescription("1 while the invalidation stream is healthy, 0 while local copies may miss invalidations."))
	keep(in.healthy, err)
	in.reasons, err = meter.Int64ObservableGauge(nameUnhealthyReason, metric.WithUnit("1"),
		metric.WithDescription("1 for each reason the invalidation stream is unhealthy now, 0 for the others."))
	keep(in.reasons, err)
	in.unhealthyTime, err = meter.Float64ObservableGauge(nameUnhealthyTime, metric.WithUnit("s"),
		metric.WithDescription("Time since the invalidation stream became unhealthy, 0 while healthy."))
	keep(in.unhealthyTime, err)
	in.roundTripQ, err = meter.Float64ObservableGauge(nameRoundTripQ, metric.WithUnit("s"),
		metric.WithDescription("Quantiles of Redis round-trip times (one per operation or batch) since the cache was created."))
	keep(in.roundTripQ, err)
	in.loadQ, err = meter.Float64ObservableGauge(nameLoadDurationQ, metric.WithUnit("s"),
		metric.WithDescription("Quantiles of loader call durations since the cache was created."))
	keep(in.loadQ, err)
	in.lagQ, err = meter.Float64ObservableGauge(nameLagQ, metric.WithUnit("s"),
		metric.WithDescription("Quantiles of invalidation propagation delays, from the publisher's clock to this instance's, since the cache was created."))
	keep(in.lagQ, err)
	if len(errs) > 0 {
		return nil, fmt.Errorf("nearcacheotel: create instruments: %w", errors.Join(errs...))
	}
	return all, nil
}

// clamp converts a counter to the int64 of an Int64 instrument.
func clamp(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func oneIf(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
