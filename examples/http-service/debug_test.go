package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// The test's own reading of /debug/nearcache.json: the fields it promises,
// decoded independently of the types that write them.
type (
	jsonSnapshot struct {
		Namespace string `json:"namespace"`
		Combined  struct {
			Requests   uint64  `json:"requests"`
			HitRatio   float64 `json:"hit_ratio"`
			L1HitRatio float64 `json:"l1_hit_ratio"`
			L2HitRatio float64 `json:"l2_hit_ratio"`
		} `json:"combined"`
		L1 struct {
			Hits     uint64  `json:"hits"`
			Misses   uint64  `json:"misses"`
			HitRatio float64 `json:"hit_ratio"`
		} `json:"l1"`
		L2 struct {
			Lookups       uint64   `json:"lookups"`
			Hits          uint64   `json:"hits"`
			HitRatio      float64  `json:"hit_ratio"`
			Errors        uint64   `json:"errors"`
			Breaker       string   `json:"breaker"`
			BreakerOpened uint64   `json:"breaker_opened"`
			RoundTrip     jsonHist `json:"round_trip"`
		} `json:"l2"`
		Loads struct {
			LoaderCalls uint64   `json:"loader_calls"`
			LoadedKeys  uint64   `json:"loaded_keys"`
			Duration    jsonHist `json:"duration"`
		} `json:"loads"`
		Invalidation struct {
			DecodeRejects uint64            `json:"decode_rejects"`
			InvalidateAll map[string]uint64 `json:"invalidate_all"`
			Lag           jsonHist          `json:"lag"`
		} `json:"invalidation"`
		Health struct {
			Healthy        bool      `json:"healthy"`
			UnhealthySince time.Time `json:"unhealthy_since"`
			Reasons        []string  `json:"reasons"`
		} `json:"health"`
		Events struct {
			Repairs struct {
				Total  uint64       `json:"total"`
				Recent []jsonRepair `json:"recent"`
			} `json:"repairs"`
			BreakerChanges struct {
				Total  uint64              `json:"total"`
				Recent []jsonBreakerChange `json:"recent"`
			} `json:"breaker_changes"`
		} `json:"events"`
	}
	jsonRepair struct {
		Time  time.Time `json:"time"`
		Cause string    `json:"cause"`
	}
	jsonBreakerChange struct {
		Time time.Time `json:"time"`
		From string    `json:"from"`
		To   string    `json:"to"`
	}
	jsonHist struct {
		Count   uint64       `json:"count"`
		Sum     float64      `json:"sum_seconds"`
		P50     float64      `json:"p50_seconds"`
		P90     float64      `json:"p90_seconds"`
		P99     float64      `json:"p99_seconds"`
		P999    float64      `json:"p999_seconds"`
		Max     float64      `json:"max_seconds"`
		Buckets []jsonBucket `json:"buckets"`
	}
	jsonBucket struct {
		LE         string `json:"le"`
		Cumulative uint64 `json:"cumulative"`
		Count      uint64 `json:"count"`
	}
)

// debugJSON fetches /debug/nearcache.json and decodes it.
func (e *testEnv) debugJSON(t *testing.T) jsonSnapshot {
	t.Helper()
	code, ctype, body := e.do(t, http.MethodGet, "/debug/nearcache.json", "")
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("GET /debug/nearcache.json: got %d %q, want 200 application/json; body: %s", code, ctype, body)
	}
	var s jsonSnapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("decoding /debug/nearcache.json: %v\n%s", err, body)
	}
	return s
}

// debugPage fetches /debug/nearcache.
func (e *testEnv) debugPage(t *testing.T) string {
	t.Helper()
	code, ctype, body := e.do(t, http.MethodGet, "/debug/nearcache", "")
	if code != http.StatusOK || ctype != "text/html; charset=utf-8" {
		t.Fatalf("GET /debug/nearcache: got %d %q, want 200 text/html; charset=utf-8; body: %s", code, ctype, body)
	}
	return body
}

