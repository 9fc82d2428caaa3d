package invalidation

import (
	"context"
	"testing"
)

// Tests from the review of issue 11's fixes: each failed before its fix.

// TestReviewClusterResetAfterRepair: README says that on Redis Cluster "a
// reset sequence key (evicted, flushed, a failover to a lagging replica)
// never makes an instance skip an invalidation as a duplicate". The
// per-path memory that tells a reset from a copy (track.paths) is wiped by
// every anti-entropy repair (suspect cleared: paths = nil; reset:
// track{last: redis}). A reset that comes after such a repair, before the
// next message on a path, is invisible: the first message of the new
// numbering finds no path memory, is at or below last, and is dropped as a
// copy. (Anti-entropy repairs it with InvalidateAll a round later, but the
// invalidation itself was skipped.)
func TestReviewClusterResetAfterRepair(t *testing.T) {
	b, h, mr := multiPathBus(t)
	feed := pathFeed(t, b)
	// Ten messages, each copy arriving on both subscriptions.
	for s := uint64(1); s <= 10; s++ {
		feed(1, s, "k")
		feed(2, s, "k")
	}
	// A replayed message (path 1 goes backwards): suspect; anti-entropy
	// finds Redis at 10 and repairs, clearing the suspicion.
	feed(1, 5, "k")
	mr.Set(b.SeqKey(0), "10")
	if _, err := b.checkSequences(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The sequence key is evicted; a real write publishes seq 1.
	mr.Del(b.SeqKey(0))
	before := h.keys
	feed(1, 1, "fresh")
	feed(2, 1, "fresh")
	if h.keys == before {
		t.Errorf("the first invalidation after a sequence reset (seq 1, last applied 10) was dropped as a copy: Handler not called (Duplicates %d)",
			b.Stats().Duplicates)
	}
}
