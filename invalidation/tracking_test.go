package invalidation

import (
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/redis/go-redis/v9"
)

type countingHandler struct {
	keys int
	alls []Cause
}

func (h *countingHandler) InvalidateKeys(k []string) { h.keys += len(k) }
func (h *countingHandler) InvalidateAll(c Cause)     { h.alls = append(h.alls, c) }

// newUnstartedBus returns a bus that is never started, over a client that
// is never dialled, for driving the worker's logic directly.
func newUnstartedBus(t *testing.T) (*Bus, *countingHandler) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = c.Close() })
	h := &countingHandler{}
	b, err := New(c, Config{}, h)
	if err != nil {
		t.Fatal(err)
	}
	return b, h
}

// TestSequenceTracking drives the worker's sequence logic directly.
func TestSequenceTracking(t *testing.T) {
	b, h := newUnstartedBus(t)
	other := InstanceID{9}
	feed := func(p int, seq uint64) {
		t.Helper()
		body := encode(other, p, opDelete, time.Now().UnixNano(), []string{"k"}, nil)
		b.handle(item{payload: string(wire.AppendSeq(body, seq))}, nil)
	}
	steps := []struct {
		name      string
		run       func()
		wantAlls  []Cause
		wantGaps  uint64
		wantReset uint64
	}{
		{"first message is the baseline", func() { feed(0, 10) }, nil, 0, 0},
		{"contiguous", func() { feed(0, 11); feed(0, 12) }, nil, 0, 0},
		{"other partition independent", func() { feed(1, 1) }, nil, 0, 0},
		{"gap", func() { feed(0, 15) }, []Cause{CauseGap}, 1, 0},
		{"backwards", func() { feed(0, 3) }, []Cause{CauseSeqReset}, 1, 1},
		{"repeat", func() { feed(0, 3) }, []Cause{CauseSeqReset}, 1, 2},
		{"late after lost-tail repair", func() {
			b.last[0] = track{last: 8, lateLo: 3, lateHi: 8} // as anti-entropy leaves it
			feed(0, 4)
			feed(0, 8)
		}, nil, 1, 2},
		{"next closes the late window", func() { feed(0, 9); feed(0, 5) }, []Cause{CauseSeqReset}, 1, 3},
	}
	for _, st := range steps {
		h.alls = nil
		st.run()
		b.applyPending()
		s := b.Stats()
		if len(h.alls) != len(st.wantAlls) || (len(h.alls) > 0 && h.alls[0] != st.wantAlls[0]) {
			t.Errorf("%s: InvalidateAll %v, want %v", st.name, h.alls, st.wantAlls)
		}
		if s.Gaps != st.wantGaps || s.SeqResets != st.wantReset {
			t.Errorf("%s: gaps %d, resets %d; want %d, %d", st.name, s.Gaps, s.SeqResets, st.wantGaps, st.wantReset)
		}
	}
	if got := b.Stats().Applied; got != uint64(h.keys) || got != 11 {
		t.Errorf("applied %d, keys %d; want 11 each", got, h.keys)
	}
}