// wantHist is what the JSON should say of a Stats histogram.
func wantHist(b l2.Histogram, p l2.LatencyStats) jsonHist {
	h := jsonHist{
		Count: b.Count, Sum: b.Sum.Seconds(),
		P50: p.P50.Seconds(), P90: p.P90.Seconds(), P99: p.P99.Seconds(), P999: p.P999.Seconds(), Max: p.Max.Seconds(),
	}
	var prev uint64
	for i, bound := range b.Bounds {
		h.Buckets = append(h.Buckets, jsonBucket{LE: strconv.FormatFloat(bound.Seconds(), 'g', -1, 64), Cumulative: b.Counts[i], Count: b.Counts[i] - prev})
		prev = b.Counts[i]
	}
	h.Buckets = append(h.Buckets, jsonBucket{LE: "+Inf", Cumulative: b.Count, Count: b.Count - prev})
	return h
}

// checkSnapshot compares the JSON with the Stats it was built from.
func checkSnapshot(t *testing.T, got jsonSnapshot, st tiered.Stats) {
	t.Helper()
	var want jsonSnapshot
	want.Namespace = testNamespace
	want.Combined.Requests = st.Combined.Requests
	want.Combined.HitRatio = st.Combined.HitRatio
	want.Combined.L1HitRatio = st.Combined.L1HitRatio
	want.Combined.L2HitRatio = st.Combined.L2HitRatio
	want.L1.Hits, want.L1.Misses, want.L1.HitRatio = st.L1.Hits, st.L1.Misses, st.Combined.L1HitRatio
	want.L2.Lookups, want.L2.Hits, want.L2.HitRatio = st.L2.Lookups, st.L2.Hits, st.Combined.L2HitRatio
	want.L2.Errors, want.L2.Breaker, want.L2.BreakerOpened = st.L2.Errors, st.L2.Breaker.String(), st.L2.BreakerOpened
	want.L2.RoundTrip = wantHist(st.L2.Store.LatencyHistogram, st.L2.Store.Latency)
	want.Loads.LoaderCalls, want.Loads.LoadedKeys = st.Loads.LoaderCalls, st.Loads.LoadedKeys
	want.Loads.Duration = wantHist(st.Loads.LatencyHistogram, st.Loads.Latency)
	want.Invalidation.DecodeRejects = st.Invalidation.DecodeRejects
	want.Invalidation.InvalidateAll = map[string]uint64{}
	for _, c := range invalidation.Causes() {
		if n := st.Invalidation.InvalidateAll[c]; n > 0 {
			want.Invalidation.InvalidateAll[c.String()] = n
		}
	}
	want.Invalidation.Lag = wantHist(st.Invalidation.LagHistogram, st.Invalidation.Lag)
	want.Health.Healthy = st.Health.Healthy
	want.Health.UnhealthySince = st.Health.UnhealthySince
	want.Health.Reasons = st.Health.Reasons.Names()
	// The events are checked by the tests that cause them.
	want.Events = got.Events
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/debug/nearcache.json differs from Stats (-Stats +JSON):\n%s", diff)
	}
	if len(got.L2.RoundTrip.Buckets) > 0 {
		if first, last := got.L2.RoundTrip.Buckets[0].LE, got.L2.RoundTrip.Buckets[len(got.L2.RoundTrip.Buckets)-2].LE; first != "0.0001" || last != "10" {
			t.Errorf("bucket bounds: got le %q to %q, want 0.0001 (100µs) to 10 (10s)", first, last)
		}
	}
}

// TestDebugJSON: /debug/nearcache.json's figures are the cache's Stats.
func TestDebugJSON(t *testing.T) {
	e := startService(t)
	e.traffic(t)
	var got jsonSnapshot
	st := e.settled(t, func() { got = e.debugJSON(t) })
	checkSnapshot(t, got, st)
	if got.L2.RoundTrip.Count == 0 || got.Loads.Duration.Count == 0 {
		t.Errorf("empty histograms after the traffic: Redis round trips %d, loader calls %d", got.L2.RoundTrip.Count, got.Loads.Duration.Count)
	}
	if !got.Health.Healthy || got.L2.Breaker != "closed" {
		t.Errorf("got health %v, breaker %q; want healthy, closed", got.Health.Healthy, got.L2.Breaker)
	}
}

