package tiered

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
)

// freshBound bounds the wait for every instance to serve a value changed
// from outside once its invalidation is published (healthy delivery takes
// well under a millisecond; the bound is for a busy machine).
const freshBound = 2 * time.Second

// table stands in for a database table that a loader reads and a program
// outside the Caches changes.
type table struct {
	mu   sync.Mutex
	rows map[string]string
}

func newTable(rows map[string]string) *table { return &table{rows: rows} }

func (tb *table) get(k string) (string, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	v, ok := tb.rows[k]
	return v, ok
}

func (tb *table) set(k, v string) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows[k] = v
}

func (tb *table) load(_ context.Context, k string) (string, error) {
	if v, ok := tb.get(k); ok {
		return v, nil
	}
	return "", ErrNotFound
}

// instances returns n Caches of ns, each on a client of its own from
// newRedis, as n service instances would be.
func instances(t *testing.T, n int, newRedis func() redis.UniversalClient, cfg Config[string]) []*Cache[string] {
	t.Helper()
	cs := make([]*Cache[string], n)
	for i := range cs {
		c := cfg
		c.Redis = newRedis()
		cs[i] = newCache(t, c)
	}
	return cs
}

func newInvalidator(t *testing.T, client redis.UniversalClient, cfg InvalidatorConfig) *Invalidator {
	t.Helper()
	inv, err := NewInvalidator(client, cfg)
	if err != nil {
		t.Fatalf("NewInvalidator: %v", err)
	}
	t.Cleanup(func() { _ = inv.Close() })
	return inv
}

// serveAll asserts that every instance serves want for every key through
// GetOrLoad with load.
func serveAll(t *testing.T, cs []*Cache[string], keys []string, load Loader[string], want string) {
	t.Helper()
	for i, c := range cs {
		for _, k := range keys {
			if got, err := c.GetOrLoad(context.Background(), k, load); err != nil || got != want {
				t.Fatalf("instance %d, key %s: got %q, %v; want %q", i, k, got, err, want)
			}
		}
	}
}

// warm reads every key on every instance until each instance holds want
// in its L1 (a fill reaches ristretto asynchronously, and ristretto may
// drop a set: the read is repeated until the copy is there), so that a
// later read proves the L1 copy was kept or dropped.
func warm(t *testing.T, cs []*Cache[string], keys []string, load Loader[string], want string) {
	t.Helper()
	for i, c := range cs {
		for _, k := range keys {
			redistest.WaitFor(t, freshBound, fmt.Sprintf("instance %d to hold %s in L1", i, k), func() bool {
				if got, err := c.GetOrLoad(context.Background(), k, load); err != nil || got != want {
					t.Fatalf("instance %d, key %s: got %q, %v; want %q", i, k, got, err, want)
				}
				c.hot.Wait()
				it, ok := c.local.Get(k)
				return ok && it.v == want
			})
		}
	}
}

// waitFresh polls until every instance serves want(k) for every key, within
// freshBound, and returns how long that took from start.
func waitFresh(t *testing.T, cs []*Cache[string], keys []string, load Loader[string], want func(string) string, start time.Time) time.Duration {
	t.Helper()
	redistest.WaitFor(t, freshBound, "every instance to serve the new values", func() bool {
		for _, c := range cs {
			for _, k := range keys {
				if got, err := c.GetOrLoad(context.Background(), k, load); err != nil || got != want(k) {
					return false
				}
			}
		}
		return true
	})
	return time.Since(start)
}

// applied is each instance's count of invalidation messages applied.
func applied(cs []*Cache[string]) []uint64 {
	n := make([]uint64, len(cs))
	for i, c := range cs {
		n[i] = c.Stats().Invalidation.Applied
	}
	return n
}

func assertApplied(t *testing.T, cs []*Cache[string], before []uint64) {
	t.Helper()
	for i, c := range cs {
		if got := c.Stats().Invalidation.Applied; got <= before[i] {
			t.Errorf("instance %d applied %d invalidations, %d before the call: the new value did not come from the Invalidator's message", i, got, before[i])
		}
	}
}

func keysN(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return ks
}

// TestInvalidatorInvalidate: a program writes new values into Redis itself
// (valid envelopes, no notification); every instance keeps serving the old
// values until Invalidate, and the new ones within freshBound after it.
func TestInvalidatorInvalidate(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cs := instances(t, 3, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "ext"})
	keys := keysN("k", 5)
	old := func(context.Context, string) (string, error) { return "old", nil }
	warm(t, cs, keys, old, "old")

	// The outside program: a plain go-redis client of its own.
	outside := newClient(t, srv.Addr())
	store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := store.Set(ctx, k, l2.Entry{Value: []byte("new " + k), TTL: time.Minute}); err != nil {
			t.Fatalf("direct write of %s: %v", k, err)
		}
	}
	noLoad := func(_ context.Context, k string) (string, error) {
		return "", fmt.Errorf("loader called for %s: the value is in Redis", k)
	}
	serveAll(t, cs, keys, noLoad, "old") // L1 still holds the old values: nothing told the instances

	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext"})
	before := applied(cs)
	start := time.Now()
	if err := inv.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	took := waitFresh(t, cs, keys, noLoad, func(k string) string { return "new " + k }, start)
	t.Logf("every instance served the new values %v after Invalidate was called", took)
	assertApplied(t, cs, before)
	// Invalidate touched no data.
	for _, k := range keys {
		if e, err := store.Get(ctx, k); err != nil || string(e.Value) != "new "+k {
			t.Errorf("Redis %s after Invalidate: %q, %v; want the program's value", k, e.Value, err)
		}
	}
}

