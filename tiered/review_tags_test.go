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
	"github.com/nearcache/nearcache/l2"
)

// namedTags returns n tags prefix0..prefix(n-1).
func namedTags(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(prefix, i)
	}
	return out
}

// TestReviewTagMergeOver64Tags: a load whose WithTags and SetTags (or
// SetKeyTags) add up to more than l2.MaxTags distinct tags must not keep a
// value that an InvalidateTag of any of them leaves current: every tag it
// was given must invalidate it, on the loading instance and on another.
func TestReviewTagMergeOver64Tags(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "r64"), tagCache(t, srv.Addr(), "r64")
	ctx := context.Background()
	opt, set := namedTags("w", 40), namedTags("s", 40)
	var n atomic.Int64
	load := func(ctx context.Context, key string) (string, error) {
		if err := SetTags(ctx, set...); err != nil {
			return "", err
		}
		return fmt.Sprint("v", n.Add(1)), nil
	}
	// Two SetTags calls of 40 tags each, without WithTags.
	load2 := func(ctx context.Context, key string) (string, error) {
		if err := SetTags(ctx, set...); err != nil {
			return "", err
		}
		if err := SetTags(ctx, opt...); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Errorf("SetTags past %d tags: %v, want an error naming the limit", l2.MaxTags, err)
		}
		return fmt.Sprint("v", n.Add(1)), nil
	}
	batch := func(ctx context.Context, keys []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range keys {
			if err := SetKeyTags(ctx, k, set...); err != nil {
				return nil, err
			}
			out[k] = fmt.Sprint("v", n.Add(1))
		}
		return out, nil
	}
	for _, tc := range []struct {
		name string
		get  func(*Cache[string]) (string, error)
	}{
		{"WithTags+SetTags", func(c *Cache[string]) (string, error) {
			return c.GetOrLoad(ctx, "k1", load, WithTags(opt...))
		}},
		{"SetTags twice", func(c *Cache[string]) (string, error) { return c.GetOrLoad(ctx, "k2", load2) }},
		{"WithTags+SetKeyTags", func(c *Cache[string]) (string, error) {
			m, err := c.GetManyOrLoad(ctx, []string{"k3"}, batch, WithTags(opt...))
			return m["k3"], err
		}},
	} {
		for _, victim := range []string{"s39", "w39", "s0", "w0"} {
			first, err := tc.get(a)
			if err != nil {
				t.Fatalf("%s: first load: %v", tc.name, err)
			}
			a.hot.Wait()
			if err := a.InvalidateTag(ctx, victim); err != nil {
				t.Fatal(err)
			}
			if v, err := tc.get(a); err != nil || v == first {
				t.Fatalf("%s: after InvalidateTag(%s) the loading instance served %q, %v; want a reload, not %q", tc.name, victim, v, err, first)
			}
			a.hot.Wait()
			if err := a.InvalidateTag(ctx, victim); err != nil {
				t.Fatal(err)
			}
			if v, err := tc.get(b); err != nil || v == first {
				t.Fatalf("%s: after InvalidateTag(%s) another instance served %q, %v", tc.name, victim, v, err)
			}
			b.hot.Wait()
		}
	}
}

// TestReviewTagLoadRaceSameInstance: a load whose loader started before
// InvalidateTag on the same instance is never served to a caller that
// comes after InvalidateTag returned, there or on another instance; a
// load that starts after it is current everywhere (not lost).
func TestReviewTagLoadRaceSameInstance(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "rrs"), tagCache(t, srv.Addr(), "rrs")
	ctx := context.Background()
	for _, how := range []string{"WithTags", "SetTags"} {
		key := "k-" + how
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan string, 1)
		go func() {
			var opts []Option
			if how == "WithTags" {
				opts = append(opts, WithTags("t"))
			}
			v, _ := a.GetOrLoad(ctx, key, func(ctx context.Context, key string) (string, error) {
				if how == "SetTags" {
					if err := SetTags(ctx, "t"); err != nil {
						return "", err
					}
				}
				close(started)
				<-release
				return "old", nil
			}, opts...)
			done <- v
		}()
		<-started
		if err := a.InvalidateTag(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		// A caller after InvalidateTag does not join the old load.
		v, err := a.GetOrLoad(ctx, key, func(context.Context, string) (string, error) { return "new", nil }, WithTags("t"))
		if err != nil || v != "new" {
			t.Fatalf("%s: GetOrLoad after InvalidateTag while the old load runs = %q, %v; want new", how, v, err)
		}
		close(release)
		if v := <-done; v != "old" {
			t.Fatalf("%s: the old load's caller got %q", how, v)
		}
		a.hot.Wait()
		for name, c := range map[string]*Cache[string]{"a": a, "b": b} {
			redistest.WaitFor(t, 5*time.Second, name+" to serve the value loaded after the invalidation", func() bool {
				v, err := c.Get(ctx, key)
				if err == nil && v == "old" {
					t.Fatalf("%s: %s served the raced load's value", how, name)
				}
				return err == nil && v == "new"
			})
		}
	}
}

