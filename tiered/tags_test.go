package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

// tagLoader returns "key#n" values, counts calls per key and tags what it
// returns with SetTags when tags is set.
type tagLoader struct {
	calls atomic.Int64
	tags  []string
}

func (l *tagLoader) load(ctx context.Context, key string) (string, error) {
	n := l.calls.Add(1)
	if len(l.tags) > 0 {
		if err := SetTags(ctx, l.tags...); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%s#%d", key, n), nil
}

func tagCache(t *testing.T, addr, ns string) *Cache[string] {
	t.Helper()
	return newCache(t, Config[string]{Redis: newClient(t, addr), Namespace: ns, RedisTimeout: 2 * time.Second})
}

// TestTagInvalidateEverywhere: InvalidateTag makes every entry carrying the
// tag a miss, at once on the calling instance and within the propagation
// bound on another, whether tagged by WithTags or by the loader's SetTags;
// untagged entries and entries with other tags stay hits.
func TestTagInvalidateEverywhere(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "tg"), tagCache(t, srv.Addr(), "tg")
	ctx := context.Background()
	var plain, byOpt, other tagLoader
	byLoader := tagLoader{tags: []string{"t"}}
	read := func(c *Cache[string]) []string {
		t.Helper()
		var out []string
		for _, r := range []struct {
			key  string
			l    *tagLoader
			opts []Option
		}{
			{"plain", &plain, nil},
			{"opt", &byOpt, []Option{WithTags("t", "u")}},
			{"loader", &byLoader, nil},
			{"other", &other, []Option{WithTags("u")}},
		} {
			v, err := c.GetOrLoad(ctx, r.key, r.l.load, r.opts...)
			if err != nil {
				t.Fatalf("GetOrLoad %s: %v", r.key, err)
			}
			out = append(out, v)
		}
		return out
	}
	first := read(a)
	a.hot.Wait()
	if got := read(b); fmt.Sprint(got) != fmt.Sprint(first) {
		t.Fatalf("b read %v, want a's %v from Redis", got, first)
	}
	b.hot.Wait()
	if n := byOpt.calls.Load() + byLoader.calls.Load(); n != 2 {
		t.Fatalf("%d loads of the tagged keys before the invalidation, want 2", n)
	}
	if err := a.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	got := read(a)
	if want := []string{"plain#1", "opt#2", "loader#2", "other#1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a after InvalidateTag(t): %v, want %v", got, want)
	}
	a.hot.Wait()
	redistest.WaitFor(t, 5*time.Second, "b to serve the reloaded tagged values", func() bool {
		return fmt.Sprint(read(b)) == fmt.Sprint(got)
	})
	if n := plain.calls.Load() + other.calls.Load(); n != 2 {
		t.Fatalf("untagged and other-tag keys loaded %d times, want 2 (once each)", n)
	}
	if st := b.bus.Stats(); st.Applied == 0 {
		t.Fatalf("b applied no message: %+v", st)
	}
}

// TestTagSetThenInvalidate: a value written with WithTags is gone for Get
// on every instance after InvalidateTag (Redis included: a new instance
// does not serve it).
func TestTagSetThenInvalidate(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "ts")
	ctx := context.Background()
	if err := a.Set(ctx, "k", "v1", WithTags("grp")); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := a.InvalidateTags(ctx, "grp", "unused"); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after InvalidateTags = %q, %v; want ErrNotFound", v, err)
	}
	fresh := tagCache(t, srv.Addr(), "ts")
	if v, err := fresh.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a new instance's Get = %q, %v; want ErrNotFound", v, err)
	}
	if err := a.Set(ctx, "k", "v2", WithTags("grp")); err != nil {
		t.Fatal(err)
	}
	if v, err := fresh.Get(ctx, "k"); err != nil || v != "v2" {
		t.Fatalf("Get after a new tagged Set = %q, %v; want v2", v, err)
	}
}

