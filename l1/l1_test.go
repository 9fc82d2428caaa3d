package l1

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func newTest[V any](t *testing.T, cfg Config, cost func(V) int64) *Cache[V] {
	t.Helper()
	c, err := New(cfg, cost)
	if err != nil {
		t.Fatalf("New(%+v) error: %v", cfg, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fill reserves and fills key, failing the test if the fill is not accepted,
// then waits for ristretto to apply it.
func fill[V any](t *testing.T, c *Cache[V], key string, v V, ttl time.Duration) {
	t.Helper()
	if !c.Fill(c.Reserve(key), v, ttl) {
		t.Fatalf("Fill(%q) = false, want true", key)
	}
	c.Wait()
}

func wantHit[V comparable](t *testing.T, c *Cache[V], key string, want V) {
	t.Helper()
	got, ok := c.Get(key)
	if !ok || got != want {
		t.Fatalf("Get(%q) = %v, %v; want %v, true", key, got, ok, want)
	}
}

func wantMiss[V any](t *testing.T, c *Cache[V], key string) {
	t.Helper()
	if got, ok := c.Get(key); ok {
		t.Fatalf("Get(%q) = %v, true; want a miss", key, got)
	}
}

func TestNewConfigErrors(t *testing.T) {
	cost := func(int) int64 { return 1 }
	tests := []struct {
		name string
		cfg  Config
		cost func(int) int64
	}{
		{"negative MaxEntries", Config{MaxEntries: -1}, nil},
		{"negative MaxBytes", Config{MaxBytes: -1}, cost},
		{"both capacities", Config{MaxEntries: 10, MaxBytes: 10}, cost},
		{"MaxBytes without cost", Config{MaxBytes: 1 << 20}, nil},
		{"negative NumCounters", Config{NumCounters: -1}, nil},
		{"negative BufferItems", Config{BufferItems: -1}, nil},
		{"negative ClockResolution", Config{ClockResolution: -time.Second}, nil},
		{"negative GenerationSlots", Config{GenerationSlots: -1}, nil},
		{"negative RefreshRetry", Config{RefreshRetry: -time.Second}, nil},
		{"GenerationSlots above the maximum", Config{GenerationSlots: MaxGenerationSlots + 1}, nil},
		{"GenerationSlots MaxInt", Config{GenerationSlots: math.MaxInt}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.cfg, tc.cost)
			if !errors.Is(err, ErrConfig) {
				t.Errorf("New(%+v) error = %v, want %v", tc.cfg, err, ErrConfig)
			}
			if c != nil {
				t.Errorf("New(%+v) returned a cache with an error", tc.cfg)
				c.Close()
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	c := newTest[int](t, Config{}, nil)
	if got := c.Stats().MaxCost; got != DefaultMaxEntries {
		t.Errorf("MaxCost = %d, want %d", got, DefaultMaxEntries)
	}
	if got, want := len(c.gens), 1<<17; got != want {
		t.Errorf("generation slots = %d, want %d", got, want)
	}
	small := newTest[int](t, Config{MaxEntries: 10}, nil)
	if got, want := len(small.gens), 1<<minGenBits; got != want {
		t.Errorf("generation slots for 10 entries = %d, want %d", got, want)
	}
}

// TestGenerationSlotsMaximum: MaxGenerationSlots itself is accepted, and a
// count just above a power of two rounds up to the next one.
func TestGenerationSlotsMaximum(t *testing.T) {
	for _, tc := range []struct{ slots, want int }{
		{MaxGenerationSlots, MaxGenerationSlots},
		{MaxGenerationSlots/2 + 1, MaxGenerationSlots},
		{3000, 4096},
	} {
		c := newTest[int](t, Config{MaxEntries: 10, GenerationSlots: tc.slots}, nil)
		if got := len(c.gens); got != tc.want {
			t.Errorf("GenerationSlots %d: %d slots, want %d", tc.slots, got, tc.want)
		}
		c.Close()
	}
}

// TestCapacityInEntries checks that ristretto's internal per-item cost does
// not shrink the cache: MaxEntries 1000 holds about 1000 entries.
func TestCapacityInEntries(t *testing.T) {
	const capacity = 1000
	c := newTest[int](t, Config{MaxEntries: capacity}, nil)
	for i := range 3 * capacity {
		c.Fill(c.Reserve("k"+strconv.Itoa(i)), i, 0)
		if i%100 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	present := 0
	for i := range 3 * capacity {
		if _, ok := c.Get("k" + strconv.Itoa(i)); ok {
			present++
		}
	}
	if present < capacity*95/100 || present > capacity {
		t.Errorf("entries present = %d, want between %d and %d", present, capacity*95/100, capacity)
	}
	st := c.Stats()
	if st.Cost < capacity*95/100 || st.Cost > capacity {
		t.Errorf("Stats.Cost = %d, want about %d", st.Cost, capacity)
	}
	if st.Entries != int64(present) {
		t.Errorf("Stats.Entries = %d, want %d (entries present)", st.Entries, present)
	}
	if st.Evictions+st.SetsRejected == 0 {
		t.Errorf("Stats = %+v, want evictions or rejections after overfilling", st)
	}
}

func TestCapacityInBytes(t *testing.T) {
	const maxBytes = 1 << 20
	c := newTest(t, Config{MaxBytes: maxBytes}, func(v []byte) int64 { return int64(len(v)) })
	val := make([]byte, 1000)
	perEntry := int64(len(val)) + int64(len("k0000")) + EntryOverhead
	for i := range 4000 {
		key := fmt.Sprintf("k%04d", i)
		c.Fill(c.Reserve(key), val, 0)
		if i%100 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	st := c.Stats()
	if st.Cost > maxBytes || st.Cost < maxBytes*9/10 {
		t.Errorf("Stats.Cost = %d, want about %d", st.Cost, maxBytes)
	}
	if want := maxBytes / perEntry; st.Entries < want*9/10 || st.Entries > want {
		t.Errorf("Stats.Entries = %d, want about %d", st.Entries, want)
	}
}

func TestGetFillInvalidate(t *testing.T) {
	c := newTest[string](t, Config{MaxEntries: 100}, nil)
	b := otherSlot(c, "a")
	wantMiss(t, c, "a")
	fill(t, c, "a", "v1", 0)
	fill(t, c, b, "w1", time.Hour)
	wantHit(t, c, "a", "v1")
	wantHit(t, c, b, "w1")

	c.Invalidate("a")
	wantMiss(t, c, "a")
	wantHit(t, c, b, "w1")

	fill(t, c, "a", "v2", 0)
	wantHit(t, c, "a", "v2")

	c.InvalidateAll()
	wantMiss(t, c, "a")
	wantMiss(t, c, b)
	fill(t, c, "a", "v3", 0)
	wantHit(t, c, "a", "v3")

	st := c.Stats()
	want := Stats{Hits: 5, Misses: 4, Stale: 2, Fills: 4, Invalidated: 1, EpochBumps: 1}
	if st.Hits != want.Hits || st.Misses != want.Misses || st.Stale != want.Stale ||
		st.Fills != want.Fills || st.Invalidated != want.Invalidated || st.EpochBumps != want.EpochBumps {
		t.Errorf("Stats = %+v, want counters %+v", st, want)
	}
}

// otherSlot returns a key whose generation slot differs from those of the
// avoid keys (slots depend on the cache's random hash seed; keys sharing one
// invalidate each other, by design).
func otherSlot[V any](c *Cache[V], avoid ...string) string {
next:
	for i := 0; ; i++ {
		k := "b" + strconv.Itoa(i)
		for _, a := range avoid {
			if a == k || c.hash(k)&c.genMask == c.hash(a)&c.genMask {
				continue next
			}
		}
		return k
	}
}

// TestFillGuard covers the fill race: a ticket reserved before an
// invalidation must never produce a servable entry.
func TestFillGuard(t *testing.T) {
	tests := []struct {
		name       string
		invalidate func(c *Cache[int])
	}{
		{"Invalidate", func(c *Cache[int]) { c.Invalidate("k") }},
		{"InvalidateAll", func(c *Cache[int]) { c.InvalidateAll() }},
	}
	for _, tc := range tests {
		// reserve → invalidate → fill: the guard refuses the fill.
		t.Run(tc.name+"/BeforeFill", func(t *testing.T) {
			c := newTest[int](t, Config{MaxEntries: 100}, nil)
			fill(t, c, "k", 1, 0)
			tk := c.Reserve("k")
			tc.invalidate(c)
			if c.Fill(tk, 1, 0) {
				t.Fatal("Fill with a ticket reserved before the invalidation = true, want false")
			}
			c.Wait()
			wantMiss(t, c, "k")
			if got := c.Stats().FillsRefused; got != 1 {
				t.Errorf("FillsRefused = %d, want 1", got)
			}
			fill(t, c, "k", 2, 0) // a fresh ticket works
			wantHit(t, c, "k", 2)
		})
		// reserve → fill passes the guard → invalidate while the fill is
		// staged: Get refuses the staged entry, and handing the stage to
		// ristretto drops it.
		t.Run(tc.name+"/WhileStaged", func(t *testing.T) {
			c := newTest[int](t, Config{MaxEntries: 100}, nil)
			tk := c.Reserve("k")
			c.hookAfterGrd = func() { tc.invalidate(c) }
			if !c.Fill(tk, 1, 0) {
				t.Fatal("Fill = false, want true (the guard ran before the invalidation)")
			}
			c.hookAfterGrd = nil
			wantMiss(t, c, "k")
			c.Wait()
			wantMiss(t, c, "k")
			if got := c.Stats().FillsRefused; got != 1 {
				t.Errorf("FillsRefused = %d, want 1", got)
			}
			fill(t, c, "k", 2, 0)
			wantHit(t, c, "k", 2)
		})
		// reserve → fill → the stage's re-check passes → invalidate →
		// ristretto's set lands: Get still refuses the entry.
		t.Run(tc.name+"/AfterRecheck", func(t *testing.T) {
			c := newTest[int](t, Config{MaxEntries: 100}, nil)
			// Set before Fill: the stage's lock orders this write before
			// the read by whichever flush (ticker or Wait) hands k over.
			c.hookBeforeSet = func() { tc.invalidate(c) }
			if !c.Fill(c.Reserve("k"), 1, 0) {
				t.Fatal("Fill = false, want true")
			}
			c.Wait()
			c.hookBeforeSet = nil
			wantMiss(t, c, "k")
			if got := c.Stats().Stale; got != 1 {
				t.Errorf("Stale = %d, want 1", got)
			}
			fill(t, c, "k", 2, 0)
			wantHit(t, c, "k", 2)
		})
	}
}

func TestFillRejectsBadInput(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	if c.Fill(Ticket{}, 1, 0) {
		t.Error("Fill(zero Ticket) = true, want false")
	}
	if c.Fill(c.Reserve("k"), 1, -time.Second) {
		t.Error("Fill(ttl < 0) = true, want false")
	}
	c.Wait()
	wantMiss(t, c, "k")
	if tk := c.Reserve("k"); tk.Key() != "k" {
		t.Errorf("Ticket.Key() = %q, want %q", tk.Key(), "k")
	}
}

// TestCollisionIsAMiss stores an entry for another key under a key's hash,
// as a 64-bit hash collision would, and checks that Get compares the key.
func TestCollisionIsAMiss(t *testing.T) {
	c := newTest[string](t, Config{MaxEntries: 100}, nil)
	tk := c.Reserve("a")
	c.rc.Set(tk.hash, &entry[string]{key: "b", epoch: tk.epoch, gen: tk.gen, exp: noExpiry, value: "b's"}, 1)
	c.Wait()
	wantMiss(t, c, "a")
	if got := c.Stats().Collisions; got != 1 {
		t.Errorf("Collisions = %d, want 1", got)
	}
}

// TestGenerationSlotSharing checks that keys sharing a generation slot only
// cost each other misses.
func TestGenerationSlotSharing(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100, GenerationSlots: 1}, nil)
	a, b := "a", ""
	for i := 0; b == ""; i++ {
		k := "b" + strconv.Itoa(i)
		if c.hash(k)&c.genMask == c.hash(a)&c.genMask {
			b = k
		}
	}
	fill(t, c, a, 1, 0)
	fill(t, c, b, 2, 0)
	c.Invalidate(a)
	wantMiss(t, c, a)
	wantMiss(t, c, b) // shares the slot: a miss, not a stale read
	fill(t, c, b, 3, 0)
	wantHit(t, c, b, 3)
}

func TestNewerOrEqual(t *testing.T) {
	tests := []struct {
		cur, prev *entry[int]
		want      bool
	}{
		{&entry[int]{epoch: 2, gen: 0}, &entry[int]{epoch: 1, gen: 5}, true},
		{&entry[int]{epoch: 1, gen: 5}, &entry[int]{epoch: 2, gen: 0}, false},
		{&entry[int]{epoch: 1, gen: 3}, &entry[int]{epoch: 1, gen: 3}, true},
		{&entry[int]{epoch: 1, gen: 2}, &entry[int]{epoch: 1, gen: 3}, false},
	}
	for _, tc := range tests {
		if got := newerOrEqual(tc.cur, tc.prev); got != tc.want {
			t.Errorf("newerOrEqual(epoch %d gen %d, epoch %d gen %d) = %v, want %v",
				tc.cur.epoch, tc.cur.gen, tc.prev.epoch, tc.prev.gen, got, tc.want)
		}
	}
}

// TestSetDroppedByFullBuffer blocks ristretto's set-processing goroutine in a
// callback, fills its set buffer through staged fills, and checks that the
// fills dropped when the stage is handed over are counted and harmless: every
// staged fill is either set or dropped, and the cache still holds and serves
// exactly one entry.
// blockFirstCallback makes the first ristretto callback (an eviction or
// rejection) close blocked and wait for release, so that the test controls
// when ristretto's goroutine goes on. Later callbacks pass; the test's end
// releases a callback still waiting.
func blockFirstCallback[V any](t *testing.T, c *Cache[V]) (blocked, release chan struct{}) {
	t.Helper()
	blocked, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.hookCallback = func() {
		once.Do(func() {
			close(blocked)
			<-release
		})
	}
	t.Cleanup(func() {
		once.Do(func() {}) // a late callback must not block
		select {
		case <-release:
		default:
			close(release)
		}
	})
	return blocked, release
}

func TestSetDroppedByFullBuffer(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1}, nil)
	fill(t, c, "first", 1, 0)

	blocked, release := blockFirstCallback(t, c)
	// A second key in a full cache makes ristretto evict or reject: the
	// callback blocks its goroutine.
	before := c.Stats().Fills
	c.Fill(c.Reserve("second"), 2, 0)
	c.flushStages()
	<-blocked

	staged := uint64(1)
	for i := 0; i < 1<<17 && c.Stats().SetsDropped == 0; i++ {
		if !c.Fill(c.Reserve("x"+strconv.Itoa(i)), i, 0) {
			t.Fatalf("Fill(x%d) = false with a current ticket", i)
		}
		staged++
		if i%1024 == 1023 {
			c.flushStages()
		}
	}
	c.flushStages()
	if c.Stats().SetsDropped == 0 {
		t.Fatal("no staged fill was dropped with ristretto's goroutine blocked")
	}
	close(release)
	c.Wait()
	c.hookCallback = nil

	st := c.Stats()
	if got := st.Fills - before + st.SetsDropped; got != staged {
		t.Errorf("Fills %d + SetsDropped %d = %d, want the %d fills staged", st.Fills-before, st.SetsDropped, got, staged)
	}
	if st.Cost != 1 || st.Entries != 1 {
		t.Errorf("after draining: Cost = %d, Entries = %d; want 1, 1", st.Cost, st.Entries)
	}
	// Exactly one entry is resident, and it can still be read and replaced.
	resident := ""
	for _, k := range append([]string{"first", "second"}, keysX(1<<17)...) {
		if _, ok := c.Get(k); ok {
			if resident != "" {
				t.Fatalf("both %q and %q resident in a 1-entry cache", resident, k)
			}
			resident = k
		}
	}
	if resident == "" {
		t.Fatal("no entry resident after draining")
	}
	fill(t, c, resident, -1, 0)
	wantHit(t, c, resident, -1)
}

func keysX(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "x" + strconv.Itoa(i)
	}
	return keys
}

func TestTTLExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const res = 10 * time.Millisecond
		c := newTest[string](t, Config{MaxEntries: 100, ClockResolution: res}, nil)
		fill(t, c, "short", "s", 100*time.Millisecond)
		fill(t, c, "forever", "f", 0)
		wantHit(t, c, "short", "s")

		time.Sleep(100*time.Millisecond - res)
		synctest.Wait() // let the clock goroutine record the tick
		wantHit(t, c, "short", "s")

		time.Sleep(res)
		synctest.Wait()
		wantMiss(t, c, "short")
		if got := c.Stats().Expired; got != 1 {
			t.Errorf("Expired = %d, want 1", got)
		}
		c.Wait()
		if got := c.Stats().Entries; got != 1 {
			t.Errorf("Entries = %d after expiry, want 1 (the expired entry is removed)", got)
		}

		time.Sleep(time.Minute)
		synctest.Wait()
		wantHit(t, c, "forever", "f")
		if err := c.Close(); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	})
}