// TestReviewTagFailSafeAfterInvalidate: fail-safe and the soft timeout
// never serve a stale value whose tag was invalidated before the call.
func TestReviewTagFailSafeAfterInvalidate(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rfs", RedisTimeout: 2 * time.Second,
			TTL: 50 * time.Millisecond, FailSafeMaxStale: time.Minute, SoftTimeout: 20 * time.Millisecond,
			LoadTimeout: 2 * time.Second}
	}
	a, b := newCache(t, cfg()), newCache(t, cfg())
	ctx := context.Background()
	fail := func(context.Context, string) (string, error) { return "", errors.New("db down") }
	slow := func(ctx context.Context, _ string) (string, error) {
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
		}
		return "slow-new", nil
	}
	for i, key := range []string{"f", "s"} {
		if err := a.Set(ctx, key, "old", WithTags("t")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // past TTL: stale, within FailSafeMaxStale
		// Fail-safe works while the tag stands.
		if v, err := b.GetOrLoad(ctx, key, fail); i == 0 && (err != nil || v != "old") {
			t.Fatalf("fail-safe before the invalidation = %q, %v; want old", v, err)
		}
		if err := a.InvalidateTag(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]*Cache[string]{"a": a, "b": b} {
			if key == "f" {
				redistest.WaitFor(t, 5*time.Second, name+" to refuse the stale tagged value", func() bool {
					v, err := c.GetOrLoad(ctx, key, fail)
					if err == nil && v == "old" && c == a {
						t.Fatalf("a served the invalidated stale value by fail-safe")
					}
					return err != nil
				})
				continue
			}
			v, err := c.GetOrLoad(ctx, key, slow)
			if c == a && (err != nil || v != "slow-new") {
				t.Fatalf("soft timeout after InvalidateTag on a = %q, %v; want slow-new", v, err)
			}
		}
	}
}

// TestReviewTagRefreshRace: with refresh-ahead, a refresh whose loader
// started before InvalidateTag (on the same instance) is neither served
// to a caller after it nor kept; a copy due for refresh whose tag moved on
// is not served while its refresh starts.
func TestReviewTagRefreshRace(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rrf", RedisTimeout: 2 * time.Second,
			TTL: 4 * time.Second, RefreshAhead: 0.25, L1TTLJitter: NoJitter, LoadTimeout: 5 * time.Second}
	}
	a, b := newCache(t, cfg()), newCache(t, cfg())
	ctx := context.Background()
	v1 := func(context.Context, string) (string, error) { return "v1", nil }
	if v, err := a.GetOrLoad(ctx, "k", v1, WithTags("t")); err != nil || v != "v1" {
		t.Fatalf("%q %v", v, err)
	}
	if v, err := b.GetOrLoad(ctx, "k", v1, WithTags("t")); err != nil || v != "v1" {
		t.Fatalf("%q %v", v, err)
	}
	a.hot.Wait()
	b.hot.Wait()
	started, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	blocked := func(ctx context.Context, _ string) (string, error) {
		if once.CompareAndSwap(false, true) {
			close(started)
		}
		<-release
		return "refreshed-old", nil
	}
	redistest.WaitFor(t, 10*time.Second, "a refresh to start", func() bool {
		if v, err := a.GetOrLoad(ctx, "k", blocked, WithTags("t")); err != nil || v != "v1" {
			t.Fatalf("a hit before the refresh = %q, %v; want v1", v, err)
		}
		return a.Stats().Loads.Refreshes.Started > 0
	})
	<-started
	if err := a.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	newer := func(context.Context, string) (string, error) { return "new", nil }
	if v, err := a.GetOrLoad(ctx, "k", newer, WithTags("t")); err != nil || v != "new" {
		t.Fatalf("GetOrLoad after InvalidateTag while a refresh runs = %q, %v; want new", v, err)
	}
	close(release)
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool {
		return a.Stats().Loads.Refreshes.Started == a.Stats().Loads.Refreshes.FromLoader+a.Stats().Loads.Refreshes.Failed+a.Stats().Loads.Refreshes.FromRedis+a.Stats().Loads.Refreshes.Skipped
	})
	a.hot.Wait()
	for name, c := range map[string]*Cache[string]{"a": a, "b": b} {
		redistest.WaitFor(t, 5*time.Second, name+" to serve new", func() bool {
			v, err := c.GetOrLoad(ctx, "k", newer, WithTags("t"))
			if v == "refreshed-old" || (v == "v1" && c == a) {
				t.Fatalf("%s served %q after the invalidation", name, v)
			}
			return err == nil && v == "new"
		})
	}
}

