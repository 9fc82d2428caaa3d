package tiered

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewInheritedVersionOverflowsMaxValueSize: an unversioned Set of a
// value that fits MaxValueSize passes CheckSize, but over a versioned value
// the script inserts the stored version (8 bytes) into its envelope. The
// stored envelope then exceeds MaxValueSize: every reader decodes it as too
// large ("corrupt"), reloads, and its write-back is refused (the bytes
// carry a version), so no instance keeps the value: every read calls the
// loader, for the whole TTL.
func TestReviewInheritedVersionOverflowsMaxValueSize(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	const limit = 1000
	cfg := Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "size", MaxValueSize: limit}
	w := newCache(t, cfg)
	r := newCache(t, cfg)
	if err := w.Set(ctx, "k", "small", WithVersion(5)); err != nil {
		t.Fatal(err)
	}
	// The largest string whose unversioned envelope fits the limit.
	var big string
	for n := limit; n > 0; n-- {
		big = strings.Repeat("x", n)
		e, err := w.entry(item[string]{v: big}, w.cfg.TTL)
		if err == nil && w.l2.CheckSize("k", e) == nil {
			break
		}
	}
	if err := w.Set(ctx, "k", big); err != nil {
		t.Fatalf("unversioned Set of a value that fits: %v", err)
	}
	var loads atomic.Int64
	load := func(context.Context, string) (string, error) { loads.Add(1); return big, nil }
	for range 3 {
		if v, err := r.GetOrLoad(ctx, "k", load); err != nil || v != big {
			t.Fatalf("GetOrLoad: %d bytes, %v", len(v), err)
		}
	}
	if n := loads.Load(); n != 0 {
		t.Fatalf("a value written by Set, read 3 times, called the loader %d times (decode errors: %d); want 0",
			n, r.Stats().Loads.DecodeErrors)
	}
}