// TestTagLoadRacingInvalidate: a load whose loader started before
// InvalidateTag is not served after it, though it wrote its value back
// after the invalidation: its stamp is the old version.
func TestTagLoadRacingInvalidate(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "tr"), tagCache(t, srv.Addr(), "tr")
	ctx := context.Background()
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan string, 1)
	go func() {
		v, _ := a.GetOrLoad(ctx, "k", func(ctx context.Context, key string) (string, error) {
			if err := SetTags(ctx, "t"); err != nil {
				return "", err
			}
			close(started)
			<-release
			return "old-row", nil
		})
		done <- v
	}()
	<-started
	if err := b.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, "a to hear the invalidation", func() bool {
		return a.bus.Stats().Applied > 0
	})
	close(release)
	if v := <-done; v != "old-row" {
		t.Fatalf("the leading caller got %q", v)
	}
	for _, c := range []*Cache[string]{a, b} {
		v, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "new-row", nil }, WithTags("t"))
		if err != nil || v != "new-row" {
			t.Fatalf("GetOrLoad after the invalidation = %q, %v; want new-row (the raced load carries the old version)", v, err)
		}
	}
}

// TestTagVersionKeyLost: a tag version key that is gone (evicted, expired,
// flushed with the data kept elsewhere) never makes values stamped before
// an invalidation current again: a missing key reads as a new version.
func TestTagVersionKeyLost(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "tl")
	ctx := context.Background()
	var l tagLoader
	if _, err := a.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().Del(ctx, wire.TagKey(wire.KeyPrefix("tl"), "t")).Err(); err != nil {
		t.Fatal(err)
	}
	fresh := tagCache(t, srv.Addr(), "tl")
	v, err := fresh.GetOrLoad(ctx, "k", l.load, WithTags("t"))
	if err != nil || v != "k#2" {
		t.Fatalf("GetOrLoad on an instance that reads the lost tag = %q, %v; want a reload k#2", v, err)
	}
	if st := fresh.Stats().Loads; st.TagMisses != 1 {
		t.Fatalf("TagMisses = %d, want 1", st.TagMisses)
	}
}

// TestTagRepairForgetsVersions: a repair (some message may be lost)
// forgets the known versions, so a value whose tag moved on while the
// message was lost is not served from Redis.
func TestTagRepairForgetsVersions(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "tp"), tagCache(t, srv.Addr(), "tp")
	ctx := context.Background()
	var l tagLoader
	if _, err := a.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil {
		t.Fatal(err)
	}
	// Move the tag on in Redis without a message, as if it were lost.
	if err := srv.Client().Set(ctx, wire.TagKey(wire.KeyPrefix("tp"), "t"), fmt.Sprint(uint64(time.Now().UnixMicro())+1e9), 0).Err(); err != nil {
		t.Fatal(err)
	}
	b.dropAll() // what a detected loss does
	b.hot.Wait()
	v, err := b.GetOrLoad(ctx, "k", l.load, WithTags("t"))
	if err != nil || v != "k#2" {
		t.Fatalf("GetOrLoad after the repair = %q, %v; want a reload k#2", v, err)
	}
}

// TestTagBatch: GetManyOrLoad with WithTags and a BatchLoader's SetKeyTags
// tag what they load; InvalidateTag reloads exactly the keys carrying it.
func TestTagBatch(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "tb")
	ctx := context.Background()
	var calls atomic.Int64
	load := func(ctx context.Context, keys []string) (map[string]string, error) {
		n := calls.Add(1)
		out := map[string]string{}
		for _, k := range keys {
			if strings.HasPrefix(k, "x") {
				if err := SetKeyTags(ctx, k, "x-only"); err != nil {
					return nil, err
				}
			}
			out[k] = fmt.Sprintf("%s#%d", k, n)
		}
		return out, nil
	}
	keys := []string{"a", "b", "x1", "x2"}
	if _, err := a.GetManyOrLoad(ctx, keys, load, WithTags("all")); err != nil {
		t.Fatal(err)
	}
	if err := SetKeyTags(ctx, "a", "t"); err == nil {
		t.Fatal("SetKeyTags outside a loader: no error")
	}
	a.hot.Wait()
	if err := a.InvalidateTag(ctx, "x-only"); err != nil {
		t.Fatal(err)
	}
	m, err := a.GetManyOrLoad(ctx, keys, load, WithTags("all"))
	if err != nil {
		t.Fatal(err)
	}
	if m["a"] != "a#1" || m["b"] != "b#1" || m["x1"] != "x1#2" || m["x2"] != "x2#2" {
		t.Fatalf("after InvalidateTag(x-only): %v; want a, b from the first load, x1, x2 reloaded", m)
	}
	a.hot.Wait()
	if err := a.InvalidateTag(ctx, "all"); err != nil {
		t.Fatal(err)
	}
	m, err = a.GetMany(ctx, keys)
	if err != nil || len(m) != 0 {
		t.Fatalf("GetMany after InvalidateTag(all) = %v, %v; want nothing", m, err)
	}
}