// TestInvalidatorDelete: a program changes the database; every instance
// keeps serving the old rows until Delete, and loads the new ones within
// freshBound after it. Delete leaves tombstones living TombstoneTTL.
func TestInvalidatorDelete(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cs := instances(t, 3, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "ext"})
	keys := keysN("row", 5)
	db := newTable(map[string]string{})
	for _, k := range keys {
		db.set(k, "v1")
	}
	warm(t, cs, keys, db.load, "v1")
	for _, k := range keys {
		db.set(k, "v2")
	}
	serveAll(t, cs, keys, db.load, "v1") // the database changed, the Caches do not know

	outside := newClient(t, srv.Addr())
	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext", TombstoneTTL: 20 * time.Second})
	before := applied(cs)
	start := time.Now()
	if err := inv.Delete(ctx, keys...); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// Before any instance reads again, Redis holds tombstones.
	store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := store.Read(ctx, keys[0])
	if err != nil || !e.Tombstone {
		t.Fatalf("Redis %s after Delete: %+v, %v; want a tombstone", keys[0], e, err)
	}
	if ttl := outside.PTTL(ctx, "ext:"+keys[0]).Val(); ttl <= 15*time.Second || ttl > 20*time.Second {
		t.Errorf("tombstone PTTL %v, want about TombstoneTTL (20s)", ttl)
	}
	took := waitFresh(t, cs, keys, db.load, func(string) string { return "v2" }, start)
	t.Logf("every instance served the new rows %v after Delete was called", took)
	assertApplied(t, cs, before)
}

// TestInvalidatorDeleteRacesLoad: a load reads the old row, is held, the
// row changes and Delete runs, then the load returns the old row: its
// callers get it, but it lands neither in Redis nor in any L1. In "unheard"
// the loading instance rejects the Invalidator's message (another HMAC key,
// anti-entropy off), so its fill ticket stays valid and only the tombstone
// stops the write-back.
func TestInvalidatorDeleteRacesLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		loader Config[string] // the loading instance's Config; the others use {Namespace: "ext"}
	}{
		{"delivered", Config[string]{Namespace: "ext"}},
		{"unheard", Config[string]{Namespace: "ext", HMACKey: []byte("not the Invalidator's"), AntiEntropyInterval: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) { testDeleteRacesLoad(t, tc.loader) })
	}
}

func testDeleteRacesLoad(t *testing.T, loaderCfg Config[string]) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	newRedis := func() redis.UniversalClient { return newClient(t, srv.Addr()) }
	cs := append(instances(t, 1, newRedis, loaderCfg), instances(t, 2, newRedis, Config[string]{Namespace: "ext"})...)
	db := newTable(map[string]string{"k": "old"})
	read, release := make(chan struct{}), make(chan struct{})
	slow := func(ctx context.Context, k string) (string, error) {
		v, err := db.load(ctx, k)
		close(read)
		<-release
		return v, err
	}
	type result struct {
		v   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := cs[0].GetOrLoad(ctx, "k", slow)
		done <- result{v, err}
	}()
	<-read // the load has the old row

	db.set("k", "new")
	outside := newClient(t, srv.Addr())
	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext"})
	if err := inv.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	conflicts := cs[0].Stats().Loads.Conflicts
	close(release)
	r := <-done
	if r.err != nil || r.v != "old" {
		t.Fatalf("the raced load returned %q, %v; want the old row it read (its callers asked before the change)", r.v, r.err)
	}
	if got := cs[0].Stats().Loads.Conflicts; got != conflicts+1 {
		t.Errorf("Conflicts %d, want %d: the raced load's value must be refused", got, conflicts+1)
	}
	store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
	if err != nil {
		t.Fatal(err)
	}
	if e, err := store.Read(ctx, "k"); err != nil || !e.Tombstone {
		t.Fatalf("Redis after the raced load: %q (tombstone %v), %v; want the tombstone still there", e.Value, e.Tombstone, err)
	}
	for i, c := range cs {
		if it, ok := c.local.Get("k"); ok {
			t.Errorf("instance %d L1 holds %q after the raced load; want nothing", i, it.v)
		}
		if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Errorf("instance %d Get: %q, %v; want ErrNotFound (the tombstone)", i, v, err)
		}
	}
	for i, c := range cs {
		if v, err := c.GetOrLoad(ctx, "k", db.load); err != nil || v != "new" {
			t.Errorf("instance %d GetOrLoad: %q, %v; want the new row", i, v, err)
		}
	}
}