func TestCloseIdempotentAndInert(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	fill(t, c, "k", 1, 0)
	tk := c.Reserve("k")
	for i := range 2 {
		if err := c.Close(); err != nil {
			t.Fatalf("Close() #%d = %v, want nil", i+1, err)
		}
	}
	wantMiss(t, c, "k")
	if c.Fill(tk, 2, 0) {
		t.Error("Fill after Close = true, want false")
	}
	c.Invalidate("k")
	c.InvalidateAll()
	c.Wait()
	if st := c.Stats(); st.Entries != 0 || st.Cost != 0 {
		t.Errorf("Stats after Close: Entries %d, Cost %d; want 0, 0", st.Entries, st.Cost)
	}
}

// TestCloseDuringUse closes the cache while goroutines call every method;
// nothing may panic (ristretto panics on Set after Close if not gated), and
// after Close returns every call is inert.
func TestCloseDuringUse(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 64}, nil)
	const workers = 6
	var (
		started sync.WaitGroup
		done    sync.WaitGroup
		closed  = make(chan struct{})
	)
	started.Add(workers)
	done.Add(workers)
	for w := range workers {
		go func() {
			defer done.Done()
			afterClose := 0
			for i := 0; ; i++ {
				k := "k" + strconv.Itoa(i%128)
				switch (w + i) % 6 {
				case 0, 1:
					c.Get(k)
				case 2:
					c.Fill(c.Reserve(k), i, time.Hour)
				case 3:
					c.Invalidate(k)
				case 4:
					if i%64 == 0 {
						c.Wait()
						c.InvalidateAll()
					}
				case 5:
					c.Stats()
				}
				if i == 1000 {
					started.Done()
				}
				select {
				case <-closed:
					// Close has returned: the cache must be inert.
					if _, ok := c.Get(k); ok {
						t.Errorf("Get(%q) hit after Close", k)
					}
					if c.Fill(c.Reserve(k), i, 0) {
						t.Errorf("Fill(%q) = true after Close", k)
					}
					if afterClose++; afterClose == 100 {
						return
					}
				default:
				}
			}
		}()
	}
	started.Wait()
	var closers sync.WaitGroup
	for range 2 {
		closers.Go(func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close() = %v, want nil", err)
			}
		})
	}
	closers.Wait()
	close(closed)
	done.Wait()
}