// TestTagL1Only: without Redis, InvalidateTag applies to the Cache alone.
func TestTagL1Only(t *testing.T) {
	c := newCache(t, Config[string]{})
	ctx := context.Background()
	var l tagLoader
	if _, err := c.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "w", "written", WithTags("t")); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait()
	if v, _ := c.GetOrLoad(ctx, "k", l.load, WithTags("t")); v != "k#1" {
		t.Fatalf("hit = %q, want k#1", v)
	}
	if err := c.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.GetOrLoad(ctx, "k", l.load, WithTags("t")); v != "k#2" {
		t.Fatalf("after InvalidateTag = %q, want k#2", v)
	}
	if v, err := c.Get(ctx, "w"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("written value after InvalidateTag = %q, %v; want ErrNotFound", v, err)
	}
}

// TestTagLimits: bad tags get clear errors and change nothing.
func TestTagLimits(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "tx")
	ctx := context.Background()
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprint("t", i)
	}
	var l tagLoader
	for name, tags := range map[string][]string{"65 tags": many, "empty tag": {""}, "long tag": {strings.Repeat("x", 1025)}} {
		if err := a.Set(ctx, "k", "v", WithTags(tags...)); err == nil {
			t.Errorf("%s: Set: no error", name)
		}
		if _, err := a.GetOrLoad(ctx, "k", l.load, WithTags(tags...)); err == nil {
			t.Errorf("%s: GetOrLoad: no error", name)
		}
		if _, err := a.GetManyOrLoad(ctx, []string{"k"}, func(context.Context, []string) (map[string]string, error) { return nil, nil }, WithTags(tags...)); err == nil {
			t.Errorf("%s: GetManyOrLoad: no error", name)
		}
		if err := a.InvalidateTags(ctx, tags...); err == nil {
			t.Errorf("%s: InvalidateTags: no error", name)
		}
	}
	if l.calls.Load() != 0 {
		t.Fatalf("the loader ran %d times", l.calls.Load())
	}
	if err := SetTags(ctx, "t"); err == nil || !strings.Contains(err.Error(), "SetTags") {
		t.Fatalf("SetTags outside a loader: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.InvalidateTag(ctx, "t"); !errors.Is(err, ErrClosed) {
		t.Fatalf("InvalidateTag after Close: %v", err)
	}
}

// TestTagUntaggedHitNoAlloc: hits of untagged and tagged entries allocate
// nothing.
func TestTagUntaggedHitNoAlloc(t *testing.T) {
	c := newCache(t, Config[string]{})
	ctx := context.Background()
	var l tagLoader
	for _, k := range []string{"plain", "tagged"} {
		var opts []Option
		if k == "tagged" {
			opts = []Option{WithTags("t")}
		}
		if _, err := c.GetOrLoad(ctx, k, l.load, opts...); err != nil {
			t.Fatal(err)
		}
	}
	c.hot.Wait()
	for _, k := range []string{"plain", "tagged"} {
		if n := testing.AllocsPerRun(1000, func() { _, _ = c.Get(ctx, k) }); n != 0 {
			t.Errorf("%s hit: %v allocs", k, n)
		}
	}
}