// pageHas fails the test for each fragment the page lacks.
func pageHas(t *testing.T, page string, fragments ...string) {
	t.Helper()
	for _, f := range fragments {
		if !strings.Contains(page, f) {
			t.Errorf("the debug page has no %q", f)
		}
	}
}

// TestDebugPage: /debug/nearcache is a self-contained page that refreshes
// itself and shows the Stats' figures.
func TestDebugPage(t *testing.T) {
	e := startService(t)
	e.traffic(t)
	var page string
	st := e.settled(t, func() { page = e.debugPage(t) })

	pct := func(r float64) string { return fmt.Sprintf("%.1f%%", 100*r) }
	pageHas(t, page,
		`<meta http-equiv="refresh" content="2">`,
		fmt.Sprintf(`id="namespace">%s<`, testNamespace),
		fmt.Sprintf(`id="l1-hits">%d<`, st.L1.Hits),
		fmt.Sprintf(`id="l1-misses">%d<`, st.L1.Misses),
		fmt.Sprintf(`id="requests">%d<`, st.Combined.Requests),
		fmt.Sprintf(`id="l2-hits">%d<`, st.L2.Hits),
		fmt.Sprintf(`id="l2-lookups">%d<`, st.L2.Lookups),
		fmt.Sprintf(`id="loader-calls">%d<`, st.Loads.LoaderCalls),
		fmt.Sprintf(`id="l1-hit-ratio">%s<`, pct(st.Combined.L1HitRatio)),
		fmt.Sprintf(`id="l2-hit-ratio">%s<`, pct(st.Combined.L2HitRatio)),
		fmt.Sprintf(`id="hit-ratio">%s<`, pct(st.Combined.HitRatio)),
		fmt.Sprintf(`id="redis-round-trip-count">%d<`, st.L2.Store.LatencyHistogram.Count),
		fmt.Sprintf(`id="loader-duration-count">%d<`, st.Loads.LatencyHistogram.Count),
		fmt.Sprintf(`id="invalidation-lag-count">%d<`, st.Invalidation.LagHistogram.Count),
		`id="health" class="ok">healthy<`,
		`id="breaker" class="ok">closed<`,
		fmt.Sprintf(`id="repairs-total">%d<`, st.Invalidation.InvalidateAllTotal()),
	)
	// Each histogram is drawn as one bar per bucket, +Inf included.
	if got, want := strings.Count(page, `<span class="bar" style="width: `), 3*(len(st.L2.Store.LatencyHistogram.Bounds)+1); got != want {
		t.Errorf("the page draws %d histogram bars, want %d (3 histograms)", got, want)
	}
	// Self-contained: nothing loaded from elsewhere, no scripts.
	for _, bad := range []string{"<script", "<link", "src=", "url(", "@import", "http://", "https://"} {
		if strings.Contains(page, bad) {
			t.Errorf("the debug page contains %q; it must be self-contained", bad)
		}
	}
}

