package l2

import (
	"context"
	"sync"
	"time"
)

// Batcher writes entries with the notification of one NotifyFunc, letting
// writes that overlap share one script, and so one notification, per
// partition (Redis delivers every notification to every subscriber: under
// a high write rate, sharing cuts the deliveries per write by the batch
// size).
//
// A write that finds no other write of its partition in flight runs at
// once, alone: a lone write is never delayed. A write that arrives while
// one is in flight queues; the first to queue opens a window, and when it
// closes (or maxBatchKeys keys are queued) the queue runs as one script
// whose notification names every key of every write in it. So a write
// waits at most the window before it is sent, and each write is still
// acknowledged only once the script that wrote it (and published its
// notification) has returned. The script runs until the latest deadline
// among its writers' contexts; a writer whose own context ends first
// returns that context's error, its write in doubt as any write cut short
// is (it may still land, with its notification).
//
// Only unversioned writes of one partition are batched (see SetMany);
// others go straight to the Store.
type Batcher struct {
	s      *Store
	fn     NotifyFunc
	window time.Duration

	mu      sync.Mutex
	lanes   map[laneKey]*batchLane // guarded by mu
	flushes sync.WaitGroup         // running flush goroutines
	closing chan struct{}          // closed by Close: queued writes go at once
	closed  sync.Once
}

// maxBatchKeys bounds the keys of one batched script: a queue that
// reaches it is sent without waiting for the rest of the window.
const maxBatchKeys = 512

// laneKey names a lane: the writes of one partition and one script.
type laneKey struct {
	slot int
	del  bool // tombstoning deletes (tombScript), not sets (setScript)
}

// batchLane is one lane's writes.
type batchLane struct {
	inflight int           // scripts of this partition running
	queue    []*batchReq   // writes waiting for the window
	queued   int           // keys in queue
	full     chan struct{} // closed when queued reaches maxBatchKeys
}

// batchReq is one waiting write.
type batchReq struct {
	ctx  context.Context
	keys []string
	vals [][]byte
	ttls []string
	done chan struct{} // closed once err is set
	err  error
}

// NewBatcher returns a Batcher writing through s with fn's notifications.
// window is how long a write that queued behind another waits for more
// writes to join it (a few hundred microseconds to 1 ms is typical).
func (s *Store) NewBatcher(fn NotifyFunc, window time.Duration) *Batcher {
	return &Batcher{s: s, fn: fn, window: window, lanes: map[laneKey]*batchLane{}, closing: make(chan struct{})}
}

// SetMany writes entries as Store.SetMany with Notify(fn) does, sharing
// its script with overlapping writes when every key is in one partition
// and no entry is versioned; otherwise it is Store.SetMany.
func (b *Batcher) SetMany(ctx context.Context, entries map[string]Entry) error {
	for _, e := range entries {
		if e.Version != 0 {
			return b.s.SetMany(ctx, entries, Notify(b.fn))
		}
	}
	keys, vals, op, err := b.s.prepare(entries)
	if err != nil || len(keys) == 0 {
		return err
	}
	groups := b.s.groups(keys)
	if len(groups) != 1 {
		return b.s.SetMany(ctx, entries, Notify(b.fn))
	}
	ttls := make([]string, len(keys))
	for i, k := range keys {
		ttls[i] = ttlArg(entries[k].TTL)
	}
	err = b.submit(ctx, laneKey{slot: groups[0].slot}, &batchReq{ctx: ctx, keys: keys, vals: vals, ttls: ttls})
	if err != nil {
		return b.s.fail(op, err, keys...)
	}
	b.s.sets.Add(uint64(len(keys)))
	return nil
}

