package invalidation

import (
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type countingHandler struct {
	keys int
	alls []Cause
}

func (h *countingHandler) InvalidateKeys(k []string) { h.keys += len(k) }
func (h *countingHandler) InvalidateAll(c Cause)     { h.alls = append(h.alls, c) }

// TestSequenceTracking drives the worker's sequence logic directly.
func TestSequenceTracking(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	h := &countingHandler{}
	b, err := New(c, Config{}, h)
	if err != nil {
		t.Fatal(err)
	}
	other := InstanceID{9}
	feed := func(p int, seq uint64) {
		t.Helper()
		body := encode(other, p, OpDelete, time.Now().UnixNano(), []string{"k"}, nil)
		b.handle(item{payload: string(body) + strconv.FormatUint(seq, 10)})
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
