package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/tiered"
)

// checkerDuration is how long each consistency checker (standalone and
// cluster) runs; NEARCACHE_CHECKER_DURATION overrides it.
func checkerDuration(t *testing.T, def time.Duration) time.Duration {
	if s := os.Getenv("NEARCACHE_CHECKER_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("NEARCACHE_CHECKER_DURATION=%q: want a positive Go duration", s)
		}
		return d
	}
	if testing.Short() {
		return def / 5
	}
	return def
}

func TestConsistencyStandalone(t *testing.T) {
	srv := redistest.StartServer(t)
	runChecker(t, "chk", checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return newClient(t, srv.Addr(), healthyTimeouts)
	})
}

// TestConsistencyRefreshAhead runs the checker with refresh-ahead on and
// every value due for refresh about 0.1 s after it was written, so that the
// GetOrLoad readers keep starting refreshes (claims, loader calls and
// write-backs) that race the writers and deleters: no read may return a
// value a write or delete overtook more than the bound before it.
func TestConsistencyRefreshAhead(t *testing.T) {
	srv := redistest.StartServer(t)
	var outcomes [4]atomic.Int64 // by tiered.RefreshOutcome
	runChecker(t, "chkra", checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return newClient(t, srv.Addr(), healthyTimeouts)
	}, checkerFault{config: func(cfg *tiered.Config[int64]) {
		cfg.RefreshAhead = 0.00003 // of the hour-long TTL: 108 ms
		cfg.FailSafeRetryAfter = 100 * time.Millisecond
		cfg.Observer = &tiered.Observer{Refreshed: func(ev tiered.RefreshEvent) {
			outcomes[ev.Outcome].Add(1)
		}}
	}})
	t.Logf("refreshes of the int64 lane: from the loader %d, from Redis %d, skipped (claimed elsewhere) %d, failed %d",
		outcomes[tiered.RefreshFromLoader].Load(), outcomes[tiered.RefreshFromRedis].Load(),
		outcomes[tiered.RefreshSkipped].Load(), outcomes[tiered.RefreshFailed].Load())
	if outcomes[tiered.RefreshFromLoader].Load() == 0 {
		t.Error("no refresh called the loader: the run did not exercise refresh-ahead against the writers")
	}
}

// TestConsistencyTags runs the checker with every write and load tagged by
// its key's tag (five names per tag in each namespace) and a third kind of
// change per instance: the row changes in the database alone, then
// InvalidateTag of its tag. No read may return a value such a change
// overtook more than the bound before it (for a GetOrLoad, not even a miss:
// it must load the new row), nor lose a tagged write.
func TestConsistencyTags(t *testing.T) {
	srv := redistest.StartServer(t)
	runChecker(t, "chktag", checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return newClient(t, srv.Addr(), healthyTimeouts)
	}, checkerFault{tags: true})
}

// TestConsistencyWriteBatching runs the checker with WriteBatchWindow on
// and four writers per instance, so that Sets overlap and share scripts
// and messages: no read may return a value overtaken beyond the bound.
func TestConsistencyWriteBatching(t *testing.T) {
	srv := redistest.StartServer(t)
	runChecker(t, "chkbatch", checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return newClient(t, srv.Addr(), healthyTimeouts)
	}, checkerFault{writers: 4, config: func(cfg *tiered.Config[int64]) {
		cfg.WriteBatchWindow = time.Millisecond
	}})
}

func TestConsistencyCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	const ns = "chk"
	// The keys must live on every master, so that the invalidations of
	// every node (and every slot partition) are exercised.
	slots, err := newClusterClient(t, cl.Addrs(), healthyTimeouts).ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	masters := map[string]bool{}
	distinct := map[int]bool{}
	for _, k := range checkerKeys() {
		slot := hashslot.Slot(wire.KeyPrefix(ns) + k)
		distinct[slot] = true
		for _, r := range slots {
			if slot >= r.Start && slot <= r.End {
				masters[r.Nodes[0].Addr] = true
			}
		}
	}
	if len(masters) != len(cl.Masters) {
		t.Fatalf("the checker's keys map to %d masters, want all %d", len(masters), len(cl.Masters))
	}
	t.Logf("%d keys in %d slots on %d masters", len(checkerKeys()), len(distinct), len(masters))
	runChecker(t, ns, checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return newClusterClient(t, cl.Addrs(), healthyTimeouts)
	})
}

// checkerKeys are the keys the checker contends on.
func checkerKeys() []string {
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = fmt.Sprintf("key:%02d", i)
	}
	return keys
}

