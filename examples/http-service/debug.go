package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nearcache/nearcache/examples/internal/demo"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// recentEvents is how many events of each kind the debug page keeps.
const recentEvents = 20

// eventLog keeps what a tiered.Observer hears that Stats only counts: the
// cache's most recent repairs (drops of the whole L1, with their cause),
// circuit-breaker changes and stale values served by fail-safe. Each kind
// has its own ring of the last few, so that a burst of one kind (stale
// values during an outage) does not push the others out.
type eventLog struct {
	mu      sync.Mutex
	repairs ring[repairEvent]  // guarded by mu
	breaker ring[breakerEvent] // guarded by mu
	stale   ring[staleEvent]   // guarded by mu
}

// repairEvent is one drop of the whole L1.
type repairEvent struct {
	Time    time.Time `json:"time"`
	Cause   string    `json:"cause"`   // invalidation.Cause's name, as in the metrics' labels
	Meaning string    `json:"meaning"` // what the cause means, in words
}

// breakerEvent is one change of the circuit breaker's state.
type breakerEvent struct {
	Time time.Time `json:"time"`
	From string    `json:"from"`
	To   string    `json:"to"`
}

// staleEvent is one stale value served because the loader failed.
type staleEvent struct {
	Time  time.Time `json:"time"`
	Key   string    `json:"key"`
	Error string    `json:"error"`
}

func newEventLog(n int) *eventLog {
	return &eventLog{repairs: newRing[repairEvent](n), breaker: newRing[breakerEvent](n), stale: newRing[staleEvent](n)}
}

// observer returns the hooks that fill the log. They run on the cache's
// goroutines and only take the mutex for an append.
func (l *eventLog) observer() *tiered.Observer {
	return &tiered.Observer{
		Repaired: func(ev tiered.RepairEvent) {
			e := repairEvent{Time: time.Now(), Cause: ev.Cause.String(), Meaning: causeMeaning[ev.Cause]}
			l.mu.Lock()
			l.repairs.add(e)
			l.mu.Unlock()
		},
		BreakerChanged: func(ev tiered.BreakerEvent) {
			e := breakerEvent{Time: time.Now(), From: ev.From.String(), To: ev.To.String()}
			l.mu.Lock()
			l.breaker.add(e)
			l.mu.Unlock()
		},
		StaleServed: func(ev tiered.StaleEvent) {
			e := staleEvent{Time: time.Now(), Key: ev.Key}
			if ev.Err != nil {
				e.Error = ev.Err.Error()
			}
			l.mu.Lock()
			l.stale.add(e)
			l.mu.Unlock()
		},
	}
}

// recent returns the log's events, newest first, with how many of each
// kind were seen since the start.
func (l *eventLog) recent() eventsView {
	l.mu.Lock()
	defer l.mu.Unlock()
	return eventsView{
		Repairs:        recentView[repairEvent]{Total: l.repairs.total, Recent: l.repairs.newestFirst()},
		BreakerChanges: recentView[breakerEvent]{Total: l.breaker.total, Recent: l.breaker.newestFirst()},
		StaleServed:    recentView[staleEvent]{Total: l.stale.total, Recent: l.stale.newestFirst()},
	}
}

// ring keeps the last len(buf) values added. Not safe for concurrent use.
type ring[T any] struct {
	buf   []T    // buf[next-1] is the newest value, buf[next] the oldest once full
	next  int    // where the next value goes
	total uint64 // values ever added
}

func newRing[T any](n int) ring[T] { return ring[T]{buf: make([]T, max(n, 1))} }

func (r *ring[T]) add(v T) {
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	r.total++
}

// newestFirst returns a copy of the values kept, newest first.
func (r *ring[T]) newestFirst() []T {
	n := int(min(r.total, uint64(len(r.buf))))
	out := make([]T, n)
	for i := range out {
		out[i] = r.buf[(r.next-1-i+len(r.buf))%len(r.buf)]
	}
	return out
}