func TestValid(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	if c.Valid(Ticket{}) {
		t.Fatalf("the zero Ticket is valid")
	}
	tk := c.Reserve("a")
	other := c.Reserve("b")
	if !c.Valid(tk) {
		t.Fatalf("a fresh ticket is not valid")
	}
	c.Invalidate("a")
	if c.Valid(tk) {
		t.Fatalf("ticket valid after Invalidate of its key")
	}
	// b's ticket survives unless b shares a's generation slot.
	if !c.Valid(other) && c.hash("a")&c.genMask != c.hash("b")&c.genMask {
		t.Fatalf("ticket of another key invalidated")
	}
	tk = c.Reserve("a")
	c.InvalidateAll()
	if c.Valid(tk) {
		t.Fatalf("ticket valid after InvalidateAll")
	}
}

// sameStripe returns n distinct keys that share one fill-stage stripe.
func sameStripe[V any](c *Cache[V], n int) []string {
	var keys []string
	want := c.stageOf(c.hash("s0"))
	for i := 0; len(keys) < n; i++ {
		if k := "s" + strconv.Itoa(i); c.stageOf(c.hash(k)) == want {
			keys = append(keys, k)
		}
	}
	return keys
}

// TestStage checks the fill stage: a staged fill is served at once, a refill
// of a staged key keeps the newer stamps, a full stripe is handed to
// ristretto as one batch, a clock tick hands over the rest, and staged
// entries expire and are invalidated like stored ones.
func TestStage(t *testing.T) {
	t.Run("ServedAtOnce", func(t *testing.T) {
		// An hour-long tick: only a full stripe or Wait hands fills over.
		c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
		if !c.Fill(c.Reserve("k"), 1, 0) {
			t.Fatal("Fill = false, want true")
		}
		wantHit(t, c, "k", 1)
		if got := c.Stats().Fills; got != 0 {
			t.Errorf("Fills = %d before the stage is handed over, want 0", got)
		}
		c.Wait()
		if got := c.Stats().Fills; got != 1 {
			t.Errorf("Fills = %d after Wait, want 1", got)
		}
		wantHit(t, c, "k", 1)
	})
	t.Run("RefillKeepsNewer", func(t *testing.T) {
		c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
		old := c.Reserve("k")
		c.Invalidate("k")
		cur := c.Reserve("k")
		if !c.Fill(cur, 2, 0) {
			t.Fatal("Fill(current ticket) = false, want true")
		}
		if c.Fill(old, 1, 0) {
			t.Fatal("Fill(outdated ticket) = true, want false")
		}
		if !c.Fill(cur, 3, 0) {
			t.Fatal("second Fill(current ticket) = false, want true")
		}
		wantHit(t, c, "k", 3)
		c.Wait()
		wantHit(t, c, "k", 3)
		if st := c.Stats(); st.Fills != 1 || st.FillsRefused != 2 {
			t.Errorf("Fills = %d, FillsRefused = %d; want 1 and 2 (the outdated ticket; the staged entry the refill superseded)", st.Fills, st.FillsRefused)
		}
	})
	t.Run("FullStripe", func(t *testing.T) {
		c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
		keys := sameStripe(c, stageCap+1)
		for i, k := range keys[:stageCap] {
			c.Fill(c.Reserve(k), i, 0)
		}
		if got := c.Stats().Fills; got != 0 {
			t.Fatalf("Fills = %d with the stripe not yet full, want 0", got)
		}
		c.Fill(c.Reserve(keys[stageCap]), stageCap, 0)
		c.rc.Wait() // ristretto only: Wait would hand over the stage too
		if got := c.Stats().Fills; got != stageCap {
			t.Errorf("Fills = %d after the stripe overflowed, want %d", got, stageCap)
		}
		for i, k := range keys {
			wantHit(t, c, k, i)
		}
	})
	t.Run("ClockTick", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			const res = 10 * time.Millisecond
			c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: res}, nil)
			c.Fill(c.Reserve("k"), 1, 0)
			time.Sleep(res)
			synctest.Wait()
			if got := c.Stats().Fills; got != 1 {
				t.Errorf("Fills = %d one tick after Fill, want 1", got)
			}
			c.Close()
		})
	})
	t.Run("ExpiresAndInvalidates", func(t *testing.T) {
		c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
		short := otherSlot(c, "gone")
		all := otherSlot(c, "gone", short)
		c.Fill(c.Reserve(short), 1, time.Minute)
		c.Fill(c.Reserve("gone"), 2, 0)
		c.Fill(c.Reserve(all), 3, 0)
		c.Invalidate("gone")
		wantHit(t, c, short, 1)
		wantMiss(t, c, "gone")
		c.clk.now.Store(int64(2 * time.Minute)) // the coarse clock passes short's expiry
		wantMiss(t, c, short)
		wantHit(t, c, all, 3)
		c.InvalidateAll()
		wantMiss(t, c, all)
		c.Wait()
		if st := c.Stats(); st.Fills != 0 || st.FillsRefused != 3 {
			// The epoch bump outdated all three: the re-check drops them.
			t.Errorf("Fills = %d, FillsRefused = %d; want 0 and 3", st.Fills, st.FillsRefused)
		}
	})
}