// The checker's model. Each key has a history of operations (writes and
// deletes) that a per-key lock serialises, as a database row lock would:
// an operation changes the database, then calls the cache, and is
// acknowledged when the cache call returns. Versions number a key's
// operations from 1, so version v is history[v-1], and version 0 is "absent".
// Readers record what they saw; the history is checked after the run.

// op is one acknowledged (or failed) change of a key. A tag change (tag)
// changes the row in the database alone and then invalidates the key's tag
// (and so every key carrying it) instead of writing the cache: its value
// reaches the cache through loads only.
type op struct {
	del   bool
	tag   bool
	start time.Duration // since the run began, before the database changed
	ack   time.Duration // since the run began, after the cache call returned; never if it failed
}

const never = time.Duration(1<<63 - 1)

// keyState is one key's row lock and history.
type keyState struct {
	mu  sync.Mutex // held by a writer or deleter across its database change and cache call
	ops []op       // guarded by mu while the run lasts; read-only afterwards
}

// database is the source of truth the loaders read.
type database struct {
	mu   sync.Mutex       // guards rows
	rows map[string]int64 // key -> version; absent when deleted
}

func (db *database) get(key string) (int64, bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	v, ok := db.rows[key]
	return v, ok
}

func (db *database) put(key string, v int64) {
	db.mu.Lock()
	db.rows[key] = v
	db.mu.Unlock()
}

func (db *database) del(key string) {
	db.mu.Lock()
	delete(db.rows, key)
	db.mu.Unlock()
}

// read is one observation: reader kinds are Get and GetOrLoad.
type read struct {
	key        uint16
	inst       uint8
	load       bool
	start, end time.Duration // since the run began
	ver        int64         // 0: ErrNotFound
}

// verdict classes.
const (
	okRead = iota
	staleRead
	resurrection
	lostWrite
	phantom
	numVerdicts
)

var verdictNames = [numVerdicts]string{"ok", "stale read", "resurrection", "lost write", "phantom"}

// judge checks r against its key's history: it returns the read's
// staleness (how long before the read started the value it returned had
// already been overtaken by an acknowledged operation) and its verdict.
// group holds the tag changes of every key carrying the read key's tag (in
// a run with tags): each makes the entries carrying the tag misses, so a
// Get may miss a write that began before such a change was acknowledged.
func judge(r read, ops, group []op, bound time.Duration) (time.Duration, int) {
	var next int // index of the first operation after the one r observed
	if r.ver > 0 {
		if r.ver > int64(len(ops)) || ops[r.ver-1].del || ops[r.ver-1].start > r.end {
			return 0, phantom
		}
		next = int(r.ver)
	} else {
		// Absent: justified by the latest delete that had begun before
		// the read ended (or by the key never having been written); for a
		// Get, which loads nothing, by a tag change as well (its value is
		// in the database, not in the cache).
		next = 0
		for i := len(ops) - 1; i >= 0; i-- {
			if (ops[i].del || ops[i].tag && !r.load) && ops[i].start < r.end {
				next = i + 1
				break
			}
		}
		if !r.load {
			// The latest tag change of the group that had begun before
			// the read ended may be ordered after every write that began
			// before it was acknowledged (a failed one, at any time).
			kill := time.Duration(-1)
			for _, e := range group {
				if e.start < r.end {
					kill = max(kill, min(e.ack, r.end))
				}
			}
			for next < len(ops) && ops[next].start < kill {
				next++
			}
		}
	}
	for next < len(ops) && ops[next].ack == never {
		next++ // a failed change (reported already) overtakes nothing
	}
	if next >= len(ops) || ops[next].ack >= r.start {
		return 0, okRead
	}
	stale := r.start - ops[next].ack
	if stale <= bound {
		return stale, okRead
	}
	// Which operation did the read miss? The latest acknowledged more
	// than bound before it started.
	last := next
	for last+1 < len(ops) && ops[last+1].ack < r.start-bound {
		last++
	}
	switch {
	case r.ver == 0:
		return stale, lostWrite
	case ops[last].del:
		return stale, resurrection
	}
	return stale, staleRead
}

// checkerFault is an event in the middle of a checker run (a failover).
type checkerFault struct {
	// run is called half-way through the run, with the instances and the
	// run's clock, and returns the run time from which the contract holds
	// again (every instance has recovered). Operations acknowledged before
	// it may be overtaken for longer than the bound, and operations or
	// reads may fail before it: those are counted and logged, not failed.
	run func(t *testing.T, caches []*tiered.Cache[int64], since func() time.Duration) time.Duration
	// config, if set, adjusts every instance's Config (a run with a
	// feature on); a checkerFault with config and no run is a run without
	// a fault.
	config func(cfg *tiered.Config[int64])
	// tags, if set, tags every key's writes and loads with keyTag(key)
	// and adds a tag changer per instance (see op.tag).
	tags bool
	// writers is the number of writer goroutines per instance (default 1).
	writers int
	// judgeAll holds every read to the bound, also those of operations
	// acknowledged before run returned: the fault may make operations
	// fail until then, never a read stale beyond the bound.
	judgeAll bool
}

