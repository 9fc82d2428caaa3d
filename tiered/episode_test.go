package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/internal/episode"
)

// episodeQuiet is the quiet spell that ends an episode in these tests: far
// longer than the gap between two failures of one test (at most one
// RedisTimeout), far shorter than DefaultQuiet.
const episodeQuiet = 2 * time.Second

// observedCache returns a Cache on mr that logs to an observer, with
// episodes ending after quiet.
func observedCache(t *testing.T, mr *miniredis.Miniredis, cfg Config[string], quiet time.Duration) (*Cache[string], *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Redis, cfg.Logger = newClient(t, mr.Addr()), zap.New(core)
	c := newCache(t, cfg)
	// Before any call: nothing has used the trackers yet.
	c.writeFails = episode.New(c.log, msgWriteFails, quiet)
	c.staleServes = episode.New(c.log, msgStaleServes, quiet)
	c.unreadable = episode.New(c.log, msgUnreadable, quiet)
	return c, logs
}

// checkEpisode waits (bounded) for the end of the episode logged as msg,
// and checks that exactly one start and one end were logged, with count
// failures; it returns the start and the end.
func checkEpisode(t *testing.T, logs *observer.ObservedLogs, msg string, count uint64) (start, end observer.LoggedEntry) {
	t.Helper()
	ends := func() []observer.LoggedEntry { return logs.FilterMessage(msg + episode.EndSuffix).All() }
	eventually(t, "the end of "+msg, func() bool { return len(ends()) > 0 })
	starts := logs.FilterMessage(msg).All()
	if len(starts) != 1 || len(ends()) != 1 {
		t.Fatalf("%q: %d starts and %d ends, want one each", msg, len(starts), len(ends()))
	}
	start, end = starts[0], ends()[0]
	if start.Level != zapcore.WarnLevel || end.Level != zapcore.InfoLevel {
		t.Fatalf("start logged at %v, end at %v; want Warn and Info", start.Level, end.Level)
	}
	f := end.ContextMap()
	if f["count"] != count || f["ended"] != "quiet" {
		t.Fatalf("end fields %v, want count %d, ended quiet", f, count)
	}
	if d, _ := f["duration"].(time.Duration); d < 0 || d > time.Minute {
		t.Fatalf("end duration %v, want the span of the failures", f["duration"])
	}
	return start, end
}

// TestEpisodeWrites: an outage during which n writes fail (the first ones
// time out, the rest are skipped by the open breaker) logs one Warn when
// the first fails, naming its key and error, and one Info when the
// failures stop, with count n; not a line per write.
func TestEpisodeWrites(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c, logs := observedCache(t, mr, Config[string]{Namespace: "ew", BreakerCooldown: time.Hour}, episodeQuiet)
	if err := c.Set(ctx, "before", "v"); err != nil {
		t.Fatal(err)
	}
	mr.Close()
	const n = 20
	for i := range n {
		var err error
		if i%2 == 0 {
			err = c.Set(ctx, fmt.Sprintf("k%d", i), "v")
		} else {
			err = c.Delete(ctx, fmt.Sprintf("k%d", i))
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("write %d with Redis down: %v, want ErrUnavailable", i, err)
		}
	}
	if st := c.Stats().L2; st.Skipped == 0 || st.BreakerOpened == 0 {
		t.Fatalf("L2 stats %+v: want the breaker opened and writes skipped", st)
	}
	start, end := checkEpisode(t, logs, msgWriteFails, n)
	if f := start.ContextMap(); f["key"] != "k0" || !strings.HasPrefix(f["error"].(string), `tiered: redis unavailable: l2: set "k0": connection error: `) {
		t.Fatalf("start fields %v, want key k0 and the first write's error", f)
	}
	if f := end.ContextMap(); f["last_key"] != "k19" || f["last_error"] != `tiered: delete "k19": redis unavailable (circuit breaker open)` {
		t.Fatalf("end fields %v, want the last write's key and error", f)
	}
}