// blockHandOver makes the next hand-over of a staged fill block (holding its
// stripe's lock) until release is closed; blocked is closed when it does.
func blockHandOver[V any](c *Cache[V]) (blocked, release chan struct{}) {
	blocked, release = make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	c.hookBeforeSet = func() {
		if first.CompareAndSwap(false, true) {
			close(blocked)
			<-release
		}
	}
	return blocked, release
}

// settles gives goroutine done a bounded chance to finish (no sleep) and
// reports whether it did.
func settles(done <-chan struct{}) bool {
	for i := 0; i < 1000; i++ {
		select {
		case <-done:
			return true
		default:
			runtime.Gosched()
		}
	}
	return false
}

// TestStageHandOverOrder: two fills of a key with the same stamps (two
// overlapping writers, say) must reach ristretto in the order they were
// staged, even when the first is handed over by a third fill overflowing
// the stripe and the second by a clock tick; otherwise the earlier value
// would come back for good after the later one was served.
func TestStageHandOverOrder(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
	keys := sameStripe(c, stageCap+1)
	k := keys[0]
	c.Fill(c.Reserve(k), 1, 0)
	for i, o := range keys[1:stageCap] {
		c.Fill(c.Reserve(o), i, 0)
	}
	blocked, release := blockHandOver(c)
	overflowed := make(chan struct{})
	go func() { // the stripe's 17th fill hands k=1 over, and blocks doing it
		c.Fill(c.Reserve(keys[stageCap]), 99, 0)
		close(overflowed)
	}()
	<-blocked
	second := make(chan struct{})
	go func() { // the same stamps, staged after k=1, then handed over by a tick
		c.Fill(c.Reserve(k), 2, 0)
		c.flushStages()
		close(second)
	}()
	if settles(second) {
		t.Error("a fill of the stripe finished while the stripe was being handed over")
	}
	close(release)
	<-overflowed
	<-second
	c.hookBeforeSet = nil
	c.Wait()
	wantHit(t, c, k, 2)
}