// TestMultiPathObserve drives the Redis Cluster tracker: every message
// arrives on several FIFO paths; the first copy is applied, later copies are
// duplicates, and a missing sequence is lost only when no path fills it
// within the grace.
func TestMultiPathObserve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const grace = 50 * time.Millisecond
	var tr track
	tr.last = 10
	type step struct {
		seq         uint64
		at          time.Duration
		apply, hole bool
		wantLast    uint64
		wantHoles   int
		note        string
	}
	steps := []step{
		{11, 0, true, false, 11, 0, "next, direct path"},
		{11, 1, false, false, 11, 0, "same, forwarded: duplicate"},
		{12, 2, true, false, 12, 0, "next"},
		{11, 3, false, false, 12, 0, "late forwarded copy of an applied one: duplicate"},
		// A forwarded copy arrives before the direct one: applied once.
		{13, 4, true, false, 13, 0, "13 first via a forward"},
		{13, 5, false, false, 13, 0, "13 via direct: duplicate"},
		// One path lost 14 (its copy never came); 15 opens a hole that
		// another path fills: no gap.
		{15, 6, true, true, 15, 1, "15 skips 14: provisional hole"},
		{14, 7, true, false, 15, 0, "14 via another path fills the hole: applied, not a duplicate"},
		{14, 8, false, false, 15, 0, "14 again: duplicate"},
		// 20 leaves 16..19 open; 17 and 18 fill the middle.
		{20, 9, true, true, 20, 1, "16..19 missing"},
		{17, 10, true, false, 20, 2, "split: 16 and 18..19"},
		{19, 11, true, false, 20, 2, "shrink from the top: 16 and 18"},
		{18, 12, true, false, 20, 1, "18 closes the upper run"},
		{17, 13, false, false, 20, 1, "17 again: duplicate"},
		{3, 14, false, false, 20, 1, "far below (late copy or reset): a duplicate by number; trackMulti tells a reset by its path"},
	}
	for _, s := range steps {
		apply, hole, forced := tr.observe(s.seq, t0.Add(s.at*time.Millisecond), grace)
		if apply != s.apply || hole != s.hole || forced != 0 || tr.last != s.wantLast || len(tr.holes) != s.wantHoles {
			t.Fatalf("%s: seq %d: apply %v hole %v forced %d last %d holes %v; want %v %v 0 %d %d holes",
				s.note, s.seq, apply, hole, forced, tr.last, tr.holes, s.apply, s.hole, s.wantLast, s.wantHoles)
		}
	}
	// 16 is still open (due at 9ms + grace). Not yet due:
	if n, next := tr.expire(t0.Add(58 * time.Millisecond)); n != 0 || !next.Equal(t0.Add(59*time.Millisecond)) {
		t.Fatalf("expire before due: %d lost, next %v", n, next)
	}
	// Due: one gap, and 16 arriving afterwards is a duplicate (the repair
	// that the gap triggers covers it).
	if n, next := tr.expire(t0.Add(59 * time.Millisecond)); n != 1 || !next.IsZero() || tr.holes != nil {
		t.Fatalf("expire at due: %d lost, next %v, holes %v; want 1, zero, none", n, next, tr.holes)
	}
	if apply, _, _ := tr.observe(16, t0.Add(60*time.Millisecond), grace); apply {
		t.Fatalf("16 after its gap was declared: applied, want duplicate")
	}
	// Bounded: more than maxHoles open runs declare the oldest at once.
	forcedTotal := 0
	for i := 0; i < maxHoles+3; i++ {
		_, _, f := tr.observe(tr.last+2, t0, grace)
		forcedTotal += f
	}
	if len(tr.holes) != maxHoles || forcedTotal != 3 {
		t.Fatalf("holes %d, forced %d; want %d, 3", len(tr.holes), forcedTotal, maxHoles)
	}
}