// TestInvalidatorHMAC: Caches with an HMAC key reject an unsigned
// Invalidator's messages (the old value stays) and accept a signed one's.
func TestInvalidatorHMAC(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	key := []byte("shared secret")
	// Anti-entropy off, so that only the messages themselves act: the
	// rejected message's sequence would otherwise be found missing a
	// second later and repaired by dropping every L1.
	cs := instances(t, 3, func() redis.UniversalClient { return newClient(t, srv.Addr()) },
		Config[string]{Namespace: "ext", HMACKey: key, AntiEntropyInterval: -1})
	keys := keysN("k", 3)
	old := func(context.Context, string) (string, error) { return "old", nil }
	warm(t, cs, keys, old, "old")
	outside := newClient(t, srv.Addr())
	store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := store.Set(ctx, k, l2.Entry{Value: []byte("new"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }

	unsigned := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext"})
	rejects := make([]uint64, len(cs))
	for i, c := range cs {
		rejects[i] = c.Stats().Invalidation.AuthRejects
	}
	if err := unsigned.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("unsigned Invalidate: %v", err)
	}
	redistest.WaitFor(t, freshBound, "every instance to reject the unsigned message", func() bool {
		for i, c := range cs {
			if c.Stats().Invalidation.AuthRejects <= rejects[i] {
				return false
			}
		}
		return true
	})
	serveAll(t, cs, keys, noLoad, "old")

	wrong := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext", HMACKey: []byte("another secret")})
	for i, c := range cs {
		rejects[i] = c.Stats().Invalidation.AuthRejects
	}
	if err := wrong.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("Invalidate with another key: %v", err)
	}
	redistest.WaitFor(t, freshBound, "every instance to reject the message signed with another key", func() bool {
		for i, c := range cs {
			if c.Stats().Invalidation.AuthRejects <= rejects[i] {
				return false
			}
		}
		return true
	})
	serveAll(t, cs, keys, noLoad, "old")

	signed := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext", HMACKey: key})
	start := time.Now()
	if err := signed.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("signed Invalidate: %v", err)
	}
	took := waitFresh(t, cs, keys, noLoad, func(string) string { return "new" }, start)
	t.Logf("signed: every instance served the new values after %v", took)
}