// TestWaitSeesHandOverInTransit: Wait must not return while another Fill
// is handing a stripe over, or fills that returned true would still miss.
func TestWaitSeesHandOverInTransit(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
	keys := sameStripe(c, stageCap+1)
	for i, k := range keys[:stageCap] {
		c.Fill(c.Reserve(k), i, 0)
	}
	blocked, release := blockHandOver(c)
	go c.Fill(c.Reserve(keys[stageCap]), 99, 0)
	<-blocked
	waited := make(chan struct{})
	go func() {
		c.Wait()
		close(waited)
	}()
	if settles(waited) {
		t.Error("Wait returned while a stripe was being handed over")
	}
	close(release)
	<-waited
	c.hookBeforeSet = nil
	for i, k := range keys[:stageCap] {
		wantHit(t, c, k, i)
	}
}

// TestStageAccounting: every Fill that returns true ends up counted once,
// as a fill handed to ristretto, refused (at hand-over, or superseded while
// staged), or dropped.
func TestStageAccounting(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Hour}, nil)
	accepted := 0
	fillOK := func(tk Ticket, v int) {
		if c.Fill(tk, v, 0) {
			accepted++
		}
	}
	old := c.Reserve("k")
	c.hookAfterGrd = func() { // between old's guard and its staging: a newer fill
		c.hookAfterGrd = nil
		c.Invalidate("k")
		fillOK(c.Reserve("k"), 2)
	}
	fillOK(old, 1) // passes the guard, then finds the newer fill staged
	cur := c.Reserve("k")
	fillOK(cur, 3) // supersedes 2
	fillOK(cur, 4) // same stamps: supersedes 3
	gone := otherSlot(c, "k")
	fillOK(c.Reserve(gone), 5)
	c.Invalidate(gone) // dropped at hand-over
	c.Wait()
	st := c.Stats()
	if got := st.Fills + st.FillsRefused + st.SetsDropped; got != uint64(accepted) {
		t.Errorf("Fills %d + FillsRefused %d + SetsDropped %d = %d, want the %d fills accepted",
			st.Fills, st.FillsRefused, st.SetsDropped, got, accepted)
	}
	if st.Fills != 1 {
		t.Errorf("Fills = %d, want 1 (only k=4 reaches ristretto)", st.Fills)
	}
	wantHit(t, c, "k", 4)
}

