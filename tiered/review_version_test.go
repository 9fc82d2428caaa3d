package tiered

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewVersionedTombstoneOutlivesValue: WithVersion promises that a
// versioned Delete keeps the version "with a tombstone that lives as long as
// a value would". With FailSafeMaxStale a value lives TTL+FailSafeMaxStale
// in Redis, so until then an older versioned Set is refused; after a
// versioned Delete the tombstone must keep refusing it as long.
func TestReviewVersionedTombstoneOutlivesValue(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	c := newCache(t, Config[string]{Redis: rc, Namespace: "vtomb", TTL: 20 * time.Second, FailSafeMaxStale: time.Minute})
	if err := c.Set(ctx, "k", "v5", WithVersion(5)); err != nil {
		t.Fatal(err)
	}
	valueLife := rc.PTTL(ctx, "vtomb:k").Val()
	if err := c.DeleteMany(ctx, []string{"k"}, WithVersion(6)); err != nil {
		t.Fatal(err)
	}
	tombLife := rc.PTTL(ctx, "vtomb:k").Val()
	if tombLife < valueLife-5*time.Second {
		t.Fatalf("versioned tombstone lives %v, a value lives %v: an older versioned Set landing between the two "+
			"is accepted after the delete although it would have been refused without it", tombLife, valueLife)
	}
}

// TestReviewL1OnlyVersionedDelete: in L1-only mode "the version is compared
// with the entry L1 holds", and DeleteMany with WithVersion leaves "a key
// whose stored version is as new or newer" alone (ErrStale). A delete older
// than the held version must not remove the newer value.
func TestReviewL1OnlyVersionedDelete(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{})
	if err := c.Set(ctx, "k", "v5", WithVersion(5)); err != nil {
		t.Fatal(err)
	}
	c.local.(interface{ Wait() }).Wait()
	err := c.DeleteMany(ctx, []string{"k"}, WithVersion(3))
	v, gerr := c.Get(ctx, "k")
	if !errors.Is(err, ErrStale) || gerr != nil || v != "v5" {
		t.Fatalf("L1-only DeleteMany version 3 over version 5: %v, then Get %q %v; want ErrStale and v5 kept", err, v, gerr)
	}
}

// TestReviewInDoubtDelete: a Delete whose script is held back past
// RedisTimeout is in doubt; the writer refills the old value meanwhile, and
// when the held script runs its own invalidation must drop that copy.
func TestReviewInDoubtDelete(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	ctx := context.Background()
	w := newCache(t, Config[string]{Redis: newClient(t, px.Addr()), Namespace: "ddoubt", RedisTimeout: 100 * time.Millisecond})
	o := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "ddoubt"})
	if err := w.Set(ctx, "k", "v1", WithVersion(1)); err != nil {
		t.Fatal(err)
	}
	// Each write shape has its own script: run this one once, so the held
	// EVALSHA finds it cached and runs when released (a NOSCRIPT reply would
	// mean the write never ran, and nothing would be in doubt).
	if err := w.DeleteMany(ctx, []string{"warm"}, WithVersion(1)); err != nil {
		t.Fatal(err)
	}
	release := px.Hold("evalsha")
	if err := w.DeleteMany(ctx, []string{"k"}, WithVersion(2)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("DeleteMany with its script held back: %v, want ErrUnavailable", err)
	}
	v, err := w.Get(ctx, "k")
	if err != nil || v != "v1" {
		t.Fatalf("writer's read while the delete is in doubt: %q %v, want v1", v, err)
	}
	release()
	eventually(t, "the held delete to run", func() bool {
		_, err := o.Get(ctx, "k")
		return errors.Is(err, ErrNotFound)
	})
	eventually(t, "the writer to drop its old copy", func() bool {
		_, err := w.Get(ctx, "k")
		return errors.Is(err, ErrNotFound)
	})
}