// TestTagWriteAfterUnheardInvalidate: a tagged write (and a tagged load)
// that begins after a tag moved on in Redis is stamped with the new version,
// although its instance has not heard the move yet (the message is on its
// way, or lost): its value is current everywhere. Stamped from what the
// instance knew, it would carry the old version and be lost, a miss on
// every instance, though it was written after the invalidation.
func TestTagWriteAfterUnheardInvalidate(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "tw"), tagCache(t, srv.Addr(), "tw")
	ctx := context.Background()
	if err := b.Set(ctx, "k0", "x", WithTags("t")); err != nil { // b now knows t's version
		t.Fatal(err)
	}
	// Move t on in Redis without a message: an invalidation b has not heard.
	if err := srv.Client().Set(ctx, wire.TagKey(wire.KeyPrefix("tw"), "t"), fmt.Sprint(uint64(time.Now().UnixMicro())+1e9), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(ctx, "k", "written-after", WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || v != "written-after" {
		t.Fatalf("another instance's Get of a value written after the move = %q, %v; want written-after", v, err)
	}
	if v, err := b.Get(ctx, "k"); err != nil || v != "written-after" {
		t.Fatalf("the writer's Get = %q, %v; want written-after", v, err)
	}
	// The old copy of k0 on b is stale now that b learnt t's new version.
	if v, err := b.Get(ctx, "k0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b's Get of k0, stamped before the move = %q, %v; want ErrNotFound", v, err)
	}
	v, err := b.GetOrLoad(ctx, "l", func(context.Context, string) (string, error) { return "loaded-after", nil }, WithTags("t"))
	if err != nil || v != "loaded-after" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	b.hot.Wait()
	if v, err := a.Get(ctx, "l"); err != nil || v != "loaded-after" {
		t.Fatalf("another instance's Get of a value loaded after the move = %q, %v; want loaded-after", v, err)
	}
	// A batch whose loader tags each key (the tag is read once per load).
	if err := srv.Client().Set(ctx, wire.TagKey(wire.KeyPrefix("tw"), "t"), fmt.Sprint(uint64(time.Now().UnixMicro())+2e9), 0).Err(); err != nil {
		t.Fatal(err)
	}
	keys := []string{"m1", "m2", "m3"}
	got, err := b.GetManyOrLoad(ctx, keys, func(ctx context.Context, keys []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range keys {
			if err := SetKeyTags(ctx, k, "t"); err != nil {
				return nil, err
			}
			out[k] = k + "-after"
		}
		return out, nil
	})
	if err != nil || len(got) != len(keys) {
		t.Fatalf("GetManyOrLoad = %v, %v", got, err)
	}
	b.hot.Wait()
	for _, k := range keys {
		if v, err := a.Get(ctx, k); err != nil || v != k+"-after" {
			t.Fatalf("another instance's Get of %s, batch-loaded after the move = %q, %v", k, v, err)
		}
	}
}

// TestTagStaleCopyIsAnL1Miss: a tagged L1 copy whose tag moved on is a miss
// for the caller, and Stats counts it so (L1.Misses and L1.Stale, not Hits),
// whichever read found it.
func TestTagStaleCopyIsAnL1Miss(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "tm")
	ctx := context.Background()
	for _, k := range []string{"g", "l", "m"} {
		if err := a.Set(ctx, k, "v", WithTags("t")); err != nil {
			t.Fatal(err)
		}
		// Each copy must be in L1 when the tag moves on: wait for a hit.
		redistest.WaitFor(t, 5*time.Second, k+" held in L1", func() bool {
			before := a.Stats().L1.Hits
			_, err := a.Get(ctx, k)
			return err == nil && a.Stats().L1.Hits > before
		})
	}
	if err := a.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	before := a.Stats().L1
	if _, err := a.Get(ctx, "g"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	if _, err := a.GetOrLoad(ctx, "l", func(context.Context, string) (string, error) { return "new", nil }); err != nil {
		t.Fatal(err)
	}
	if m, err := a.GetMany(ctx, []string{"m"}); err != nil || len(m) != 0 {
		t.Fatalf("GetMany = %v, %v; want nothing", m, err)
	}
	after := a.Stats().L1
	if d := after.Hits - before.Hits; d != 0 {
		t.Errorf("L1 hits counted for 3 invalidated copies: %d, want 0", d)
	}
	if d, s := after.Misses-before.Misses, after.Stale-before.Stale; d != 3 || s != 3 {
		t.Errorf("L1 misses +%d, stale +%d for 3 invalidated copies; want +3, +3", d, s)
	}
}