// causeMeaning explains each cause of a repair on the page.
var causeMeaning = map[invalidation.Cause]string{
	invalidation.CauseClear:         "another instance cleared the namespace",
	invalidation.CauseGap:           "a sequence number was skipped: messages were lost",
	invalidation.CauseSeqReset:      "a sequence went backwards or vanished (key evicted, flush, server reset)",
	invalidation.CauseLostTail:      "anti-entropy: Redis is ahead of what arrived",
	invalidation.CauseEpoch:         "anti-entropy: the namespace's epoch key is missing or changed",
	invalidation.CauseServerChanged: "a server's run id changed (restart, failover), or the subscription was on another server",
	invalidation.CauseDisconnect:    "the subscription connection failed",
	invalidation.CauseResubscribe:   "the subscription was confirmed again after a failure",
	invalidation.CauseStall:         "the subscription stopped answering pings",
	invalidation.CauseOverflow:      "the receive queue was full and a message was dropped",
	invalidation.CauseDecode:        "a message could not be decoded",
}

// debugSnapshot is everything GET /debug/nearcache shows and
// GET /debug/nearcache.json returns, built from one Stats() call and the
// event log, so that the page and the JSON always agree with each other
// and with Stats.
type debugSnapshot struct {
	Namespace    string           `json:"namespace"`
	TakenAt      time.Time        `json:"taken_at"`
	Combined     combinedView     `json:"combined"`
	L1           l1View           `json:"l1"`
	L2           l2View           `json:"l2"`
	Loads        loadsView        `json:"loads"`
	Invalidation invalidationView `json:"invalidation"`
	Health       healthView       `json:"health"`
	Events       eventsView       `json:"events"`
}

// combinedView is Stats.Combined: how requests were answered.
type combinedView struct {
	Requests   uint64  `json:"requests"` // key lookups (L1 hits + misses)
	HitRatio   float64 `json:"hit_ratio"`
	L1HitRatio float64 `json:"l1_hit_ratio"`
	L2HitRatio float64 `json:"l2_hit_ratio"`
}

type l1View struct {
	Hits         uint64  `json:"hits"`
	Misses       uint64  `json:"misses"`
	HitRatio     float64 `json:"hit_ratio"`
	Stale        uint64  `json:"stale"`
	Expired      uint64  `json:"expired"`
	Entries      int64   `json:"entries"`
	MaxCost      int64   `json:"max_cost"`
	Fills        uint64  `json:"fills"`
	FillsRefused uint64  `json:"fills_refused"`
	Evictions    uint64  `json:"evictions"`
	Invalidated  uint64  `json:"invalidated"`
	EpochBumps   uint64  `json:"epoch_bumps"` // drops of the whole L1
}

type l2View struct {
	Lookups       uint64        `json:"lookups"`
	Hits          uint64        `json:"hits"`
	HitRatio      float64       `json:"hit_ratio"`
	Errors        uint64        `json:"errors"`
	Timeouts      uint64        `json:"timeouts"`
	Skipped       uint64        `json:"skipped"` // operations skipped while the breaker was open
	Breaker       string        `json:"breaker"` // "closed", "open" or "half-open"
	BreakerOpened uint64        `json:"breaker_opened"`
	RoundTrip     histogramView `json:"round_trip"` // Redis round trips
}

type loadsView struct {
	Callers        uint64        `json:"callers"`
	Coalesced      uint64        `json:"coalesced"`
	LoaderCalls    uint64        `json:"loader_calls"`
	LoadedKeys     uint64        `json:"loaded_keys"`
	LoaderErrors   uint64        `json:"loader_errors"`
	Panics         uint64        `json:"panics"`
	StaleServed    uint64        `json:"stale_served"`
	NegativeCached uint64        `json:"negative_cached"`
	Duration       histogramView `json:"duration"` // loader calls
}

type invalidationView struct {
	Notifications uint64 `json:"notifications"` // published by this instance's writes, with them
	Published     uint64 `json:"published"`     // published by the bus on its own (clears)
	Received      uint64 `json:"received"`
	Applied       uint64 `json:"applied"`
	Own           uint64 `json:"own"`
	Gaps          uint64 `json:"gaps"`
	Dropped       uint64 `json:"dropped"`
	DecodeRejects uint64 `json:"decode_rejects"`
	Reconnects    uint64 `json:"reconnects"`
	// InvalidateAll counts the drops of the whole L1 by cause (causes
	// that never happened are left out).
	InvalidateAll map[string]uint64 `json:"invalidate_all"`
	Lag           histogramView     `json:"lag"` // publisher's clock to this instance's handler
}