// TestRepairShown: a malformed message on the namespace's invalidation
// channel makes the bus drop the whole L1 (cause decode); the Observer's
// record of it shows in the JSON, on the page and in the metrics.
func TestRepairShown(t *testing.T) {
	e := startService(t)
	// r1 in L1 (and in Redis).
	e.expect(t, http.MethodGet, "/records/r1", "", http.StatusOK)
	e.l1Hit(t, "/records/r1")
	hits := e.svc.cache.Stats().L1.Hits

	published := time.Now()
	if err := e.rc.Publish(t.Context(), wire.Channel(testNamespace), "not an invalidation message").Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
	eventually(t, "the decode repair", func() bool {
		return e.svc.cache.Stats().Invalidation.InvalidateAll[invalidation.CauseDecode] == 1
	})

	var got jsonSnapshot
	st := e.settled(t, func() { got = e.debugJSON(t) })
	checkSnapshot(t, got, st)
	if st.Invalidation.DecodeRejects != 1 {
		t.Errorf("decode rejects: got %d, want 1", st.Invalidation.DecodeRejects)
	}
	repairs := got.Events.Repairs
	if repairs.Total != st.Invalidation.InvalidateAllTotal() || len(repairs.Recent) != int(min(repairs.Total, recentEvents)) {
		t.Fatalf("repairs in the JSON: total %d with %d recent; want a total of %d (Stats' whole-L1 drops), the last %d of them listed",
			repairs.Total, len(repairs.Recent), st.Invalidation.InvalidateAllTotal(), min(st.Invalidation.InvalidateAllTotal(), recentEvents))
	}
	// Newest first. On miniredis, anti-entropy may add a repair of its own
	// (a lost_tail: its PING can overtake a message), so the decode repair
	// is looked up rather than assumed to be the only one.
	i := slices.IndexFunc(repairs.Recent, func(r jsonRepair) bool { return r.Cause == "decode" })
	if i < 0 {
		t.Fatalf("no repair with cause decode in the JSON: %+v", repairs.Recent)
	}
	if at := repairs.Recent[i].Time; at.Before(published) || at.After(time.Now()) {
		t.Errorf("the decode repair's time %v is not between the PUBLISH (%v) and now", at, published)
	}
	for j := 1; j < len(repairs.Recent); j++ {
		if repairs.Recent[j].Time.After(repairs.Recent[j-1].Time) {
			t.Errorf("repairs not newest first: %+v", repairs.Recent)
		}
	}

	page := e.debugPage(t)
	pageHas(t, page,
		fmt.Sprintf(`id="repairs-total">%d<`, repairs.Total),
		`<td class="text cause">decode</td>`,
		"a message could not be decoded",
		fmt.Sprintf(`id="decode-rejects">%d<`, st.Invalidation.DecodeRejects),
	)

	body, families := e.scrape(t)
	if got := series(t, families, "nearcache_invalidation_repairs_total", map[string]string{"cache": testNamespace, "cause": "decode"}).GetCounter().GetValue(); got != 1 {
		t.Errorf(`nearcache_invalidation_repairs_total{cause="decode"}: got %v, want 1`, got)
		t.Log(body)
	}

	// The repair really dropped L1: r1 is read again from Redis.
	e.expect(t, http.MethodGet, "/records/r1", "", http.StatusOK)
	if after := e.svc.cache.Stats(); after.L1.Hits != hits || after.L2.Hits == 0 {
		t.Errorf("reading r1 after the repair: L1 hits %d (want still %d), L2 hits %d (want > 0)", after.L1.Hits, hits, after.L2.Hits)
	}
}

// TestBreakerShown: with Redis gone, the breaker opens and the stream turns
// unhealthy; the JSON, the page and the metrics say so, with the breaker's
// change recorded by the Observer. Reads keep being answered by the store.
func TestBreakerShown(t *testing.T) {
	e := startService(t)
	e.expect(t, http.MethodGet, "/records/r0", "", http.StatusOK)
	e.mr.Close()

	n := 0
	eventually(t, "the breaker to open and the stream to turn unhealthy", func() bool {
		n++
		e.expect(t, http.MethodGet, fmt.Sprintf("/records/r%d", n%100), "", http.StatusOK)
		st := e.svc.cache.Stats()
		return st.L2.BreakerOpened > 0 && !st.Health.Healthy
	})

	var got jsonSnapshot
	st := e.settled(t, func() { got = e.debugJSON(t) })
	checkSnapshot(t, got, st)
	if got.Health.Healthy || len(got.Health.Reasons) == 0 || got.Health.UnhealthySince.IsZero() {
		t.Errorf("health in the JSON: got %+v, want unhealthy with reasons and a time", got.Health)
	}
	changes := got.Events.BreakerChanges
	if changes.Total == 0 || len(changes.Recent) == 0 {
		t.Fatalf("no breaker change in the JSON: %+v", changes)
	}
	first := changes.Recent[len(changes.Recent)-1] // the oldest kept: the breaker's first change
	if changes.Total <= recentEvents && (first.From != "closed" || first.To != "open") {
		t.Errorf("the first breaker change: got %s -> %s, want closed -> open", first.From, first.To)
	}

	var page string
	st = e.settled(t, func() { page = e.debugPage(t) })
	pageHas(t, page,
		`id="health" class="bad">unhealthy<`,
		fmt.Sprintf(`id="health-reasons">%s<`, strings.Join(st.Health.Reasons.Names(), ", ")),
		fmt.Sprintf(`id="breaker" class="%s">%s<`, map[bool]string{true: "ok", false: "bad"}[st.L2.Breaker == tiered.BreakerClosed], st.L2.Breaker),
		fmt.Sprintf(`id="breaker-opened">%d<`, st.L2.BreakerOpened),
		`<table id="breaker-changes">`,
	)

	var families map[string]*dto.MetricFamily
	st = e.settled(t, func() { _, families = e.scrape(t) })
	cache := map[string]string{"cache": testNamespace}
	if got := series(t, families, "nearcache_invalidation_healthy", cache).GetGauge().GetValue(); got != 0 {
		t.Errorf("nearcache_invalidation_healthy: got %v, want 0", got)
	}
	if got := series(t, families, "nearcache_breaker_opens_total", cache).GetCounter().GetValue(); got != float64(st.L2.BreakerOpened) {
		t.Errorf("nearcache_breaker_opens_total: got %v, want %d", got, st.L2.BreakerOpened)
	}
}