// keyTag is the tag of a checked key in a run with tags: ten tags, each
// carried by five names in each lane.
func keyTag(key string) string { return "grp" + key[len(key)-1:] }

// The checked caches: each instance holds one Cache per value type, all on
// the instance's one Redis client (so they share its invalidation
// transport), in namespaces ns, ns-str and ns-rec. The checker sees them
// through laneCache, with versions as values.

// laneCache is one checked Cache, with versions as values.
type laneCache interface {
	set(ctx context.Context, key string, v int64) error
	del(ctx context.Context, key string) error
	get(ctx context.Context, key string) (int64, error)
	getOrLoad(ctx context.Context, key string, load func(context.Context, string) (int64, error)) (int64, error)
	invalidateTag(ctx context.Context, tag string) error
	stats() tiered.Stats
}

// lane adapts a Cache[V] to laneCache.
type lane[V any] struct {
	c      *tiered.Cache[V]
	to     func(int64) V
	from   func(V) (int64, error)
	tagged bool // writes and loads carry WithTags(keyTag(key))
}

// opts are the options of a write or load of key.
func (l lane[V]) opts(key string) []tiered.Option {
	if !l.tagged {
		return nil
	}
	return []tiered.Option{tiered.WithTags(keyTag(key))}
}

func (l lane[V]) set(ctx context.Context, key string, v int64) error {
	return l.c.Set(ctx, key, l.to(v), l.opts(key)...)
}
func (l lane[V]) invalidateTag(ctx context.Context, tag string) error {
	return l.c.InvalidateTag(ctx, tag)
}
func (l lane[V]) del(ctx context.Context, key string) error { return l.c.Delete(ctx, key) }
func (l lane[V]) stats() tiered.Stats                       { return l.c.Stats() }
func (l lane[V]) get(ctx context.Context, key string) (int64, error) {
	v, err := l.c.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	return l.from(v)
}
func (l lane[V]) getOrLoad(ctx context.Context, key string, load func(context.Context, string) (int64, error)) (int64, error) {
	v, err := l.c.GetOrLoad(ctx, key, func(ctx context.Context, k string) (V, error) {
		n, err := load(ctx, k)
		return l.to(n), err
	}, l.opts(key)...)
	if err != nil {
		return 0, err
	}
	return l.from(v)
}

// record is the struct lane's value: Note repeats Ver, so that a value
// mixed from two versions is seen.
type record struct {
	Ver  int64
	Note string
}

// numLanes is the number of value types (namespaces) per instance.
const numLanes = 3

// newLanes builds an instance's caches on rc, the struct and string lanes
// first, so that the int64 lane joins a transport another Cache created.
func newLanes(t *testing.T, cfg func(rc redis.UniversalClient) tiered.Config[int64], rc redis.UniversalClient, tagged bool) (*tiered.Cache[int64], []laneCache) {
	base := cfg(rc)
	recCfg := tiered.Config[record]{Redis: rc, Namespace: base.Namespace + "-rec", TTL: base.TTL, MaxL1TTL: base.MaxL1TTL,
		NegativeTTL: base.NegativeTTL, RedisTimeout: base.RedisTimeout, LoadTimeout: base.LoadTimeout, AntiEntropyInterval: base.AntiEntropyInterval,
		RefreshAhead: base.RefreshAhead, FailSafeRetryAfter: base.FailSafeRetryAfter}
	strCfg := tiered.Config[string]{Redis: rc, Namespace: base.Namespace + "-str", TTL: base.TTL, MaxL1TTL: base.MaxL1TTL,
		NegativeTTL: base.NegativeTTL, RedisTimeout: base.RedisTimeout, LoadTimeout: base.LoadTimeout, AntiEntropyInterval: base.AntiEntropyInterval,
		RefreshAhead: base.RefreshAhead, FailSafeRetryAfter: base.FailSafeRetryAfter}
	rec := lane[record]{c: newCache(t, recCfg), tagged: tagged,
		to: func(v int64) record { return record{Ver: v, Note: "v" + strconv.FormatInt(v, 10)} },
		from: func(r record) (int64, error) {
			if r.Note != "v"+strconv.FormatInt(r.Ver, 10) {
				return 0, fmt.Errorf("record %+v mixes two versions", r)
			}
			return r.Ver, nil
		}}
	str := lane[string]{c: newCache(t, strCfg), tagged: tagged,
		to:   func(v int64) string { return strconv.FormatInt(v, 10) },
		from: func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }}
	i64 := newCache(t, base)
	return i64, []laneCache{
		lane[int64]{c: i64, tagged: tagged, to: func(v int64) int64 { return v }, from: func(v int64) (int64, error) { return v, nil }},
		str, rec,
	}
}