// TestEpisodeStale: stale values served by fail-safe while the loader
// fails make one episode counting each value served.
func TestEpisodeStale(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c, logs := observedCache(t, mr, Config[string]{Namespace: "es", FailSafeMaxStale: time.Hour}, episodeQuiet)
	const n = 10
	for i := range n {
		if err := c.Set(ctx, fmt.Sprintf("k%d", i), "old", WithTTL(time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	written := time.Now()                          // after the last Set: every value's freshness counts from before it
	for time.Since(written) < 3*time.Millisecond { // let the 1 ms freshness pass
		time.Sleep(time.Millisecond)
	}
	down := errors.New("database down")
	failing := func(context.Context, string) (string, error) { return "", down }
	for i := range n {
		if v, err := c.GetOrLoad(ctx, fmt.Sprintf("k%d", i), failing); err != nil || v != "old" {
			t.Fatalf("GetOrLoad with a failing loader: %q, %v; want the stale value", v, err)
		}
	}
	if got := c.Stats().Loads.StaleServed; got != n {
		t.Fatalf("StaleServed = %d, want %d", got, n)
	}
	start, end := checkEpisode(t, logs, msgStaleServes, n)
	if f := start.ContextMap(); f["key"] != "k0" || f["error"] != `tiered: load "k0": database down` {
		t.Fatalf("start fields %v, want key k0 and the loader's error", f)
	}
	if f := end.ContextMap(); f["last_key"] != "k9" || f["last_error"] != `tiered: load "k9": database down` {
		t.Fatalf("end fields %v, want the last key and error", f)
	}
}

// TestEpisodeUnreadable: values in Redis that are not envelopes (read one
// by one or in a batch) or that the codec cannot decode are reloaded, and
// make one episode counting each; the start names the first key and why it
// was unreadable.
func TestEpisodeUnreadable(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c, logs := observedCache(t, mr, Config[string]{Namespace: "eu"}, episodeQuiet)
	const n = 10
	for i := range n {
		mr.Set(fmt.Sprintf("eu:c%d", i), "garbage")
	}
	load := func(_ context.Context, k string) (string, error) { return "fresh:" + k, nil }
	for range 2 { // the second round finds the reloaded values
		for i := range n / 2 {
			k := fmt.Sprintf("c%d", i)
			if v, err := c.GetOrLoad(ctx, k, load); err != nil || v != "fresh:"+k {
				t.Fatalf("GetOrLoad over a corrupt value: %q, %v; want it reloaded", v, err)
			}
		}
	}
	var rest []string
	for i := n / 2; i < n; i++ {
		rest = append(rest, fmt.Sprintf("c%d", i))
	}
	got, err := c.GetManyOrLoad(ctx, rest, func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "fresh:" + k
		}
		return m, nil
	})
	if err != nil || len(got) != len(rest) {
		t.Fatalf("GetManyOrLoad over corrupt values: %v, %v; want them reloaded", got, err)
	}
	if got := c.Stats().Loads.DecodeErrors; got != n {
		t.Fatalf("DecodeErrors = %d, want %d", got, n)
	}
	start, end := checkEpisode(t, logs, msgUnreadable, n)
	if f := start.ContextMap(); f["key"] != "c0" || f["error"] != `l2: decode "c0": corrupt value: magic byte 0x67, want 0xc7 (written by another program?)` {
		t.Fatalf("start fields %v, want key c0 and why it is unreadable", f)
	}
	if f := end.ContextMap(); !strings.HasPrefix(f["last_error"].(string), `l2: decode "c`) || !strings.Contains(f["last_error"].(string), f["last_key"].(string)) {
		t.Fatalf("end fields %v, want the last corrupt key and its error", f)
	}

	// A value the codec cannot decode is unreadable too.
	core, dlogs := observer.New(zapcore.DebugLevel)
	d := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "eu", Logger: zap.New(core),
		Codec: testCodec{unmarshalErr: errors.New("not mine")}})
	if v, err := d.GetOrLoad(ctx, "c0", load); err != nil || v != "fresh:c0" {
		t.Fatalf("GetOrLoad over an undecodable value: %q, %v; want it reloaded", v, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	ends := dlogs.FilterMessage(msgUnreadable + episode.EndSuffix).All()
	if dlogs.FilterMessage(msgUnreadable).Len() != 1 || len(ends) != 1 {
		t.Fatalf("logs %v: want one start and one end (at Close)", dlogs.All())
	}
	if f := ends[0].ContextMap(); f["count"] != uint64(1) || f["ended"] != "closed" || f["last_error"] != "decode: not mine" {
		t.Fatalf("end fields %v, want count 1, ended closed, last_error \"decode: not mine\"", f)
	}
}

// TestEpisodeNotOnL1Hits: L1 hits log nothing and allocate nothing while an
// episode runs.
func TestEpisodeNotOnL1Hits(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c, logs := observedCache(t, mr, Config[string]{Namespace: "eh"}, time.Hour)
	good := func(context.Context, string) (string, error) { return "v", nil }
	if _, err := c.GetOrLoad(ctx, "hot", good); err != nil {
		t.Fatal(err)
	}
	mr.Set("eh:bad", "garbage")
	if _, err := c.GetOrLoad(ctx, "bad", good); err != nil {
		t.Fatal(err)
	}
	if logs.FilterMessage(msgUnreadable).Len() != 1 {
		t.Fatalf("logs %v: want the unreadable episode started", logs.All())
	}
	eventually(t, "the value in L1", func() bool { _, ok := c.local.Get("hot"); return ok })
	before := logs.Len()
	load := func(context.Context, string) (string, error) { return "", errors.New("not called") }
	if n := testing.AllocsPerRun(1000, func() {
		if v, err := c.GetOrLoad(ctx, "hot", load); err != nil || v != "v" {
			panic(fmt.Sprintf("L1 hit: %q, %v", v, err))
		}
	}); n != 0 {
		t.Fatalf("L1 hit during an episode: %v allocations, want 0", n)
	}
	if after := logs.Len(); after != before {
		t.Fatalf("L1 hits logged %d entries: %v", after-before, logs.All()[before:])
	}
}