// TestEventLog: each kind of event keeps its own last few, newest first,
// under concurrent hooks and readers.
func TestEventLog(t *testing.T) {
	l := newEventLog(3)
	obs := l.observer()
	causes := []invalidation.Cause{invalidation.CauseGap, invalidation.CauseEpoch, invalidation.CauseDecode, invalidation.CauseStall, invalidation.CauseClear}
	for _, c := range causes {
		obs.Repaired(tiered.RepairEvent{Namespace: "ns", Cause: c})
	}
	obs.BreakerChanged(tiered.BreakerEvent{Namespace: "ns", From: tiered.BreakerClosed, To: tiered.BreakerOpen})
	obs.StaleServed(tiered.StaleEvent{Namespace: "ns", Key: "k", Err: errors.New("store down")})

	ev := l.recent()
	var gotCauses []string
	for _, r := range ev.Repairs.Recent {
		gotCauses = append(gotCauses, r.Cause)
	}
	if want := []string{"clear", "stall", "decode"}; ev.Repairs.Total != 5 || !slices.Equal(gotCauses, want) {
		t.Errorf("repairs: got total %d, recent %v; want total 5, recent %v", ev.Repairs.Total, gotCauses, want)
	}
	if ev.Repairs.Recent[0].Meaning != "another instance cleared the namespace" {
		t.Errorf("meaning of clear: got %q", ev.Repairs.Recent[0].Meaning)
	}
	if b := ev.BreakerChanges; b.Total != 1 || len(b.Recent) != 1 || b.Recent[0].From != "closed" || b.Recent[0].To != "open" {
		t.Errorf("breaker changes: got %+v, want one closed -> open", b)
	}
	if s := ev.StaleServed; s.Total != 1 || len(s.Recent) != 1 || s.Recent[0].Key != "k" || s.Recent[0].Error != "store down" {
		t.Errorf("stale values served: got %+v, want one for k with its error", s)
	}

	// Concurrent hooks and readers (run with -race): every event counted,
	// never more than 3 kept.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				obs.Repaired(tiered.RepairEvent{Cause: invalidation.CauseGap})
				obs.StaleServed(tiered.StaleEvent{Key: "k"})
			}
		})
		wg.Go(func() {
			for range 100 {
				if ev := l.recent(); len(ev.Repairs.Recent) > 3 || len(ev.StaleServed.Recent) > 3 {
					t.Errorf("kept more than 3: %d repairs, %d stale", len(ev.Repairs.Recent), len(ev.StaleServed.Recent))
					return
				}
			}
		})
	}
	wg.Wait()
	if ev := l.recent(); ev.Repairs.Total != 405 || ev.StaleServed.Total != 401 {
		t.Errorf("totals: got %d repairs, %d stale; want 405, 401", ev.Repairs.Total, ev.StaleServed.Total)
	}
}