// runChecker runs writers, deleters and readers on three instances for d,
// each instance with one Cache per value type on one client, then checks
// every read (a read may return a value overtaken at most bound
// before it started) and the convergence of every instance. With a fault,
// the run lasts d after the fault has returned as well.
func runChecker(t *testing.T, ns string, d, bound time.Duration, client func(t *testing.T) redis.UniversalClient, variant ...checkerFault) {
	var fault []checkerFault // the fault event, if any
	var tweak func(*tiered.Config[int64])
	var tagged, judgeAll bool
	writers := 1
	if len(variant) > 0 {
		if variant[0].run != nil {
			fault = variant[:1]
		}
		tweak = variant[0].config
		tagged = variant[0].tags
		judgeAll = variant[0].judgeAll
		writers = max(variant[0].writers, 1)
	}
	// Key i is name i/numLanes of lane i%numLanes.
	names := checkerKeys()
	numKeys := len(names) * numLanes
	keys := make([]string, numKeys)   // the name in its lane's namespace
	labels := make([]string, numKeys) // lane/name, for messages and the database
	for i := range keys {
		keys[i] = names[i/numLanes]
		labels[i] = fmt.Sprintf("%d/%s", i%numLanes, keys[i])
	}
	const (
		instances   = 3
		getReaders  = 2 // per instance
		loadReaders = 2 // per instance
	)
	ctx := context.Background()
	cfg := func(rc redis.UniversalClient) tiered.Config[int64] {
		c := tiered.Config[int64]{
			Redis:               rc,
			Namespace:           ns,
			TTL:                 time.Hour,   // nothing expires in Redis during the run
			MaxL1TTL:            time.Minute, // only invalidations end local copies
			NegativeTTL:         time.Minute, // not-found results are cached too
			RedisTimeout:        2 * time.Second,
			LoadTimeout:         3 * time.Second,
			AntiEntropyInterval: 500 * time.Millisecond,
		}
		if tweak != nil {
			tweak(&c)
		}
		return c
	}
	caches := make([]*tiered.Cache[int64], instances) // the int64 lane, for faults and stats
	lanes := make([][]laneCache, instances)
	for i := range caches {
		caches[i], lanes[i] = newLanes(t, cfg, client(t), tagged)
	}
	state := make([]*keyState, numKeys)
	for i := range state {
		state[i] = &keyState{}
	}
	// The tag changes of each lane's tag (a run with tags).
	groupOf := func(i uint16) string { return fmt.Sprintf("%d/%s", int(i)%numLanes, keyTag(keys[i])) }
	var groupsMu sync.Mutex
	groups := map[string][]op{} // guarded by groupsMu while the run lasts; read-only afterwards
	db := &database{rows: map[string]int64{}}
	loaders := make([]func(context.Context, string) (int64, error), numLanes)
	for l := range loaders {
		loaders[l] = func(_ context.Context, key string) (int64, error) {
			if rand.IntN(4) == 0 {
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // widen the load/write race
			}
			if v, ok := db.get(strconv.Itoa(l) + "/" + key); ok {
				return v, nil
			}
			return 0, tiered.ErrNotFound
		}
	}

	began := time.Now()
	since := func() time.Duration { return time.Since(began) }
	var (
		stop                           atomic.Bool
		wg                             sync.WaitGroup
		writes, deletes, failedChanges atomic.Int64
		tagChanges                     atomic.Int64
		readErrs                       atomic.Int64
		firstErr                       sync.Once
		errMsg                         atomic.Value
		errMu                          sync.Mutex
		errTimes                       []time.Duration // guarded by errMu: when each failed change or read ended
		errLast                        string          // guarded by errMu: the last error's message
	)
	noteErr := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		errMu.Lock()
		errTimes, errLast = append(errTimes, since()), msg
		errMu.Unlock()
		if len(fault) == 0 {
			firstErr.Do(func() { errMsg.Store(msg) })
		}
	}
	change := func(inst []laneCache, del, tag bool) {
		i := rand.IntN(numKeys)
		k, st, c := keys[i], state[i], inst[i%numLanes]
		st.mu.Lock()
		defer st.mu.Unlock()
		ver := int64(len(st.ops) + 1)
		o := op{del: del, tag: tag, start: since()}
		var err error
		switch {
		case tag:
			db.put(labels[i], ver)
			err = c.invalidateTag(ctx, keyTag(k))
		case del:
			db.del(labels[i])
			err = c.del(ctx, k)
		default:
			db.put(labels[i], ver)
			err = c.set(ctx, k, ver)
		}
		o.ack = since()
		if err != nil {
			o.ack = never
			failedChanges.Add(1)
			noteErr("change of %s: %v", labels[i], err)
		}
		st.ops = append(st.ops, o)
		if tag {
			groupsMu.Lock()
			groups[groupOf(uint16(i))] = append(groups[groupOf(uint16(i))], o)
			groupsMu.Unlock()
		}
	}
	for _, c := range lanes {
		for range writers {
			wg.Add(1)
			go func() { // writer
				defer wg.Done()
				for !stop.Load() {
					change(c, false, false)
					writes.Add(1)
					time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
				}
			}()
		}
		wg.Add(1)
		go func() { // deleter
			defer wg.Done()
			for !stop.Load() {
				change(c, true, false)
				deletes.Add(1)
				time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
			}
		}()
		if tagged {
			wg.Add(1)
			go func() { // tag changer
				defer wg.Done()
				for !stop.Load() {
					change(c, false, true)
					tagChanges.Add(1)
					time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
				}
			}()
		}
	}
	var probe stallProbe
	wg.Add(1)
	go func() {
		defer wg.Done()
		probe.run(&stop, since)
	}()
	var logsMu sync.Mutex
	var logs [][]read
	for inst, c := range lanes {
		for r := 0; r < getReaders+loadReaders; r++ {
			load := r >= getReaders
			wg.Add(1)
			go func() {
				defer wg.Done()
				seen := make([]read, 0, 1<<16)
				defer func() {
					logsMu.Lock()
					logs = append(logs, seen)
					logsMu.Unlock()
				}()
				for !stop.Load() {
					i := rand.IntN(numKeys)
					rd := read{key: uint16(i), inst: uint8(inst), load: load, start: since()}
					var (
						v   int64
						err error
					)
					if lc := c[i%numLanes]; load {
						v, err = lc.getOrLoad(ctx, keys[i], loaders[i%numLanes])
					} else {
						v, err = lc.get(ctx, keys[i])
					}
					rd.end = since()
					switch {
					case err == nil:
						rd.ver = v
					case errors.Is(err, tiered.ErrNotFound):
					default:
						readErrs.Add(1)
						noteErr("read of %s: %v", labels[i], err)
						continue
					}
					seen = append(seen, rd)
					time.Sleep(200 * time.Microsecond) // keeps the log to a few hundred thousand reads
				}
			}()
		}
	}
	var from time.Duration // the contract holds for operations acknowledged from then on
	if len(fault) == 0 {
		time.Sleep(d) // the run's length; the workers are stopped by the flag, and waited for
	} else {
		time.Sleep(d / 2)
		from = fault[0].run(t, caches, since)
		time.Sleep(d / 2)
	}
	stop.Store(true)
	wg.Wait()
	if msg := errMsg.Load(); msg != nil {
		t.Errorf("%d failed writes/deletes, %d failed reads; first: %s", failedChanges.Load(), readErrs.Load(), msg)
	}
	if len(fault) > 0 {
		var before, after int
		for _, e := range errTimes {
			if e < from {
				before++
			} else {
				after++
			}
		}
		t.Logf("fault: contract holds again %v into the run; %d failed writes/deletes and reads before, %d after (last: %v)", from, before, after, errLast)
		if after > 0 {
			t.Errorf("%d writes/deletes or reads failed after the instances recovered (%v into the run); last: %s", after, from, errLast)
		}
	}

	// Check every read against the history.
	var (
		total, loads int
		verdicts     [numVerdicts]int
		staleSeen    []time.Duration // every non-zero staleness
		worst        time.Duration
		worstRead    read
		shown        int
		perInstReads [instances]int
		excused      [numVerdicts]int // violations of operations acknowledged before the fault's end
		stalled      [numVerdicts]int // reads late by no more than a measured scheduling stall
		stalledWorst time.Duration
	)
	for _, seen := range logs {
		for _, r := range seen {
			total++
			perInstReads[r.inst]++
			if r.load {
				loads++
			}
			stale, v := judge(r, state[r.key].ops, groups[groupOf(r.key)], bound)
			if v != okRead && v != phantom && !judgeAll && lastMissed(r, state[r.key].ops, bound) < from {
				excused[v]++
				continue
			}
			if v != okRead && v != phantom {
				if st := probe.maxIn(r.start-stale, r.start); stale-bound <= st {
					stalled[v]++
					stalledWorst = max(stalledWorst, stale)
					continue
				}
			}
			verdicts[v]++
			if stale > 0 {
				staleSeen = append(staleSeen, stale)
			}
			if stale > worst {
				worst, worstRead = stale, r
			}
			if v != okRead && shown < 10 {
				shown++
				t.Errorf("%s: instance %d %s(%s) ran %v..%v and returned version %d, overtaken %v before it started; history %v",
					verdictNames[v], r.inst, map[bool]string{true: "GetOrLoad", false: "Get"}[r.load], labels[r.key],
					r.start, r.end, r.ver, stale, tail(state[r.key].ops, r.ver))
			}
		}
	}
	for v := okRead + 1; v < numVerdicts; v++ {
		if verdicts[v] > 0 {
			t.Errorf("%d %s violations (bound %v)", verdicts[v], verdictNames[v], bound)
		}
	}
	if verdicts[staleRead]+verdicts[resurrection]+verdicts[lostWrite] > 0 {
		// Tell a late message (Lag.Max above the bound: delivery or the
		// reader was slow) from one that arrived in time (a local bug), and
		// show any gap, repair or resubscription.
		for i, inst := range lanes {
			for l, c := range inst {
				t.Logf("instance %d lane %d invalidation stats: %+v", i, l, c.stats().Invalidation)
			}
		}
	}
	if len(fault) > 0 {
		t.Logf("fault: excused (overtaken by operations acknowledged before %v): stale %d, resurrections %d, lost writes %d",
			from, excused[staleRead], excused[resurrection], excused[lostWrite])
	}
	if n := stalled[staleRead] + stalled[resurrection] + stalled[lostWrite]; n > 0 {
		t.Logf("scheduling: %d reads exceeded the bound %v by no more than a stall of this process measured in their window (worst such read %v stale; longest stall of the run %v): stale %d, resurrections %d, lost writes %d",
			n, bound, stalledWorst, probe.worst, stalled[staleRead], stalled[resurrection], stalled[lostWrite])
	}
	p99 := percentile(staleSeen, 0.99)
	t.Logf("checker ran %v on %d instances, %d keys in %d namespaces (value types) on one client per instance: %d reads (%d GetOrLoad, per instance %v), %d writes, %d deletes; violations: stale %d, resurrections %d, lost writes %d, phantoms %d",
		d, instances, numKeys, numLanes, total, loads, perInstReads, writes.Load(), deletes.Load(),
		verdicts[staleRead], verdicts[resurrection], verdicts[lostWrite], verdicts[phantom])
	t.Logf("reads that returned an overtaken value: %d; their staleness p99 %v, max %v (instance %d, %s version %d); longest scheduling stall of the run %v",
		len(staleSeen), p99, worst, worstRead.inst, labels[worstRead.key], worstRead.ver, probe.worst)
	if total == 0 || writes.Load() == 0 || deletes.Load() == 0 {
		t.Fatalf("the run did nothing: %d reads, %d writes, %d deletes", total, writes.Load(), deletes.Load())
	}
	if cfg(nil).WriteBatchWindow > 0 {
		var batches, batched, sets uint64
		for _, inst := range lanes {
			for _, c := range inst {
				st := c.stats().L2.Store
				batches, batched, sets = batches+st.Batches, batched+st.BatchedWrites, sets+st.Sets
			}
		}
		t.Logf("write batching: %d writes (%d writers per instance) went in %d shared scripts; keys written to Redis in all: %d",
			batched, writers, batches, sets)
		if batches == 0 {
			t.Error("no write shared a script: the run did not exercise write batching")
		}
	}
	if tagged {
		var tagMisses uint64
		for _, inst := range lanes {
			for _, c := range inst {
				tagMisses += c.stats().Loads.TagMisses
			}
		}
		t.Logf("tags: %d tag changes (a database change and InvalidateTag of the key's tag, %d keys per tag), %d values read from Redis found invalidated by their tags",
			tagChanges.Load(), len(names)/10, tagMisses)
		if tagChanges.Load() == 0 {
			t.Fatal("the run made no tag change")
		}
	}

	// Convergence: with writers stopped, every instance (and a fresh one,
	// whose L1 is empty, standing for Redis) agrees with the database. A
	// key whose last change was a tag change is in the database alone: a
	// GetOrLoad must find it.
	_, fresh := newLanes(t, cfg, client(t), tagged)
	all := append(slices.Clone(lanes), fresh)
	took, err := waitUntil(5*time.Second, func() error {
		for i, k := range keys {
			want, _ := db.get(labels[i]) // 0 when absent
			// A key whose last write began before a tag change of its
			// group was acknowledged may be in the database alone.
			ops := state[i].ops
			byLoad := len(ops) > 0 && ops[len(ops)-1].tag
			for _, e := range groups[groupOf(uint16(i))] {
				byLoad = byLoad || len(ops) > 0 && ops[len(ops)-1].start < e.ack
			}
			for inst, c := range all {
				var got int64
				var err error
				if byLoad {
					got, err = c[i%numLanes].getOrLoad(ctx, k, loaders[i%numLanes])
				} else {
					got, err = c[i%numLanes].get(ctx, k)
				}
				if errors.Is(err, tiered.ErrNotFound) {
					got, err = 0, nil
				}
				if err != nil || got != want {
					return fmt.Errorf("instance %d: %s = %d (err %v), database %d", inst, labels[i], got, err, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no convergence %v after the writers stopped: %v", took, err)
	}
	t.Logf("converged %v after the writers stopped", took)
}

// lastMissed is when the latest operation that r missed by more than bound
// was acknowledged: the operation a stale verdict of judge blames.
func lastMissed(r read, ops []op, bound time.Duration) time.Duration {
	at := time.Duration(-1)
	for i := max(int(r.ver), 0); i < len(ops); i++ {
		if ops[i].ack != never && ops[i].ack < r.start-bound {
			at = ops[i].ack
		}
	}
	return at
}

// stallProbe measures the process's scheduling stalls while a checker
// runs: a goroutine that sleeps 1 ms and records how late it woke. The bus's
// reader and the cache's readers wait on the same scheduler, so on a machine
// whose CPUs are saturated (go test runs packages in parallel under -race) a
// delivery can be late by a stall the library cannot shorten. A read that
// exceeds the bound by no more than the longest stall measured between the
// write it missed and the read is counted and logged, not failed.
type stallProbe struct {
	mu    sync.Mutex
	at    []time.Duration // guarded by mu: when each recorded sleep began (run time)
	late  []time.Duration // guarded by mu: how late it woke
	worst time.Duration   // guarded by mu
}

func (p *stallProbe) run(stop *atomic.Bool, since func() time.Duration) {
	for !stop.Load() {
		t0 := since()
		time.Sleep(time.Millisecond)
		if late := since() - t0 - time.Millisecond; late > 2*time.Millisecond {
			p.mu.Lock()
			p.at, p.late = append(p.at, t0), append(p.late, late)
			p.worst = max(p.worst, late)
			p.mu.Unlock()
		}
	}
}

// maxIn is the longest stall that overlapped [from, to].
func (p *stallProbe) maxIn(from, to time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var m time.Duration
	for i, t0 := range p.at {
		if t0 <= to && t0+time.Millisecond+p.late[i] >= from {
			m = max(m, p.late[i])
		}
	}
	return m
}

// tail formats the end of a history around version v, for failure messages.
func tail(ops []op, v int64) string {
	from := max(int(v)-2, 0)
	to := min(int(v)+4, len(ops))
	s := ""
	for i := from; i < to; i++ {
		kind := "set"
		if ops[i].del {
			kind = "del"
		}
		ack := "failed"
		if ops[i].ack != never {
			ack = ops[i].ack.String()
		}
		s += fmt.Sprintf(" v%d %s %v..%s;", i+1, kind, ops[i].start, ack)
	}
	return s
}

// verdictCase is a read and the verdict judge must give it.
type verdictCase struct {
	name        string
	r           read
	wantVerdict int
	wantStale   time.Duration
}

// checkVerdicts judges each case's read against ops (no tag group).
func checkVerdicts(t *testing.T, ops []op, bound time.Duration, cases []verdictCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			stale, v := judge(tt.r, ops, nil, bound)
			if v != tt.wantVerdict || stale != tt.wantStale {
				t.Errorf("got %s, staleness %v; want %s, %v", verdictNames[v], stale, verdictNames[tt.wantVerdict], tt.wantStale)
			}
		})
	}
}

// TestJudge pins the checker's verdicts on hand-made histories, so that a
// passing run means what it says.
func TestJudge(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	bound := ms(100)
	// v1 set acked at 10ms, v2 set acked at 20ms, v3 delete begun at 300ms
	// and acked at 310ms, v4 set acked at 600ms.
	ops := []op{
		{start: ms(1), ack: ms(10)},
		{start: ms(15), ack: ms(20)},
		{del: true, start: ms(300), ack: ms(310)},
		{start: ms(590), ack: ms(600)},
	}
	tests := []verdictCase{
		{"latest value", read{start: ms(50), end: ms(51), ver: 2}, okRead, 0},
		{"overtaken within the bound", read{start: ms(50), end: ms(51), ver: 1}, okRead, ms(30)},
		{"overtaken beyond the bound", read{start: ms(200), end: ms(201), ver: 1}, staleRead, ms(180)},
		{"absent before any write", read{start: ms(5), end: ms(6)}, okRead, 0},
		{"absent after an acked write", read{start: ms(200), end: ms(201)}, lostWrite, ms(190)},
		{"absent while a delete runs", read{start: ms(299), end: ms(305)}, okRead, 0},
		{"deleted value within the bound", read{start: ms(350), end: ms(351), ver: 2}, okRead, ms(40)},
		{"deleted value beyond the bound", read{start: ms(500), end: ms(501), ver: 2}, resurrection, ms(190)},
		{"absent after the delete", read{start: ms(500), end: ms(501)}, okRead, 0},
		{"value never written", read{start: ms(50), end: ms(51), ver: 9}, phantom, 0},
		{"a delete's version", read{start: ms(400), end: ms(401), ver: 3}, phantom, 0},
		{"a value from the future", read{start: ms(50), end: ms(51), ver: 4}, phantom, 0},
	}
	checkVerdicts(t, ops, bound, tests)
}

// TestJudgeTags pins the verdicts around a tag change: its value counts
// from its acknowledgement, a Get may miss after it (the value is in the
// database only), a GetOrLoad may not.
func TestJudgeTags(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	bound := ms(100)
	// v1 set acked at 10ms, v2 tag change acked at 300ms, v3 set acked at 600ms.
	ops := []op{
		{start: ms(1), ack: ms(10)},
		{tag: true, start: ms(290), ack: ms(300)},
		{start: ms(590), ack: ms(600)},
	}
	tests := []verdictCase{
		{"old value within the bound", read{start: ms(350), end: ms(351), ver: 1}, okRead, ms(50)},
		{"old value beyond the bound", read{start: ms(450), end: ms(451), ver: 1}, staleRead, ms(150)},
		{"old value by GetOrLoad beyond the bound", read{start: ms(450), end: ms(451), ver: 1, load: true}, staleRead, ms(150)},
		{"the tag change's value", read{start: ms(450), end: ms(451), ver: 2, load: true}, okRead, 0},
		{"a Get's miss after the tag change", read{start: ms(450), end: ms(451)}, okRead, 0},
		{"a GetOrLoad's miss after the tag change", read{start: ms(450), end: ms(451), load: true}, lostWrite, ms(440)},
		{"a Get's miss after a later set", read{start: ms(750), end: ms(751)}, lostWrite, ms(150)},
		{"the tag change's value after a later set", read{start: ms(750), end: ms(751), ver: 2}, staleRead, ms(150)},
	}
	checkVerdicts(t, ops, bound, tests)
	// Another key's tag change (same tag) ran 595..605ms, overlapping v3.
	group := []op{ops[1], {tag: true, start: ms(595), ack: ms(605)}}
	for _, tt := range []struct {
		name        string
		r           read
		wantVerdict int
	}{
		{"a Get's miss of a write the group's change overlapped", read{start: ms(750), end: ms(751)}, okRead},
		{"a GetOrLoad's miss of it", read{start: ms(750), end: ms(751), load: true}, lostWrite},
		{"a Get's miss of a write the change did not overlap", read{start: ms(750), end: ms(751)}, lostWrite},
	} {
		t.Run("group: "+tt.name, func(t *testing.T) {
			g := group
			if strings.Contains(tt.name, "did not overlap") {
				g = []op{ops[1], {tag: true, start: ms(500), ack: ms(580)}}
			}
			if _, v := judge(tt.r, ops, g, bound); v != tt.wantVerdict {
				t.Errorf("got %s, want %s", verdictNames[v], verdictNames[tt.wantVerdict])
			}
		})
	}
}

func TestStallProbeWindow(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	p := &stallProbe{at: []time.Duration{ms(100), ms(500)}, late: []time.Duration{ms(30), ms(80)}}
	for _, tt := range []struct {
		from, to, want time.Duration
	}{
		{ms(0), ms(99), 0},         // before the first stall
		{ms(120), ms(200), ms(30)}, // overlaps the first stall's end (100+1+30)
		{ms(132), ms(499), 0},      // between the two
		{ms(0), ms(1000), ms(80)},  // both: the longest
	} {
		if got := p.maxIn(tt.from, tt.to); got != tt.want {
			t.Errorf("maxIn(%v, %v) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}
