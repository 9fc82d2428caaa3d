package invalidation_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/invalidation"
)

// TestUndecodableLoggedPerEpisode: a stream of messages the bus cannot read
// (a publisher of another format version during a rolling upgrade, or
// garbage on the channel) is a degradation like failed anti-entropy rounds:
// it logs one Warn when it starts and one Info with the count when it ends,
// not a line per message. Oversized payloads count in the same episode.
func TestUndecodableLoggedPerEpisode(t *testing.T) {
	_, c := startMini(t)
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := invalidation.New(c, invalidation.Config{Namespace: "dec", AntiEntropyInterval: -1, Logger: zap.New(core)}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	invalidation.SetEpisodeQuiet(b, 2*time.Second) // outlasts a scheduling stall between publishes
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 200
	big := strings.Repeat("x", invalidation.MaxBodySize+100)
	for i := 0; i < n; i++ {
		p := "\xce\x02 a message of format version 2"
		if i == n/2 {
			p = big
		}
		if err := c.Publish(ctx, b.Channel(), p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "every message rejected", func() bool { return b.Stats().DecodeRejects == n })
	if warns := logs.FilterLevelExact(zapcore.WarnLevel).All(); len(warns) != 1 || warns[0].Message != invalidation.MsgDecodeFails {
		t.Fatalf("%d Warns for %d unreadable messages, want one (%q); the first: %v", len(warns), n, invalidation.MsgDecodeFails, warns[:min(len(warns), 2)])
	}
	end := invalidation.MsgDecodeFails + ": episode ended"
	waitFor(t, 10*time.Second, "the end of the episode", func() bool { return logs.FilterMessage(end).Len() > 0 })
	ends := logs.FilterMessage(end).All()
	if len(ends) != 1 || ends[0].ContextMap()["count"] != uint64(n) {
		t.Errorf("episode ends %v, want one with count %d", ends, n)
	}
}