// healthView is the invalidation stream's health.
type healthView struct {
	Healthy        bool      `json:"healthy"`
	UnhealthySince time.Time `json:"unhealthy_since,omitzero"`
	Reasons        []string  `json:"reasons,omitempty"`
}

type eventsView struct {
	Repairs        recentView[repairEvent]  `json:"repairs"`
	BreakerChanges recentView[breakerEvent] `json:"breaker_changes"`
	StaleServed    recentView[staleEvent]   `json:"stale_served"`
}

type recentView[T any] struct {
	Total  uint64 `json:"total"`  // seen since the service started
	Recent []T    `json:"recent"` // the last ones, newest first
}

// histogramView is a cumulative fixed-bucket histogram with its
// percentiles. Durations are in seconds, as in the Prometheus metrics.
type histogramView struct {
	ID      string       `json:"-"` // the page's element id
	Title   string       `json:"-"`
	Count   uint64       `json:"count"`
	Sum     seconds      `json:"sum_seconds"`
	Mean    seconds      `json:"mean_seconds"`
	P50     seconds      `json:"p50_seconds"`
	P90     seconds      `json:"p90_seconds"`
	P99     seconds      `json:"p99_seconds"`
	P999    seconds      `json:"p999_seconds"`
	Max     seconds      `json:"max_seconds"`
	Buckets []bucketView `json:"buckets"`
}

type bucketView struct {
	// LE is the bucket's upper bound in seconds, written as in the
	// Prometheus le label ("0.0001", ..., "10", "+Inf").
	LE         string  `json:"le"`
	Cumulative uint64  `json:"cumulative"` // observations at most LE
	Count      uint64  `json:"count"`      // observations in this bucket alone
	Label      string  `json:"-"`          // the bound, for people ("≤ 100µs")
	Width      float64 `json:"-"`          // bar length: percent of the fullest bucket
}

// seconds is a duration that JSON writes in seconds and the page the way
// the load report does.
type seconds time.Duration

func (d seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(d).Seconds(), 'g', -1, 64), nil
}

func (d seconds) String() string { return demo.Dur(time.Duration(d)) }

func newHistogramView(id, title string, b l2.Histogram, p l2.LatencyStats) histogramView {
	h := histogramView{
		ID: id, Title: title, Count: b.Count, Sum: seconds(b.Sum),
		P50: seconds(p.P50), P90: seconds(p.P90), P99: seconds(p.P99), P999: seconds(p.P999), Max: seconds(p.Max),
	}
	if b.Count > 0 {
		h.Mean = seconds(b.Sum / time.Duration(b.Count))
	}
	var prev, fullest uint64
	for i, bound := range b.Bounds {
		if i >= len(b.Counts) {
			break
		}
		c := b.Counts[i]
		h.Buckets = append(h.Buckets, bucketView{
			LE: strconv.FormatFloat(bound.Seconds(), 'g', -1, 64), Label: "≤ " + bound.String(),
			Cumulative: c, Count: c - prev,
		})
		prev = c
	}
	inf := bucketView{LE: "+Inf", Label: "any", Cumulative: b.Count, Count: b.Count - prev}
	if n := len(h.Buckets); n > 0 {
		inf.Label = "> " + b.Bounds[n-1].String()
	}
	h.Buckets = append(h.Buckets, inf)
	for _, bk := range h.Buckets {
		fullest = max(fullest, bk.Count)
	}
	if fullest > 0 {
		for i := range h.Buckets {
			h.Buckets[i].Width = 100 * float64(h.Buckets[i].Count) / float64(fullest)
		}
	}
	return h
}