// TestReviewUnversionedDeleteKeepsVersion: l2's script keeps the stored
// version in an unversioned tombstone "so a delete without a version cannot
// let an older versioned write back in", and README calls Delete after the
// write "always safe". But the unversioned tombstone lives only
// LoadTimeout+2×RedisTimeout+1s, while the versioned value it replaced had
// the whole TTL: once it expired, a late Set with an older version than the
// one Redis had landed and lived for the TTL. The tombstone must keep the
// version as long as the value would have.
func TestReviewUnversionedDeleteKeepsVersion(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	cfg := Config[string]{Redis: rc, Namespace: "udel", TTL: time.Minute, LoadTimeout: 200 * time.Millisecond, RedisTimeout: 100 * time.Millisecond}
	a := newCache(t, cfg)
	b := newCache(t, cfg)
	if err := a.Set(ctx, "k", "v5", WithVersion(5)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	if err := a.Delete(ctx, "k"); err != nil { // the row is deleted
		t.Fatal(err)
	}
	// The tombstone keeps version 5 at least as long as the value would
	// have lived (before the fix it expired after about 1.4 s).
	if pttl := rc.PTTL(ctx, "udel:k").Val(); pttl < 50*time.Second {
		t.Fatalf("the unversioned tombstone over a versioned value lives %v, want about the value's remaining 1m", pttl)
	}
	// A writer that committed version 4 before version 5 calls Set late.
	err := b.Set(ctx, "k", "v4", WithVersion(4))
	if !errors.Is(err, ErrStale) {
		v, _ := a.Get(ctx, "k")
		t.Fatalf("late Set of version 4 after version 5 and a Delete, %v into the value's 1m TTL: %v (readers now get %q), want ErrStale",
			time.Since(written).Round(time.Millisecond), err, v)
	}
}

// TestReviewVersionedDeleteBlocksWriteBack: README recommends DeleteMany
// with WithVersion "after deleting the row (or, simplest of all, after any
// write)" and says a Delete after the write "costs one load per write". A
// versioned tombstone lives for the TTL and no load may replace it, so after
// the row is written again every instance loads it itself, again at every
// L1 expiry, for the whole TTL: Redis stops sharing the value.
func TestReviewVersionedDeleteBlocksWriteBack(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	var caches []*Cache[string]
	for range 3 {
		caches = append(caches, newCache(t, Config[string]{Redis: rc, Namespace: "vdel"}))
	}
	var loads atomic.Int64
	load := func(context.Context, string) (string, error) { loads.Add(1); return "row@7", nil }
	// The row is updated to version 7; the writer deletes the cache entry.
	if err := caches[0].DeleteMany(ctx, []string{"k"}, WithVersion(7)); err != nil {
		t.Fatal(err)
	}
	for _, c := range caches {
		if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "row@7" {
			t.Fatalf("GetOrLoad: %q %v", v, err)
		}
	}
	if n := loads.Load(); n != 1 {
		t.Fatalf("3 instances read the key once each after one versioned delete: %d loads, want 1 (the first load's "+
			"write-back shared through Redis)", n)
	}
}

// TestReviewPartialRefusalPublishesRefusedKey: in a SetMany where one key is
// refused and another written, the partition's one message (built before
// the script ran) names the refused key too: other instances drop their
// copy of it (documented at WithVersion) and read it again, and what they
// read is still the newer value.
func TestReviewPartialRefusalPublishesRefusedKey(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cfg := Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "partial"}
	w := newCache(t, cfg)
	r := newCache(t, cfg)
	if err := w.Set(ctx, "old", "v9", WithVersion(9)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reader to receive the Set", func() bool { return r.bus.Stats().Applied >= 1 })
	if v, err := r.Get(ctx, "old"); err != nil || v != "v9" {
		t.Fatalf("reader Get: %q %v", v, err)
	}
	before := r.bus.Stats().Applied
	err := w.SetMany(ctx, map[string]string{"old": "v5", "new": "v5"}, WithVersion(5))
	if !errors.Is(err, ErrStale) {
		t.Fatalf("SetMany: %v, want ErrStale for old", err)
	}
	eventually(t, "the reader to receive the message for new", func() bool { return r.bus.Stats().Applied > before })
	for k, want := range map[string]string{"old": "v9", "new": "v5"} {
		if v, err := r.Get(ctx, k); err != nil || v != want {
			t.Fatalf("reader Get %s after the partly refused SetMany: %q %v, want %q", k, v, err, want)
		}
	}
}

// TestReviewWriteBackKeepsTombstoneMemory: a versioned DeleteMany leaves a
// tombstone that refuses an older versioned Set for as long as a value
// written now would live (TTL here), so "whichever call lands last" the
// newer version (the delete) wins. Since write-backs may replace a versioned
// value, another instance's load that finds the row gone writes a negative
// entry over the tombstone with NegativeTTL as its TTL: the version was
// forgotten after NegativeTTL, and a delayed older versioned Set that landed
// then resurrected the deleted row for everyone. A write over a versioned
// value must keep the key at least as long as that value would have lived.
func TestReviewWriteBackKeepsTombstoneMemory(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cfg := Config[string]{Namespace: "wbtomb", TTL: time.Minute, NegativeTTL: 300 * time.Millisecond}
	cfg.Redis = newClient(t, srv.Addr())
	a := newCache(t, cfg)
	cfg.Redis = newClient(t, srv.Addr())
	b := newCache(t, cfg)
	rc := newClient(t, srv.Addr())
	if err := a.Set(ctx, "k", "v5", WithVersion(5)); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteMany(ctx, []string{"k"}, WithVersion(7)); err != nil {
		t.Fatal(err)
	}
	gone := func(context.Context, string) (string, error) { return "", ErrNotFound }
	if _, err := b.GetOrLoad(ctx, "k", gone); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b's load after the delete: %v, want ErrNotFound", err)
	}
	// The write-back kept the version, and the key's life (it was about to
	// be cut to NegativeTTL).
	if e, err := a.l2.Read(ctx, "k"); err != nil || e.Version != 7 {
		t.Fatalf("Redis after b's write-back: %+v %v, want version 7 kept", e, err)
	}
	if pttl := rc.PTTL(ctx, "wbtomb:k").Val(); pttl < 50*time.Second {
		t.Fatalf("the key lives %v after the write-back, want about the tombstone's minute", pttl)
	}
	err := a.Set(ctx, "k", "v6", WithVersion(6)) // an older writer's delayed Set
	v, gerr := b.GetOrLoad(ctx, "k", gone)
	if !errors.Is(err, ErrStale) {
		t.Errorf("versioned Set v6 landing after DeleteMany v7 (and a load on another instance): %v, want ErrStale; then b reads %q %v (the deleted row is back)", err, v, gerr)
	}
}