// TestEntriesAfterReapply: when a key's second fill reaches ristretto while
// its first is still queued, ristretto admits the first and rejects the
// second as a duplicate addition, and reapply sets the second again as an
// update. The key is then held once, and Stats.Entries must count it once.
func TestEntriesAfterReapply(t *testing.T) {
	c := newTest[int](t, Config{MaxBytes: 10_000}, func(v int) int64 { return int64(v) })
	fill(t, c, "a", 6000, 0)

	blocked, release := blockFirstCallback(t, c)
	// "a" and "b" do not fit together: ristretto evicts one or rejects "b",
	// and the callback blocks its goroutine. Either way about 3.8 kB stay
	// free, room for "k".
	if !c.Fill(c.Reserve("b"), 6000, 0) {
		t.Fatal("Fill(b) = false, want true")
	}
	c.flushStages()
	<-blocked
	// Both fills of "k" reach ristretto's set buffer as new items.
	for v := 1; v <= 2; v++ {
		if !c.Fill(c.Reserve("k"), v, 0) {
			t.Fatalf("Fill(k, %d) = false, want true", v)
		}
		c.flushStages()
	}
	close(release)
	c.Wait()
	c.hookCallback = nil

	wantHit(t, c, "k", 2)
	present := int64(1)
	for _, k := range []string{"a", "b"} {
		if _, ok := c.Get(k); ok {
			present++
		}
	}
	if present != 2 {
		t.Fatalf("%d of a, b, k present, want 2 (one of a, b, and k)", present)
	}
	if st := c.Stats(); st.Entries != present {
		t.Errorf("Stats.Entries = %d, want %d (entries present; Fills %d, SetsRejected %d, Evictions %d)",
			st.Entries, present, st.Fills, st.SetsRejected, st.Evictions)
	}
}