// TestReviewTagL1Only: without Redis, a load whose loader started before
// InvalidateTag is a miss after it, a load after it is kept, and past
// maxKnownTags (the versions are dropped) neither a copy nor a load that
// started before comes back.
func TestReviewTagL1Only(t *testing.T) {
	c := newCache(t, Config[string]{})
	ctx := context.Background()
	run := func(key, val string, opts ...Option) (chan struct{}, chan string) {
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan string, 1)
		go func() {
			v, _ := c.GetOrLoad(ctx, key, func(ctx context.Context, _ string) (string, error) {
				if err := SetTags(ctx, "t"); err != nil {
					return "", err
				}
				close(started)
				<-release
				return val, nil
			}, opts...)
			done <- v
		}()
		<-started
		return release, done
	}
	release, done := run("k", "old")
	if err := c.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-done
	c.hot.Wait()
	if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("raced load after InvalidateTag = %q, %v; want ErrNotFound", v, err)
	}
	if v, _ := c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) { return "new", SetTags(ctx, "t") }); v != "new" {
		t.Fatalf("load after InvalidateTag = %q", v)
	}
	c.hot.Wait()
	if v, err := c.Get(ctx, "k"); err != nil || v != "new" {
		t.Fatalf("load after InvalidateTag not kept: %q, %v", v, err)
	}
	// A load of m stamped with t's current version, then t moved on, then
	// every version dropped (past maxKnownTags): m's stamp must not be
	// current again.
	release, done = run("m", "m-old")
	if err := c.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= maxKnownTags/l2.MaxTags; i++ {
		if err := c.InvalidateTags(ctx, namedTags(fmt.Sprint("x", i, "-"), l2.MaxTags)...); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	<-done
	c.hot.Wait()
	for _, k := range []string{"m", "k"} {
		if v, err := c.Get(ctx, k); err == nil && v != "new" {
			t.Fatalf("%s after the versions were dropped = %q", k, v)
		}
	}
	if v, err := c.Get(ctx, "m"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("m = %q, %v; want ErrNotFound", v, err)
	}
	c.tags.mu.RLock()
	n := len(c.tags.vers)
	c.tags.mu.RUnlock()
	if n > maxKnownTags {
		t.Fatalf("%d known tags", n)
	}
}

// TestReviewTagLostMessage: a tag message that never arrives (the tag
// moved on in Redis, the partition's sequence advanced, nothing
// published) is found by the next message's gap, and the repair makes the
// instance re-read the tag: the value stamped before is not served.
func TestReviewTagLostMessage(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "rlm"), tagCache(t, srv.Addr(), "rlm")
	ctx := context.Background()
	var l tagLoader
	for _, c := range []*Cache[string]{a, b} {
		if v, err := c.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil || v != "k#1" {
			t.Fatalf("%q %v", v, err)
		}
		c.hot.Wait()
	}
	if v, err := b.Get(ctx, "k"); err != nil || v != "k#1" {
		t.Fatalf("%q %v", v, err)
	}
	if err := a.Set(ctx, "warm", "x"); err != nil { // b has seen partition 0
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, "b to receive a message", func() bool { return b.bus.Stats().Received > 0 })
	rc := srv.Client()
	if err := rc.Set(ctx, wire.TagKey(wire.KeyPrefix("rlm"), "t"), fmt.Sprint(uint64(time.Now().UnixMicro())+1e9), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Incr(ctx, wire.SeqKey("rlm", 0)).Err(); err != nil {
		t.Fatal(err)
	}
	gaps := b.bus.Stats().Gaps
	if err := a.Set(ctx, "other", "x"); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, "b to find the gap", func() bool { return b.bus.Stats().Gaps > gaps })
	redistest.WaitFor(t, 5*time.Second, "b to stop serving k#1", func() bool {
		v, err := b.GetOrLoad(ctx, "k", l.load, WithTags("t"))
		return err == nil && v != "k#1"
	})
}