// TestInvalidatorInvalidateAll: every instance drops its whole L1.
func TestInvalidatorInvalidateAll(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cs := instances(t, 3, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "ext"})
	keys := keysN("k", 10)
	old := func(context.Context, string) (string, error) { return "old", nil }
	warm(t, cs, keys, old, "old")
	outside := newClient(t, srv.Addr())
	store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := store.Set(ctx, k, l2.Entry{Value: []byte("new"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }
	serveAll(t, cs, keys, noLoad, "old")
	clears := make([]uint64, len(cs))
	for i, c := range cs {
		clears[i] = c.Stats().Invalidation.InvalidateAll[invalidation.CauseClear]
	}

	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext"})
	start := time.Now()
	if err := inv.InvalidateAll(ctx); err != nil {
		t.Fatalf("InvalidateAll: %v", err)
	}
	took := waitFresh(t, cs, keys, noLoad, func(string) string { return "new" }, start)
	t.Logf("every instance served the new values %v after InvalidateAll was called", took)
	for i, c := range cs {
		st := c.Stats().Invalidation
		if got := st.InvalidateAll[invalidation.CauseClear]; got <= clears[i] {
			t.Errorf("instance %d: %d clear-alls applied, %d before; want one more", i, got, clears[i])
		}
	}
}

// TestInvalidatorCluster: on Redis Cluster, Delete and Invalidate of keys
// spread over every master reach every instance.
func TestInvalidatorCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	newRedis := func() redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	cs := instances(t, 3, newRedis, Config[string]{Namespace: "ext"})
	outside := newRedis().(*redis.ClusterClient)
	keys := keysN("row", 60)
	masters := map[string]bool{}
	for _, k := range keys {
		m, err := outside.MasterForKey(ctx, "ext:"+k)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) != len(cl.Masters) {
		t.Fatalf("the keys are on %d masters, want all %d", len(masters), len(cl.Masters))
	}
	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "ext"})
	db := newTable(map[string]string{})

	t.Run("Delete", func(t *testing.T) {
		for _, k := range keys {
			db.set(k, "v1")
		}
		warm(t, cs, keys, db.load, "v1")
		for _, k := range keys {
			db.set(k, "v2")
		}
		serveAll(t, cs, keys, db.load, "v1")
		before := applied(cs)
		start := time.Now()
		if err := inv.Delete(ctx, keys...); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		took := waitFresh(t, cs, keys, db.load, func(string) string { return "v2" }, start)
		t.Logf("every instance served the new rows %v after Delete was called", took)
		assertApplied(t, cs, before)
	})
	t.Run("Invalidate", func(t *testing.T) {
		store, err := l2.New(outside, l2.Config{KeyPrefix: "ext:"})
		if err != nil {
			t.Fatal(err)
		}
		warm(t, cs, keys, db.load, "v2") // the rows as the Delete subtest left them
		entries := map[string]l2.Entry{}
		for _, k := range keys {
			entries[k] = l2.Entry{Value: []byte("v3 " + k), TTL: time.Minute}
		}
		if err := store.SetMany(ctx, entries); err != nil {
			t.Fatalf("direct writes: %v", err)
		}
		noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }
		serveAll(t, cs, keys, noLoad, "v2")
		before := applied(cs)
		start := time.Now()
		if err := inv.Invalidate(ctx, keys...); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		took := waitFresh(t, cs, keys, noLoad, func(k string) string { return "v3 " + k }, start)
		t.Logf("every instance served the new values %v after Invalidate was called", took)
		assertApplied(t, cs, before)
	})
	t.Run("InvalidateTags", func(t *testing.T) {
		tkeys := keysN("tagged", 60)
		tagOf := func(k string) string { return fmt.Sprintf("grp%d", len(k)*7%12+int(k[len(k)-1])%12) }
		var tags []string
		tagMasters := map[string]bool{}
		for _, k := range tkeys {
			if tg := tagOf(k); !slices.Contains(tags, tg) {
				tags = append(tags, tg)
				m, err := outside.MasterForKey(ctx, wire.TagKey("ext:", tg))
				if err != nil {
					t.Fatal(err)
				}
				tagMasters[m.Options().Addr] = true
			}
		}
		if len(tagMasters) < 2 {
			t.Fatalf("the %d tags' version keys are on %d master(s), want several", len(tags), len(tagMasters))
		}
		tagged := func(ctx context.Context, k string) (string, error) {
			if err := SetTags(ctx, tagOf(k)); err != nil {
				return "", err
			}
			return db.load(ctx, k)
		}
		for _, k := range tkeys {
			db.set(k, "t1")
		}
		warm(t, cs, tkeys, tagged, "t1")
		for _, k := range tkeys {
			db.set(k, "t2")
		}
		serveAll(t, cs, tkeys, tagged, "t1")
		before := applied(cs)
		start := time.Now()
		if err := inv.InvalidateTags(ctx, tags...); err != nil {
			t.Fatalf("InvalidateTags: %v", err)
		}
		took := waitFresh(t, cs, tkeys, tagged, func(string) string { return "t2" }, start)
		t.Logf("every instance served the new rows %v after InvalidateTags (%d tags on %d masters) was called", took, len(tags), len(tagMasters))
		assertApplied(t, cs, before)
		if err := inv.InvalidateTags(ctx, ""); err == nil {
			t.Fatal("InvalidateTags of an empty tag: no error")
		}
	})
}

// TestInvalidatorConfig: NewInvalidator refuses what a Cache would, does no
// I/O, and never prints the HMAC key.
func TestInvalidatorConfig(t *testing.T) {
	mr := miniredis.RunT(t)
	client := newClient(t, mr.Addr())
	for _, tc := range []struct {
		name string
		ns   string
		ttl  time.Duration
		want string
	}{
		{"colon", "a:b", 0, "contains ':'"},
		{"open brace", "a{b", 0, "hash tag"},
		{"close brace", "a}b", 0, "hash tag"},
		{"space", "a b", 0, "space or control"},
		{"control", "a\x00b", 0, "space or control"},
		{"too long", strings.Repeat("n", MaxNamespaceLen+1), 0, "at most 128"},
		{"negative tombstone TTL", "ok", -time.Second, "TombstoneTTL -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := NewInvalidator(client, InvalidatorConfig{Namespace: tc.ns, TombstoneTTL: tc.ttl})
			if err == nil {
				_ = inv.Close()
				t.Fatalf("NewInvalidator accepted namespace %q, TombstoneTTL %v", tc.ns, tc.ttl)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			// A Cache refuses the same namespaces, with the same words.
			if tc.ttl == 0 {
				if _, cerr := New(Config[string]{Namespace: tc.ns}); cerr == nil || cerr.Error() != err.Error() {
					t.Errorf("Cache: %v; Invalidator: %v; want the same error", cerr, err)
				}
			}
		})
	}
	if _, err := NewInvalidator(nil, InvalidatorConfig{}); err == nil {
		t.Error("NewInvalidator accepted a nil client")
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
	defer ring.Close()
	if _, err := NewInvalidator(ring, InvalidatorConfig{}); err == nil || !strings.Contains(err.Error(), "Ring") {
		t.Errorf("NewInvalidator with a redis.Ring: %v; want a refusal naming the Ring", err)
	}

	// Zero config: DefaultNamespace and DefaultTombstoneTTL.
	ctx := context.Background()
	inv := newInvalidator(t, client, InvalidatorConfig{})
	if err := inv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if !mr.Exists(DefaultNamespace + ":k") {
		t.Fatalf("no tombstone under the default namespace; keys: %v", mr.Keys())
	}
	if ttl := mr.TTL(DefaultNamespace + ":k"); ttl != DefaultTombstoneTTL {
		t.Errorf("tombstone TTL %v, want DefaultTombstoneTTL %v", ttl, DefaultTombstoneTTL)
	}
	if DefaultTombstoneTTL < DefaultLoadTimeout+2*DefaultRedisTimeout {
		t.Errorf("DefaultTombstoneTTL %v would not outlive a load of a Cache with default settings", DefaultTombstoneTTL)
	}

	// The HMAC key never prints.
	secret := []byte("do-not-print-me")
	cfg := InvalidatorConfig{Namespace: "ns", HMACKey: secret, TombstoneTTL: time.Minute}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%s", cfg), cfg.String(), string(js)} {
		if strings.Contains(s, string(secret)) || strings.Contains(s, fmt.Sprint(secret)) || strings.Contains(s, hex.EncodeToString(secret)) {
			t.Errorf("printed config reveals the key: %s", s)
		}
		if !strings.Contains(s, "REDACTED") || !strings.Contains(s, "ns") {
			t.Errorf("printed config %s: want the namespace and REDACTED", s)
		}
	}
}

