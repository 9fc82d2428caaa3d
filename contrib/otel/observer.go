package nearcacheotel

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/nearcache/nearcache/tiered"
)

// MaxSpanKeys is the number of keys [WithKeys] records on a span at most:
// the first ones of a batch (KeyCountKey still counts them all).
const MaxSpanKeys = 16

// Option configures [NewObserver].
type Option interface{ apply(*config) }

type config struct {
	tp   trace.TracerProvider
	mp   metric.MeterProvider
	keys bool
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithTracerProvider sets the TracerProvider of the spans. If it is not
// given, or nil, the global one (otel.GetTracerProvider) is used.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) { c.tp = tp })
}

// WithMeterProvider sets the MeterProvider of the nearcache.load.duration
// histogram. If it is not given, or nil, the global one
// (otel.GetMeterProvider) is used.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.mp = mp })
}

// WithKeys records the keys of each load and write on its span, as
// KeysKey (the first [MaxSpanKeys] of a batch). Keys are left out by
// default: they may be personal data, and a batch's can be long.
func WithKeys() Option {
	return optionFunc(func(c *config) { c.keys = true })
}

// observer holds what the hooks of one NewObserver share.
type observer struct {
	tracer   trace.Tracer
	duration metric.Float64Histogram
	keys     bool

	mu    sync.Mutex                          // serialises additions to attrs
	attrs atomic.Pointer[map[string]*nsAttrs] // by namespace; copy-on-write under mu, read without a lock
}

// spanKey is the context key of the span a hook started: its own per
// observer, so that LoadDone and WriteDone end their span even when
// tiered.JoinObservers put another observer's span in the ctx after it.
type spanKey struct{ o *observer }

// NewObserver returns hooks for tiered.Config.Observer that trace loads and
// writes and record the nearcache.load.duration histogram:
//
//   - a "nearcache.load" span per Loader or BatchLoader call, from LoadStart
//     to LoadDone. Its parent is the span in the ctx of the caller that
//     started the load (the Cache detaches the load from its callers'
//     cancellation, not from their values), and the loader's ctx carries it,
//     so the loader's own spans are its children. Attributes: CacheKey,
//     BatchKey, KeyCountKey, NotFoundKey, CoalescedKey (callers that joined
//     the load instead of starting their own), KeysKey with WithKeys;
//     only CacheKey is given at the start, where a sampler sees it, the
//     others once the span is known to record. A loader error sets the
//     span's status to Error, records it as an exception event and sets
//     error.type (the error's type name, as the semantic conventions have
//     it); a not-found result is no error.
//   - a "nearcache.set", "nearcache.delete" or "nearcache.clear" span per
//     write that goes to Redis (Set and SetMany, Delete and DeleteMany,
//     Clear), a child of the caller's span: CacheKey, KeyCountKey (not for
//     clear), KeysKey with WithKeys; Error status with the caller's error.
//   - a record of nearcache.load.duration (seconds) per loader call, with
//     CacheKey, and error.type when the loader failed.
//
// The hooks run on the miss and write paths only: a Cache never calls its
// Observer on an L1 hit. The cache attribute's options are built once per
// namespace; the other attributes are built only for a span that is
// recording. With no-op providers a load or a write allocates only the
// two ctx layers that carry its span (the tracer's, and one under a key of
// this Observer's, so that each of several joined Observers ends its own
// span); a histogram record of a successful load allocates nothing.
//
// The Invalidated, Repaired, BreakerChanged and StaleServed hooks are left
// nil: they get no ctx, so there is no span to put an event on, and what
// they report is already counted in Stats, which [RegisterMetrics] exports
// (nearcache.invalidation.applied, nearcache.invalidation.repairs by
// cause, nearcache.breaker.opens and nearcache.breaker.state,
// nearcache.load.stale_served). Combine the Observer with hooks of your own
// with tiered.JoinObservers.
//
// One Observer may serve several Caches: each event names its namespace.
func NewObserver(opts ...Option) *tiered.Observer {
	var cfg config
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&cfg)
		}
	}
	if cfg.tp == nil {
		cfg.tp = otel.GetTracerProvider()
	}
	if cfg.mp == nil {
		cfg.mp = otel.GetMeterProvider()
	}
	o := &observer{tracer: cfg.tp.Tracer(ScopeName), keys: cfg.keys}
	h, err := cfg.mp.Meter(ScopeName).Float64Histogram(nameLoadDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Duration of loader calls (Loader or BatchLoader)."),
		metric.WithExplicitBucketBoundaries(slices.Clone(loadDurationBounds)...))
	if err != nil {
		otel.Handle(err)
	}
	if h == nil {
		h = metricnoop.Float64Histogram{}
	}
	o.duration = h
	empty := map[string]*nsAttrs{}
	o.attrs.Store(&empty)
	return &tiered.Observer{
		LoadStart:  o.loadStart,
		LoadDone:   o.loadDone,
		WriteStart: o.writeStart,
		WriteDone:  o.writeDone,
	}
}