// TestMultiPathHandle: the worker's Redis Cluster path counts duplicates,
// reports no gap for a hole another copy fills, and one gap for a hole
// nobody fills once the grace has passed.
func TestMultiPathHandle(t *testing.T) {
	b, h := newUnstartedBus(t)
	b.multiPath = true
	other := InstanceID{9}
	// feed delivers (path, sequence) pairs: paths 1, 2 and 3 are the
	// subscriptions on three masters.
	feed := func(p int, pathSeqs ...uint64) {
		t.Helper()
		for i := 0; i < len(pathSeqs); i += 2 {
			body := encode(other, p, opDelete, time.Now().UnixNano(), []string{"k"}, nil)
			b.handle(item{payload: string(wire.AppendSeq(body, pathSeqs[i+1])), path: int(pathSeqs[i])}, nil)
		}
		b.applyPending()
	}
	// Three paths deliver 1..5, interleaved; path 2 lost 3.
	feed(7, 1, 1, 1, 2, 2, 1, 1, 3, 3, 1, 3, 2, 1, 4, 2, 2, 3, 3, 1, 5, 2, 4, 3, 4, 2, 5, 3, 5)
	s := b.Stats()
	if s.Applied != 5 || s.Duplicates != 9 || s.Gaps != 0 || len(h.alls) != 0 || !b.gapDue.IsZero() {
		t.Fatalf("applied %d, duplicates %d, gaps %d, alls %v, gapDue %v; want 5, 9, 0, none, zero",
			s.Applied, s.Duplicates, s.Gaps, h.alls, b.gapDue)
	}
	// 7 is lost on every path; 6 and 8 arrive on three paths. 8 opens a hole.
	feed(7, 1, 6, 1, 8, 2, 6, 2, 8, 3, 6, 3, 8)
	if b.gapDue.IsZero() {
		t.Fatal("no gap deadline after a hole")
	}
	b.expireHoles(b.gapDue.Add(-time.Millisecond))
	b.applyPending()
	if s := b.Stats(); s.Gaps != 0 || len(h.alls) != 0 {
		t.Fatalf("before the grace: gaps %d, alls %v", s.Gaps, h.alls)
	}
	b.expireHoles(b.gapDue)
	b.applyPending()
	if s := b.Stats(); s.Gaps != 1 || len(h.alls) != 1 || h.alls[0] != CauseGap || s.Applied != 7 || s.SeqResets != 0 {
		t.Fatalf("after the grace: gaps %d, alls %v, applied %d, resets %d; want 1, [gap], 7, 0", s.Gaps, h.alls, s.Applied, s.SeqResets)
	}
	// A smaller sequence on a path that delivered a higher one is no copy
	// (each path carries a message once): the sequence key was reset, or a
	// message replayed. It is applied, and the partition is suspect, so
	// that every copy is applied until anti-entropy has read the key; the
	// decision (and the reset count) is anti-entropy's.
	feed(7, 1, 2)
	if s := b.Stats(); s.SeqResets != 0 || s.Duplicates != 13 || s.Applied != 8 {
		t.Fatalf("backwards on a path: resets %d, duplicates %d, applied %d; want 0, 13, 8", s.SeqResets, s.Duplicates, s.Applied)
	}
	feed(7, 2, 2, 3, 9, 1, 9, 2, 9)
	if s := b.Stats(); s.Duplicates != 13 || s.Applied != 12 || s.Gaps != 1 {
		t.Fatalf("suspect partition: duplicates %d, applied %d, gaps %d; want 13, 12, 1", s.Duplicates, s.Applied, s.Gaps)
	}
	b.trackMu.Lock()
	tr := b.last[7]
	b.trackMu.Unlock()
	if !tr.suspect || !tr.touched || tr.anomalies != 2 || tr.last != 9 {
		t.Fatalf("track %+v: want suspect, touched, 2 anomalies, last 9", tr)
	}
}

// TestHandleDoesNotAllocate: the worker applies a delete message from
// another instance without allocating (the decoded keys reuse one buffer),
// so that a burst of invalidations adds no garbage on a loaded service.
func TestHandleDoesNotAllocate(t *testing.T) {
	b, h := newUnstartedBus(t)
	body := string(encode(InstanceID{9}, 0, opDelete, time.Now().UnixNano(), []string{"user:1", "user:2", "cart:7"}, nil))
	payloads := make([]string, 200)
	for i := range payloads {
		payloads[i] = string(wire.AppendSeq([]byte(body), uint64(i+1)))
	}
	var keys []string
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		keys = b.handle(item{payload: payloads[i]}, keys)
		i++
	})
	if allocs != 0 {
		t.Errorf("handle: %v allocations per message, want 0", allocs)
	}
	if s := b.Stats(); s.Applied != uint64(i) || s.Gaps != 0 || h.keys != 3*i {
		t.Errorf("applied %d, gaps %d, keys %d; want %d, 0, %d", s.Applied, s.Gaps, h.keys, i, 3*i)
	}
}