// TestInvalidatorCloseAndCtx: Close is idempotent and leaves the client
// open; calls after it return ErrClosed; a call whose ctx has ended sends
// nothing; calls without keys do nothing.
func TestInvalidatorCloseAndCtx(t *testing.T) {
	mr := miniredis.RunT(t)
	client := newClient(t, mr.Addr())
	ctx := context.Background()
	inv, err := NewInvalidator(client, InvalidatorConfig{Namespace: "ext"})
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Delete(ctx); err != nil {
		t.Errorf("Delete of no keys: %v", err)
	}
	if err := inv.Invalidate(ctx); err != nil {
		t.Errorf("Invalidate of no keys: %v", err)
	}
	if n := len(mr.Keys()); n != 0 {
		t.Errorf("calls without keys wrote %d keys: %v", n, mr.Keys())
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for name, call := range map[string]func(context.Context) error{
		"Delete":        func(ctx context.Context) error { return inv.Delete(ctx, "k") },
		"Invalidate":    func(ctx context.Context) error { return inv.Invalidate(ctx, "k") },
		"InvalidateAll": inv.InvalidateAll,
	} {
		if err := call(cancelled); !errors.Is(err, context.Canceled) {
			t.Errorf("%s on an ended ctx: %v, want context.Canceled", name, err)
		}
	}
	if n := len(mr.Keys()); n != 0 {
		t.Errorf("calls on an ended ctx wrote %d keys: %v", n, mr.Keys())
	}

	if err := inv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := inv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, call := range map[string]func() error{
		"Delete":            func() error { return inv.Delete(ctx, "k") },
		"Delete of no keys": func() error { return inv.Delete(ctx) },
		"Invalidate":        func() error { return inv.Invalidate(ctx, "k") },
		"InvalidateAll":     func() error { return inv.InvalidateAll(ctx) },
	} {
		err := call()
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), "invalidator closed") {
			t.Errorf("%s after Close: %q; want it to name the Invalidator", name, err)
		}
	}
	if n := len(mr.Keys()); n != 0 {
		t.Errorf("calls after Close wrote %d keys: %v", n, mr.Keys())
	}
	if err := client.Ping(ctx).Err(); err != nil {
		t.Errorf("the client after Close: %v; the Invalidator must not close it", err)
	}
}

// TestInvalidatorErrors: a Redis that cannot be reached is ErrUnavailable,
// naming the keys.
func TestInvalidatorErrors(t *testing.T) {
	mr := miniredis.RunT(t)
	client := newClient(t, mr.Addr())
	inv := newInvalidator(t, client, InvalidatorConfig{Namespace: "ext"})
	mr.Close()
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"Delete":        func() error { return inv.Delete(ctx, "key-a") },
		"Invalidate":    func() error { return inv.Invalidate(ctx, "key-a") },
		"InvalidateAll": func() error { return inv.InvalidateAll(ctx) },
	} {
		err := call()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with Redis down: %v, want ErrUnavailable", name, err)
		}
		if name != "InvalidateAll" && (err == nil || !strings.Contains(err.Error(), "key-a")) {
			t.Errorf("%s with Redis down: %v; want the key named", name, err)
		}
	}
}