func (o *observer) loadStart(ctx context.Context, ev tiered.LoadStartEvent) context.Context {
	ctx, span := o.tracer.Start(ctx, nameLoadSpan, o.attrsOf(ev.Namespace).start...)
	if span.IsRecording() {
		if o.keys {
			span.SetAttributes(BatchKey.Bool(ev.Batch), KeyCountKey.Int(len(ev.Keys)), keysAttr(ev.Keys))
		} else {
			span.SetAttributes(BatchKey.Bool(ev.Batch), KeyCountKey.Int(len(ev.Keys)))
		}
	}
	return context.WithValue(ctx, spanKey{o}, span)
}

func (o *observer) loadDone(ctx context.Context, ev tiered.LoadDoneEvent) {
	if span, ok := ctx.Value(spanKey{o}).(trace.Span); ok {
		if span.IsRecording() {
			span.SetAttributes(NotFoundKey.Int(ev.NotFound), CoalescedKey.Int(ev.Coalesced))
			if ev.Err != nil {
				setError(span, ev.Err)
			}
		}
		span.End()
	}
	if ev.Err == nil {
		o.duration.Record(ctx, ev.Duration.Seconds(), o.attrsOf(ev.Namespace).record...)
		return
	}
	o.duration.Record(ctx, ev.Duration.Seconds(), metric.WithAttributes(CacheKey.String(ev.Namespace), semconv.ErrorType(ev.Err)))
}

func (o *observer) writeStart(ctx context.Context, ev tiered.WriteStartEvent) context.Context {
	ctx, span := o.tracer.Start(ctx, writeSpanName(ev.Op), o.attrsOf(ev.Namespace).start...)
	if span.IsRecording() && ev.Op != "clear" {
		if o.keys {
			span.SetAttributes(KeyCountKey.Int(len(ev.Keys)), keysAttr(ev.Keys))
		} else {
			span.SetAttributes(KeyCountKey.Int(len(ev.Keys)))
		}
	}
	return context.WithValue(ctx, spanKey{o}, span)
}

func (o *observer) writeDone(ctx context.Context, ev tiered.WriteDoneEvent) {
	span, ok := ctx.Value(spanKey{o}).(trace.Span)
	if !ok {
		return
	}
	if ev.Err != nil && span.IsRecording() {
		setError(span, ev.Err)
	}
	span.End()
}

// writeSpanName is the span name of a write operation.
func writeSpanName(op string) string {
	switch op {
	case "set":
		return nameSetSpan
	case "delete":
		return nameDeleteSpan
	case "clear":
		return nameClearSpan
	}
	return "nearcache." + op
}

// setError marks span as failed with err.
func setError(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorType(err))
}

// keysAttr is KeysKey with the first MaxSpanKeys keys (copied: the event's
// slice is borrowed).
func keysAttr(keys []string) attribute.KeyValue {
	return KeysKey.StringSlice(keys[:min(len(keys), MaxSpanKeys)])
}

// nsAttrs are the options that carry a namespace's {cache} attribute,
// built once so that a load or write allocates none for them.
type nsAttrs struct {
	start  []trace.SpanStartOption // span start: {cache}, visible to samplers
	record []metric.RecordOption   // histogram record: {cache}
}

// attrsOf returns the options of namespace ns.
func (o *observer) attrsOf(ns string) *nsAttrs {
	if a, ok := (*o.attrs.Load())[ns]; ok {
		return a
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	cur := *o.attrs.Load()
	if a, ok := cur[ns]; ok {
		return a
	}
	cache := CacheKey.String(ns)
	a := &nsAttrs{
		start:  []trace.SpanStartOption{trace.WithAttributes(cache)},
		record: []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(cache))},
	}
	next := maps.Clone(cur)
	next[ns] = a
	o.attrs.Store(&next)
	return a
}