// DeleteMany deletes keys as Store.DeleteMany with Notify(fn) and
// Tombstone(tombstone) does (tombstone > 0), sharing its script with
// overlapping deletes when every key is in one partition; otherwise it is
// Store.DeleteMany. It does not report how many keys existed.
func (b *Batcher) DeleteMany(ctx context.Context, keys []string, tombstone time.Duration) error {
	op := "mdel"
	if len(keys) == 1 {
		op = "del"
	}
	if b.s.closed.Load() {
		return b.s.closedErr(op, keys...)
	}
	if len(keys) == 0 {
		return nil
	}
	groups := b.s.groups(keys)
	if len(groups) != 1 || tombstone <= 0 {
		_, err := b.s.DeleteMany(ctx, keys, Notify(b.fn), Tombstone(tombstone))
		return err
	}
	now := time.Now()
	ttl := ttlArg(tombstone)
	vals := make([][]byte, len(keys))
	ttls := make([]string, len(keys))
	for i := range keys {
		vals[i], ttls[i] = tombstoneBytes(tombstone, now), ttl
	}
	if err := b.submit(ctx, laneKey{slot: groups[0].slot, del: true}, &batchReq{ctx: ctx, keys: keys, vals: vals, ttls: ttls}); err != nil {
		return b.s.fail(op, err, keys...)
	}
	b.s.deletes.Add(uint64(len(keys)))
	return nil
}

// submit runs req at once, alone, when nothing of its lane is in flight;
// otherwise it queues it for the lane's next batch and waits for that
// batch or ctx.
func (b *Batcher) submit(ctx context.Context, key laneKey, req *batchReq) error {
	start := time.Now()
	defer func() { b.s.latency.Record(time.Since(start)) }()
	b.mu.Lock()
	lane := b.lanes[key]
	if lane == nil {
		lane = &batchLane{}
		b.lanes[key] = lane
	}
	if lane.inflight == 0 {
		lane.inflight++
		b.mu.Unlock()
		return b.run(ctx, key, []*batchReq{req})
	}
	req.done = make(chan struct{})
	lane.queue = append(lane.queue, req)
	lane.queued += len(req.keys)
	if len(lane.queue) == 1 {
		lane.full = make(chan struct{})
		b.flushes.Add(1)
		go b.flush(key, lane, lane.full)
	}
	if lane.queued >= maxBatchKeys && lane.full != nil {
		close(lane.full)
		lane.full = nil
	}
	b.mu.Unlock()
	select {
	case <-req.done:
		return req.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush waits for the window (or a full queue), then runs the lane's
// queue as one script.
func (b *Batcher) flush(key laneKey, lane *batchLane, full <-chan struct{}) {
	defer b.flushes.Done()
	t := time.NewTimer(b.window)
	select {
	case <-t.C:
	case <-full:
		t.Stop()
	case <-b.closing:
		t.Stop()
	}
	b.mu.Lock()
	reqs := lane.queue
	lane.queue, lane.queued, lane.full = nil, 0, nil
	lane.inflight++
	b.mu.Unlock()
	// The script runs until the latest of its writers' deadlines (none if
	// one has none); each writer waits on its own context as well.
	ctx := context.WithoutCancel(reqs[0].ctx)
	var latest time.Time
	for _, r := range reqs {
		d, ok := r.ctx.Deadline()
		if !ok {
			latest = time.Time{}
			break
		}
		if d.After(latest) {
			latest = d
		}
	}
	if !latest.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, latest)
		defer cancel()
	}
	err := b.run(ctx, key, reqs)
	if len(reqs) > 1 {
		b.s.batches.Add(1)
		b.s.batched.Add(uint64(len(reqs)))
	}
	for _, r := range reqs {
		r.err = err
		close(r.done)
	}
}

// run writes reqs' keys in one script with one notification; the caller
// has counted it in the lane's inflight.
func (b *Batcher) run(ctx context.Context, key laneKey, reqs []*batchReq) error {
	defer func() {
		b.mu.Lock()
		b.lanes[key].inflight--
		b.mu.Unlock()
	}()
	keys, vals, ttls := reqs[0].keys, reqs[0].vals, reqs[0].ttls
	if len(reqs) > 1 {
		keys, vals, ttls = nil, nil, nil
		for _, r := range reqs {
			keys = append(keys, r.keys...)
			vals = append(vals, r.vals...)
			ttls = append(ttls, r.ttls...)
		}
	}
	sc := setScript
	if key.del {
		sc = tombScript
	}
	return b.s.runScript(ctx, keys, b.fn, sc, func(i int, argv []any) []any {
		return append(argv, vals[i], ttls[i])
	}, nil)
}

// Close sends the queued writes at once and waits for the batches being
// sent (each ends by its writers' latest deadline).
func (b *Batcher) Close() {
	b.closed.Do(func() { close(b.closing) })
	b.flushes.Wait()
}