// TestWireDoc checks docs/WIRE.md against the code: its names and worked
// example are what the code computes, and its two scripts, run with EVAL
// and bodies built from its description alone, invalidate real Caches.
func TestWireDoc(t *testing.T) {
	raw, err := os.ReadFile("../docs/WIRE.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	blocks := fencedBlocks(doc)
	script := func(name string) string {
		for _, b := range blocks {
			if b.marker == "<!-- script: "+name+" -->" && b.lang == "lua" {
				return b.text
			}
		}
		t.Fatalf("docs/WIRE.md has no lua block after <!-- script: %s -->", name)
		return ""
	}
	del, pub, tagScript := script("delete"), script("publish"), script("tags")
	plain := func(prefix string) string { // the plain block starting with prefix
		for _, b := range blocks {
			if b.lang == "" && strings.HasPrefix(b.text, prefix) {
				return b.text
			}
		}
		t.Fatalf("docs/WIRE.md has no plain block starting with %q", prefix)
		return ""
	}

	// Names and the worked example.
	for _, p := range []int{0, 1, 100, 9664, 16383} {
		if want := fmt.Sprintf("tag(%d) = %s", p, hashslot.Tag(p)); !strings.Contains(doc, want) {
			t.Errorf("docs/WIRE.md does not say %q", want)
		}
	}
	if s := hashslot.Slot("users:42"); s != 9664 {
		t.Errorf("slot of users:42 is %d, the doc says 9664", s)
	}
	for _, want := range []string{wire.SeqKey("users", 0), wire.SeqKey("users", 9664), wire.Channel("users"), wire.ShardChannel("users", 9664),
		strings.ReplaceAll(wire.EpochKey("NS", 0), "{"+hashslot.Tag(0)+"}", "{tag(p)}")} {
		if !strings.Contains(doc, "`"+want+"`") {
			t.Errorf("docs/WIRE.md does not name %q", want)
		}
	}
	// tag(p) as the doc defines it: the first base-36 numeral hashing to p.
	tags := map[int]string{}
	for i := int64(0); len(tags) < 5; i++ {
		s := strconvBase36(i)
		for _, p := range []int{0, 1, 100, 9664, 16383} {
			if _, ok := tags[p]; !ok && hashslot.Slot(s) == p {
				tags[p] = s
			}
		}
	}
	for p, s := range tags {
		if s != hashslot.Tag(p) {
			t.Errorf("the doc's definition gives tag(%d) = %s, the code %s", p, s, hashslot.Tag(p))
		}
	}
	var origin [16]byte
	copy(origin[:], mustHex(t, "00112233445566778899aabbccddeeff"))
	const at = 1700000000000000000
	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	docHex := func(block string) string { // the hex of a doc block, comments dropped
		var out strings.Builder
		for _, line := range strings.Split(block, "\n") {
			f := strings.Fields(line)
			for _, w := range f {
				if _, err := hex.DecodeString(w); err != nil || len(w) != 2 {
					break
				}
				out.WriteString(w)
			}
		}
		return out.String()
	}
	if got, want := docHex(plain("ce 01")), hexOf(docBody(origin, 0, 1, at, []string{"42"}, nil)); got != want {
		t.Errorf("the doc's example body\n%s\nwant\n%s", got, want)
	}
	if got, want := docHex(plain("c7 01")), "c70118"+fmt.Sprintf("%016x", uint64(1700000030000))+"0123456789abcdef"; got != want {
		t.Errorf("the doc's example tombstone %s, want %s", got, want)
	}
	signed := docBody(origin, 0, 1, at, []string{"42"}, []byte("secret"))
	if mac := hexOf(signed[len(signed)-32:]); !strings.Contains(doc, mac) || signed[33] != 0x49 {
		t.Errorf("the doc's signed example: want MAC %s and length 0x49 (got 0x%x)", mac, signed[33])
	}
	if b := docBody(origin, 9664, 1, at, []string{"42"}, nil); b[20] != 0x25 || b[21] != 0xc0 || !strings.Contains(doc, "`25 c0`") {
		t.Errorf("partition 9664's bytes: % x", b[20:22])
	}

	// The scripts, on real Caches with an HMAC key.
	srv := redistest.StartServer(t)
	ctx := context.Background()
	key := []byte("k3y")
	cs := instances(t, 3, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "users", HMACKey: key})
	outside := newClient(t, srv.Addr())
	db := newTable(map[string]string{"42": "Ada", "43": "Grace"})
	warm(t, cs, []string{"42"}, db.load, "Ada")
	seqKey, channel := wire.SeqKey("users", 0), wire.Channel("users")
	var outsideID [16]byte
	copy(outsideID[:], "outside program!")

	t.Run("delete", func(t *testing.T) {
		db.set("42", "Ada Lovelace")
		serveAll(t, cs, []string{"42"}, db.load, "Ada")
		// A versioned value: the doc's tombstone must keep its version.
		if err := cs[0].Set(ctx, "43", "Grace", WithVersion(5)); err != nil {
			t.Fatal(err)
		}
		nonce := mustHex(t, "0123456789abcdef")
		tomb := binary.BigEndian.AppendUint64([]byte{0xC7, 1, 0x18}, uint64(time.Now().Add(30*time.Second).UnixMilli()))
		tomb = append(tomb, nonce...)
		body := docBody(outsideID, 0, 1, time.Now().UnixNano(), []string{"42", "43"}, key)
		before := applied(cs)
		start := time.Now()
		n, err := outside.Eval(ctx, del, []string{"users:42", "users:43", seqKey}, channel, body, tomb, "30000", tomb, "30000").Int()
		if err != nil || n != 2 {
			t.Fatalf("EVAL of the doc's delete script: %d, %v; want 2 (both keys existed)", n, err)
		}
		got, err := outside.Get(ctx, "users:42").Bytes()
		if err != nil || hexOf(got) != hexOf(tomb) {
			t.Fatalf("users:42 after the script: %x, %v; want the tombstone", got, err)
		}
		took := waitFresh(t, cs, []string{"42"}, db.load, func(string) string { return "Ada Lovelace" }, start)
		t.Logf("every instance served the new row %v after the doc's script ran", took)
		assertApplied(t, cs, before)
		// The tombstone of 43 kept version 5: an older versioned write is refused.
		if err := cs[1].Set(ctx, "43", "Grace Hopper (old)", WithVersion(4)); !errors.Is(err, ErrStale) {
			t.Errorf("Set WithVersion(4) over the doc's tombstone of version 5: %v, want ErrStale", err)
		}
	})
	t.Run("publish", func(t *testing.T) {
		store, err := l2.New(outside, l2.Config{KeyPrefix: "users:"})
		if err != nil {
			t.Fatal(err)
		}
		warm(t, cs, []string{"42"}, db.load, "Ada Lovelace")
		if err := store.Set(ctx, "42", l2.Entry{Value: []byte("Ada, Countess of Lovelace"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }
		serveAll(t, cs, []string{"42"}, noLoad, "Ada Lovelace")
		seq, _ := outside.Get(ctx, seqKey).Uint64()
		before := applied(cs)
		start := time.Now()
		if err := outside.Eval(ctx, pub, []string{seqKey}, channel, docBody(outsideID, 0, 1, time.Now().UnixNano(), []string{"42"}, key)).Err(); err != nil {
			t.Fatalf("EVAL of the doc's publish script: %v", err)
		}
		if got, _ := outside.Get(ctx, seqKey).Uint64(); got != seq+1 {
			t.Errorf("sequence key %d after the script, want %d", got, seq+1)
		}
		took := waitFresh(t, cs, []string{"42"}, noLoad, func(string) string { return "Ada, Countess of Lovelace" }, start)
		t.Logf("every instance served the value written outside %v after the doc's script ran", took)
		assertApplied(t, cs, before)
	})
	t.Run("tags", func(t *testing.T) {
		if want := "`" + strings.ReplaceAll(wire.TagKey("NS:", "T"), "{"+hashslot.Tag(hashslot.Slot("NS:tag:T"))+"}", "{tag(s)}") + "`"; !strings.Contains(doc, want) {
			t.Errorf("docs/WIRE.md does not name the tag version key %s", want)
		}
		tagged := func(ctx context.Context, k string) (string, error) {
			if err := SetTags(ctx, "people"); err != nil {
				return "", err
			}
			return db.load(ctx, k)
		}
		db.set("44", "Hedy")
		warm(t, cs, []string{"44"}, tagged, "Hedy")
		db.set("44", "Hedy Lamarr")
		serveAll(t, cs, []string{"44"}, tagged, "Hedy")
		before := applied(cs)
		start := time.Now()
		tagKey := "{" + hashslot.Tag(hashslot.Slot("users:tag:people")) + "}users:tag:people"
		n, err := outside.Eval(ctx, tagScript, []string{tagKey, seqKey}, channel,
			docBody(outsideID, 0, 3, time.Now().UnixNano(), []string{"people"}, key), "604800000").Int()
		if err != nil || n != 1 {
			t.Fatalf("EVAL of the doc's tags script: %d, %v; want 1", n, err)
		}
		took := waitFresh(t, cs, []string{"44"}, tagged, func(string) string { return "Hedy Lamarr" }, start)
		t.Logf("every instance served the new row %v after the doc's tags script ran", took)
		assertApplied(t, cs, before)
	})
	t.Run("clear", func(t *testing.T) {
		store, err := l2.New(outside, l2.Config{KeyPrefix: "users:"})
		if err != nil {
			t.Fatal(err)
		}
		warm(t, cs, []string{"42"}, db.load, "Ada, Countess of Lovelace")
		if err := store.Set(ctx, "42", l2.Entry{Value: []byte("Lady Lovelace"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }
		serveAll(t, cs, []string{"42"}, noLoad, "Ada, Countess of Lovelace")
		start := time.Now()
		if err := outside.Eval(ctx, pub, []string{seqKey}, channel, docBody(outsideID, 0, 2, time.Now().UnixNano(), nil, key)).Err(); err != nil {
			t.Fatalf("EVAL of the doc's publish script with a clear: %v", err)
		}
		took := waitFresh(t, cs, []string{"42"}, noLoad, func(string) string { return "Lady Lovelace" }, start)
		t.Logf("every instance dropped its L1 %v after the doc's clear", took)
	})
}

// docBody builds a message body from docs/WIRE.md's description alone.
func docBody(origin [16]byte, partition uint16, op byte, unixNanos int64, keys []string, macKey []byte) []byte {
	var ks []byte
	for _, k := range keys {
		ks = binary.AppendUvarint(ks, uint64(len(k)))
		ks = append(ks, k...)
	}
	size := 38 + len(ks)
	flags := byte(0)
	if macKey != nil {
		flags, size = 1, size+32
	}
	b := []byte{0xCE, 1, op, flags}
	b = append(b, origin[:]...)
	b = binary.BigEndian.AppendUint16(b, partition)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNanos))
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	b = append(b, ks...)
	if macKey != nil {
		m := hmac.New(sha256.New, macKey)
		m.Write(b)
		b = m.Sum(b)
	}
	return b
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// strconvBase36 writes i in base 36 with the digits 0-9a-z.
func strconvBase36(i int64) string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 36 {
		b = append([]byte{digits[i%36]}, b...)
	}
	return string(b)
}

// block is a fenced code block of a Markdown text: its info string, its
// text, and the line just before its opening fence.
type block struct{ marker, lang, text string }

func fencedBlocks(doc string) []block {
	var (
		out  []block
		cur  *block
		prev string
		body strings.Builder
	)
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{marker: prev, lang: strings.TrimPrefix(line, "```")}
			body.Reset()
		case cur != nil && line == "```":
			cur.text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line)
			body.WriteString("\n")
		}
		prev = line
	}
	return out
}