// TestClockShared: caches with the same resolution share one clock, which
// the last Close removes (goleak checks its goroutine is gone).
func TestClockShared(t *testing.T) {
	a := newTest[int](t, Config{MaxEntries: 100, ClockResolution: 3 * time.Millisecond}, nil)
	b := newTest[int](t, Config{MaxEntries: 100, ClockResolution: 3 * time.Millisecond}, nil)
	o := newTest[int](t, Config{MaxEntries: 100, ClockResolution: 7 * time.Millisecond}, nil)
	if a.clk != b.clk {
		t.Fatalf("two caches with one resolution have two clocks")
	}
	if a.clk == o.clk {
		t.Fatalf("caches with different resolutions share a clock")
	}
	registered := func(res time.Duration) bool {
		clocks.Lock()
		defer clocks.Unlock()
		return clocks.byRes[res] != nil
	}
	a.Close()
	if !registered(3 * time.Millisecond) {
		t.Fatalf("the clock was removed while b still uses it")
	}
	fill(t, b, "k", 1, time.Hour)
	wantHit(t, b, "k", 1)
	b.Close()
	o.Close()
	if registered(3*time.Millisecond) || registered(7*time.Millisecond) {
		t.Fatalf("a clock outlived its last cache")
	}
}

// TestClockIdle: with no reads the clock stops ticking, and the first read
// after that sees the wall clock, so an entry that expired meanwhile is
// not served.
func TestClockIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const res = 10 * time.Millisecond
		c := newTest[string](t, Config{MaxEntries: 100, ClockResolution: res}, nil)
		fill(t, c, "k", "v", time.Second)
		wantHit(t, c, "k", "v")
		time.Sleep(clockIdleFor + 5*res)
		synctest.Wait()
		if got := c.clk.state.Load(); got != clockStopped {
			t.Fatalf("clock state %d after %v without reads, want stopped (%d)", got, clockIdleFor+5*res, clockStopped)
		}
		stoppedAt := c.clk.now.Load()
		time.Sleep(2 * time.Second) // the entry expires while the clock is stopped
		synctest.Wait()
		if c.clk.now.Load() != stoppedAt {
			t.Fatalf("a stopped clock ticked")
		}
		wantMiss(t, c, "k")
		if got := c.Stats().Expired; got != 1 {
			t.Errorf("Expired = %d, want 1", got)
		}
		if got := c.clk.state.Load(); got != clockUsed {
			t.Fatalf("clock state %d after a read, want used (%d)", got, clockUsed)
		}
		before := c.clk.now.Load()
		time.Sleep(3 * res)
		synctest.Wait()
		if c.clk.now.Load() <= before {
			t.Fatalf("the clock did not tick again after the read woke it")
		}
		c.Close()
	})
}

// TestClockWakeRace: readers released together onto a stopped clock race
// to wake it; every one of them reads a time no older than the wall clock
// just before their release (a stopped clock's time is never read).
func TestClockWakeRace(t *testing.T) {
	k := newClock(time.Millisecond, 1)
	u := &clockUser{flush: func() {}}
	k.mu.Lock()
	k.users[u] = struct{}{}
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		delete(k.users, u)
		close(k.quit)
		k.mu.Unlock()
		<-k.done
	}()
	const readers = 4
	for round := 0; round < 50; round++ {
		deadline := time.Now().Add(10 * time.Second)
		for k.state.Load() != clockStopped {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the clock did not stop within 10s without reads", round)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(2 * time.Millisecond) // real time moves on; the stopped clock does not
		wall := int64(time.Since(k.base))
		start := make(chan struct{})
		got := make(chan int64, readers)
		for range readers {
			go func() {
				<-start
				got <- k.read()
			}()
		}
		close(start)
		for range readers {
			if v := <-got; v < wall {
				t.Fatalf("round %d: a read released onto the stopped clock returned %v, before the wall clock at its release %v",
					round, time.Duration(v), time.Duration(wall))
			}
		}
	}
}