// newSnapshot builds the page's data from one Stats snapshot.
func newSnapshot(namespace string, now time.Time, st tiered.Stats, ev eventsView) debugSnapshot {
	s := debugSnapshot{
		Namespace: namespace,
		TakenAt:   now,
		Combined: combinedView{
			Requests: st.Combined.Requests, HitRatio: st.Combined.HitRatio,
			L1HitRatio: st.Combined.L1HitRatio, L2HitRatio: st.Combined.L2HitRatio,
		},
		L1: l1View{
			Hits: st.L1.Hits, Misses: st.L1.Misses, HitRatio: st.Combined.L1HitRatio,
			Stale: st.L1.Stale, Expired: st.L1.Expired, Entries: st.L1.Entries, MaxCost: st.L1.MaxCost,
			Fills: st.L1.Fills, FillsRefused: st.L1.FillsRefused, Evictions: st.L1.Evictions,
			Invalidated: st.L1.Invalidated, EpochBumps: st.L1.EpochBumps,
		},
		L2: l2View{
			Lookups: st.L2.Lookups, Hits: st.L2.Hits, HitRatio: st.Combined.L2HitRatio,
			Errors: st.L2.Errors, Timeouts: st.L2.Store.Timeouts, Skipped: st.L2.Skipped,
			Breaker: st.L2.Breaker.String(), BreakerOpened: st.L2.BreakerOpened,
			RoundTrip: newHistogramView("redis-round-trip", "Redis round trips",
				st.L2.Store.LatencyHistogram, st.L2.Store.Latency),
		},
		Loads: loadsView{
			Callers: st.Loads.Callers, Coalesced: st.Loads.Coalesced,
			LoaderCalls: st.Loads.LoaderCalls, LoadedKeys: st.Loads.LoadedKeys,
			LoaderErrors: st.Loads.LoaderErrors, Panics: st.Loads.Panics,
			StaleServed: st.Loads.StaleServed, NegativeCached: st.Loads.NegativeCached,
			Duration: newHistogramView("loader-duration", "Loader calls",
				st.Loads.LatencyHistogram, st.Loads.Latency),
		},
		Invalidation: invalidationView{
			Notifications: st.L2.Store.Notifications, Published: st.Invalidation.Published,
			Received: st.Invalidation.Received, Applied: st.Invalidation.Applied,
			Own: st.Invalidation.Own, Gaps: st.Invalidation.Gaps,
			Dropped: st.Invalidation.Dropped, DecodeRejects: st.Invalidation.DecodeRejects,
			Reconnects: st.Invalidation.Reconnects, InvalidateAll: map[string]uint64{},
			Lag: newHistogramView("invalidation-lag", "Invalidation lag",
				st.Invalidation.LagHistogram, st.Invalidation.Lag),
		},
		Health: healthView{
			Healthy: st.Health.Healthy, UnhealthySince: st.Health.UnhealthySince,
			Reasons: st.Health.Reasons.Names(),
		},
		Events: ev,
	}
	for _, c := range invalidation.Causes() {
		if n := st.Invalidation.InvalidateAll[c]; n > 0 {
			s.Invalidation.InvalidateAll[c.String()] = n
		}
	}
	return s
}

// Ago is how long before the snapshot t was, for the page.
func (s debugSnapshot) Ago(t time.Time) string {
	return demo.Dur(max(s.TakenAt.Sub(t), 0)) + " ago"
}

func (s *service) snapshot() debugSnapshot {
	return newSnapshot(s.cache.Namespace(), time.Now(), s.cache.Stats(), s.events.recent())
}

func (s *service) debugJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.snapshot())
}

//go:embed debug.html
var debugHTML string

var debugTemplate = template.Must(template.New("debug").Funcs(template.FuncMap{
	"pct":  func(r float64) string { return fmt.Sprintf("%.1f%%", 100*r) },
	"join": strings.Join,
	"width": func(w float64) string {
		return strconv.FormatFloat(w, 'f', 1, 64) + "%"
	},
	"clock": func(t time.Time) string { return t.Format("15:04:05.000") },
}).Parse(debugHTML))

func (s *service) debugPage(w http.ResponseWriter, _ *http.Request) {
	// Render into a buffer first, so that a template error is a 500, not
	// half a page.
	var buf bytes.Buffer
	if err := debugTemplate.Execute(&buf, s.snapshot()); err != nil {
		s.log.Printf("GET /debug/nearcache: %v", err)
		httpError(w, http.StatusInternalServerError, "rendering the debug page failed")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = buf.WriteTo(w)
}