// TestWireDocShardCluster runs docs/WIRE.md's publish script, ending with
// the page's SPUBLISH lines, on the 3-master cluster: a message on the
// shard channel of each key's slot reaches every instance, on every
// master.
func TestWireDocShardCluster(t *testing.T) {
	raw, err := os.ReadFile("../docs/WIRE.md")
	if err != nil {
		t.Fatal(err)
	}
	var pub, tail string
	for _, b := range fencedBlocks(string(raw)) {
		switch {
		case b.marker == "<!-- script: publish -->" && b.lang == "lua":
			pub = b.text
		case b.lang == "lua" && strings.Contains(b.text, "SPUBLISH"):
			tail = b.text
		}
	}
	const plainTail = "redis.call('SET', seqkey, s)\nredis.call('PUBLISH', ARGV[1], ARGV[2] .. s)\nreturn res\n"
	if pub == "" || tail == "" || !strings.HasSuffix(pub, plainTail) {
		t.Fatalf("docs/WIRE.md: want the publish script ending with\n%s\nand a lua block with SPUBLISH to replace that ending", plainTail)
	}
	sharded := strings.TrimSuffix(pub, plainTail) + tail

	cl := redistest.StartCluster(t)
	ctx := context.Background()
	newRedis := func() redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	cs := instances(t, 3, newRedis, Config[string]{Namespace: "docsh"})
	outside := newRedis().(*redis.ClusterClient)
	store, err := l2.New(outside, l2.Config{KeyPrefix: "docsh:"})
	if err != nil {
		t.Fatal(err)
	}
	keys := keysN("row", 30)
	masters := map[string]bool{}
	for _, k := range keys {
		m, err := outside.MasterForKey(ctx, "docsh:"+k)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) != len(cl.Masters) {
		t.Fatalf("the keys are on %d masters, want all %d", len(masters), len(cl.Masters))
	}
	db := newTable(map[string]string{})
	for _, k := range keys {
		db.set(k, "v1")
	}
	warm(t, cs, keys, db.load, "v1")
	noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %s", k) }
	for _, k := range keys {
		if err := store.Set(ctx, k, l2.Entry{Value: []byte("v2"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	serveAll(t, cs, keys, noLoad, "v1")
	var outsideID [16]byte
	copy(outsideID[:], "outside program!")
	before := applied(cs)
	start := time.Now()
	for _, k := range keys {
		p := hashslot.Slot("docsh:" + k)
		body := docBody(outsideID, uint16(p), 1, time.Now().UnixNano(), []string{k}, nil)
		if err := outside.Eval(ctx, sharded, []string{wire.SeqKey("docsh", p)}, wire.ShardChannel("docsh", p), body).Err(); err != nil {
			t.Fatalf("EVAL of the doc's publish script with SPUBLISH for %s: %v", k, err)
		}
	}
	took := waitFresh(t, cs, keys, noLoad, func(string) string { return "v2" }, start)
	t.Logf("every instance served the %d values written outside %v after the first SPUBLISH", len(keys), took)
	assertApplied(t, cs, before)
	for i, c := range cs {
		if d := c.Stats().Invalidation.Duplicates; d != 0 {
			t.Errorf("instance %d: %d duplicates, want 0 (a shard channel's message reaches one master's subscription)", i, d)
		}
	}
}