// TestReviewTagBadTagInLoader: a loader whose SetTags or SetKeyTags is
// refused for a bad tag (empty, too long) and that goes on all the same
// must not leave a value that escapes the invalidation of the good tags
// it named in the same call: the load is served but not kept.
func TestReviewTagBadTagInLoader(t *testing.T) {
	srv := redistest.StartServer(t)
	a, b := tagCache(t, srv.Addr(), "rbt"), tagCache(t, srv.Addr(), "rbt")
	ctx := context.Background()
	var n atomic.Int64
	var refused atomic.Int64
	for _, bad := range []string{"", strings.Repeat("x", maxTagLen+1)} {
		load := func(ctx context.Context, key string) (string, error) {
			if err := SetTags(ctx, "good", bad); err != nil {
				refused.Add(1)
			}
			return fmt.Sprint("v", n.Add(1)), nil
		}
		batch := func(ctx context.Context, keys []string) (map[string]string, error) {
			out := map[string]string{}
			for _, k := range keys {
				if err := SetKeyTags(ctx, k, bad, "good"); err != nil {
					refused.Add(1)
				}
				out[k] = fmt.Sprint("v", n.Add(1))
			}
			return out, nil
		}
		for _, get := range []func() (string, error){
			func() (string, error) { return a.GetOrLoad(ctx, "k", load) },
			func() (string, error) {
				m, err := a.GetManyOrLoad(ctx, []string{"m"}, batch)
				return m["m"], err
			},
		} {
			first, err := get()
			if err != nil {
				t.Fatal(err)
			}
			a.hot.Wait()
			if err := a.InvalidateTag(ctx, "good"); err != nil {
				t.Fatal(err)
			}
			if v, err := get(); err != nil || v == first {
				t.Fatalf("tag %.8q: after InvalidateTag(good) the loading instance served %q, %v", bad, v, err)
			}
			a.hot.Wait()
			if err := a.InvalidateTag(ctx, "good"); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"k", "m"} {
				if v, err := b.Get(ctx, k); err == nil && v == first {
					t.Fatalf("tag %.8q: after InvalidateTag(good) another instance served %q", bad, v)
				}
			}
		}
	}
	if refused.Load() == 0 {
		t.Fatal("no SetTags or SetKeyTags was refused")
	}
}

// TestReviewTagVersionUnreadable: a Get (or GetMany) of a tagged value
// whose tag version cannot be read (the key holds what is not a version,
// as after a foreign write) is an error, not ErrNotFound: the value may
// well be current, and a caller must not take it for absent.
func TestReviewTagVersionUnreadable(t *testing.T) {
	srv := redistest.StartServer(t)
	a := tagCache(t, srv.Addr(), "rvu")
	ctx := context.Background()
	if err := a.SetMany(ctx, map[string]string{"k": "v", "j": "w"}, WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().Set(ctx, wire.TagKey(wire.KeyPrefix("rvu"), "t"), "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	b := tagCache(t, srv.Addr(), "rvu")
	if v, err := b.Get(ctx, "k"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a value whose tag version is unreadable = %q, %v; want an error other than ErrNotFound", v, err)
	} else if !strings.Contains(err.Error(), "not a version") {
		t.Fatalf("Get error %q does not say why", err)
	}
	if m, err := b.GetMany(ctx, []string{"k", "j"}); err == nil || errors.Is(err, ErrNotFound) || len(m) != 0 {
		t.Fatalf("GetMany = %v, %v; want an error other than ErrNotFound", m, err)
	}
	if st := b.Stats().Loads; st.TagMisses != 0 {
		t.Fatalf("TagMisses = %d: an unreadable version is no tag miss", st.TagMisses)
	}
	// A load is served, and stores nothing it could not stamp.
	if v, err := b.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "loaded", nil }, WithTags("t")); err != nil || v != "loaded" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	raw, err := srv.Client().Get(ctx, "rvu:k").Bytes()
	if err != nil || !strings.HasSuffix(string(raw), "v") {
		t.Fatalf("Redis holds %q, %v; want the Set value untouched", raw, err)
	}
}

// TestReviewTagL1Bytes: with L1MaxBytes, a tagged copy's tags (up to 64
// names of up to 1024 bytes each, held in L1 beside the value) count
// towards the bound: small values with large tags do not let L1 hold many
// times L1MaxBytes.
func TestReviewTagL1Bytes(t *testing.T) {
	const maxBytes = 1 << 20
	c := newCache(t, Config[string]{L1MaxBytes: maxBytes, L1Cost: func(v string) int64 { return int64(len(v)) }})
	ctx := context.Background()
	tags := namedTags(strings.Repeat("t", 1000), l2.MaxTags) // about 64 KB of names per entry
	const n = 200
	for i := 0; i < n; i++ {
		if err := c.Set(ctx, fmt.Sprint("k", i), "v", WithTags(tags...)); err != nil {
			t.Fatal(err)
		}
		c.hot.Wait()
	}
	held := 0
	for i := 0; i < n; i++ {
		if _, err := c.Get(ctx, fmt.Sprint("k", i)); err == nil {
			held++
		}
	}
	if perEntry := 64 * 1000; held*perEntry > 2*maxBytes {
		t.Fatalf("L1 holds %d entries with %d bytes of tags each: %d bytes, L1MaxBytes %d", held, perEntry, held*perEntry, maxBytes)
	}
	if held == 0 {
		t.Fatal("L1 holds nothing")
	}
}
