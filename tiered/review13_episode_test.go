package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestEpisodeUnstored: loaded values that cannot be stored in Redis (too
// large for MaxValueSize, or the Codec cannot encode them) are kept in this
// instance's L1 only; a run of them (every miss of a class of keys) logs
// one Warn and one Info with the count, not a line per load.
func TestEpisodeUnstored(t *testing.T) {
	ctx := context.Background()
	const n = 40
	for _, tc := range []struct {
		name string
		cfg  Config[string]
	}{
		{"too large", Config[string]{Namespace: "big", MaxValueSize: 100}},
		{"unencodable", Config[string]{Namespace: "enc", Codec: testCodec{marshalErr: errors.New("cannot encode")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			core, logs := observer.New(zapcore.DebugLevel)
			cfg := tc.cfg
			cfg.Redis, cfg.Logger = newClient(t, mr.Addr()), zap.New(core)
			c := newCache(t, cfg)
			load := func(_ context.Context, k string) (string, error) { return strings.Repeat("x", 200), nil }
			for i := range n / 2 {
				if _, err := c.GetOrLoad(ctx, fmt.Sprintf("k%d", i), load); err != nil {
					t.Fatal(err)
				}
			}
			for i := n / 2; i < n; i += 2 {
				_, err := c.GetManyOrLoad(ctx, []string{fmt.Sprintf("k%d", i), fmt.Sprintf("k%d", i+1)},
					func(_ context.Context, keys []string) (map[string]string, error) {
						m := map[string]string{}
						for _, k := range keys {
							m[k], _ = load(ctx, k)
						}
						return m, nil
					})
				if err != nil {
					t.Fatal(err)
				}
			}
			if warns := logs.FilterLevelExact(zapcore.WarnLevel).All(); len(warns) != 1 {
				t.Fatalf("%d Warns for %d loaded values not stored in Redis, want one; the first two: %v", len(warns), n, warns[:min(len(warns), 2)])
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ends := logs.FilterMessageSnippet("episode ended").All()
			if len(ends) != 1 || ends[0].ContextMap()["count"] != uint64(n) {
				t.Fatalf("episode ends %v, want one (at Close) with count %d", ends, n)
			}
		})
	}
}

// TestBreakerLogsOncePerOutage: during an outage the breaker's probe fails
// once per BreakerCooldown; each failure reopens the breaker, but logs
// nothing new: one Warn when it opens, one when it closes again.
func TestBreakerLogsOncePerOutage(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	var down atomic.Bool
	rc := newClient(t, mr.Addr())
	rc.AddHook(downHook{&down})
	core, logs := observer.New(zapcore.DebugLevel)
	c := newCache(t, Config[string]{Redis: rc, Namespace: "brk", Logger: zap.New(core),
		BreakerFailures: 1, BreakerCooldown: 5 * time.Millisecond})
	down.Store(true)
	const msg = "nearcache: redis circuit breaker changed state"
	probes := 0
	for deadline := time.Now().Add(5 * time.Second); probes < 10 && time.Now().Before(deadline); {
		before := c.Stats().L2.Errors
		_, _ = c.Get(ctx, "k")
		if c.Stats().L2.Errors > before {
			probes++ // the call reached Redis: the first failure, or a probe
		}
		time.Sleep(time.Millisecond)
	}
	if probes < 3 {
		t.Fatalf("%d calls reached Redis while it was down; the test needs the breaker to probe", probes)
	}
	if n := logs.FilterMessage(msg).Len(); n != 1 {
		t.Errorf("%d breaker Warns for one outage with %d failed calls (the probes' included), want 1 (opened)", n, probes)
	}
	down.Store(false)
	eventually(t, "the breaker to close", func() bool {
		_, err := c.Get(ctx, "k")
		return errors.Is(err, ErrNotFound)
	})
	if n := logs.FilterMessage(msg).Len(); n != 2 {
		t.Errorf("%d breaker Warns after the outage, want 2 (opened, closed)", n)
	}
}
