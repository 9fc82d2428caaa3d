package invalidation_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alicebob/miniredis/v2"
	"github.com/nearcache/nearcache/internal/episode"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/redis/go-redis/v9"
)

// TestEpisodeAntiEntropy: anti-entropy rounds that fail while Redis is down
// log one Warn when the first fails and one Info once they have stopped,
// counting every failed round; not a line per round.
func TestEpisodeAntiEntropy(t *testing.T) {
	mr, c := startMini(t)
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := invalidation.New(c, invalidation.Config{Namespace: "ae", AntiEntropyInterval: 20 * time.Millisecond,
		Logger: zap.New(core)}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	// Longer than a failing round (at most 2*20ms+500ms) plus the tick.
	invalidation.SetEpisodeQuiet(b, 3*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a round", func() bool { return b.Stats().AERounds > 0 })
	mr.Close()
	waitFor(t, 20*time.Second, "three failed rounds", func() bool { return b.Stats().AEErrors >= 3 })
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	end := invalidation.MsgAEFails + episode.EndSuffix
	waitFor(t, 30*time.Second, "the end of the episode", func() bool { return logs.FilterMessage(end).Len() > 0 })
	starts, ends := logs.FilterMessage(invalidation.MsgAEFails).All(), logs.FilterMessage(end).All()
	if len(starts) != 1 || len(ends) != 1 {
		t.Fatalf("%d starts and %d ends, want one each: %v", len(starts), len(ends), logs.All())
	}
	if starts[0].Level != zapcore.WarnLevel || starts[0].ContextMap()["error"] == nil {
		t.Fatalf("start %v %v: want a Warn with the error", starts[0].Level, starts[0].ContextMap())
	}
	f := ends[0].ContextMap()
	if n := b.Stats().AEErrors; ends[0].Level != zapcore.InfoLevel || f["count"] != n || f["ended"] != "quiet" || f["last_error"] == nil {
		t.Fatalf("end %v %v: want an Info with count %d (every failed round), ended quiet, and the last error", ends[0].Level, f, n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage(end).Len(); n != 1 {
		t.Fatalf("Close after the episode logged another end (%d)", n)
	}
}

// TestEpisodeAntiEntropyClose: Close ends a running episode of failed
// rounds with its count.
func TestEpisodeAntiEntropyClose(t *testing.T) {
	mr, c := startMini(t)
	core, logs := observer.New(zapcore.DebugLevel)
	b := startBus(t, c, invalidation.Config{Namespace: "aec", AntiEntropyInterval: 20 * time.Millisecond, Logger: zap.New(core)}, newRecorder())
	mr.Close()
	waitFor(t, 20*time.Second, "a failed round", func() bool { return b.Stats().AEErrors >= 1 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ends := logs.FilterMessage(invalidation.MsgAEFails + episode.EndSuffix).All()
	if logs.FilterMessage(invalidation.MsgAEFails).Len() != 1 || len(ends) != 1 {
		t.Fatalf("logs %v: want one start and one end", logs.All())
	}
	if f := ends[0].ContextMap(); f["count"] != b.Stats().AEErrors || f["ended"] != "closed" {
		t.Fatalf("end %v: want count %d, ended closed", f, b.Stats().AEErrors)
	}
}

// TestEpisodeClusterMasters: a Redis Cluster client whose masters cannot be
// listed logs one Warn for the first failed listing, counts the retries
// silently, and logs their end (at Close) with the count.
func TestEpisodeClusterMasters(t *testing.T) {
	mr := miniredis.RunT(t)
	addr := mr.Addr()
	mr.Close() // nothing listens there now
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}, DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = cc.Close() })
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := invalidation.New(cc, invalidation.Config{Namespace: "tm", Logger: zap.New(core)}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.Start(ctx); err == nil {
		t.Fatal("Start confirmed a subscription on a cluster that is not there")
	}
	waitFor(t, 20*time.Second, "a retried listing", func() bool { return invalidation.TopoFailures(b) >= 2 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ends := logs.FilterMessage(invalidation.MsgTopoFails + episode.EndSuffix).All()
	if logs.FilterMessage(invalidation.MsgTopoFails).Len() != 1 || len(ends) != 1 {
		t.Fatalf("logs %v: want one start and one end", logs.All())
	}
	if f := ends[0].ContextMap(); f["count"].(uint64) < 2 || f["ended"] != "closed" || f["last_error"] == nil {
		t.Fatalf("end %v: want the retries counted (at least 2), ended closed, and the last error", f)
	}
}
