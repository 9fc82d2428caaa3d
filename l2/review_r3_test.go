package l2

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewTombstoneOutlivesValueWithoutExpiry: l2/doc.go promises that a
// tombstone over a versioned value lives at least as long as that value
// would have. A value stored without a TTL would have lived until replaced,
// but outlive compares the tombstone TTL with PTTL = -1 and keeps the short
// tombstone TTL: once the tombstone expires, an older versioned Set lands.
func TestReviewTombstoneOutlivesValueWithoutExpiry(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	ctx := context.Background()
	nf := Notify(testNotify("inv"))
	for _, how := range []string{"vtomb", "tomb"} {
		k := "forever-" + how
		if err := s.Set(ctx, k, Entry{Value: []byte("v5"), Version: 5}, nf); err != nil {
			t.Fatalf("%s: Set v5 without TTL: %v", how, err)
		}
		opts := []WriteOption{nf, Tombstone(200 * time.Millisecond)}
		if how == "vtomb" {
			opts = append(opts, Version(6))
		}
		if _, err := s.Delete(ctx, k, opts...); err != nil {
			t.Fatalf("%s: Delete: %v", how, err)
		}
		// The value would never have expired, so neither may the tombstone:
		// PTTL reports no expiry (go-redis returns the reply -1 as
		// time.Duration(-1); a missing key would be -2).
		pttl, err := srv.Client().PTTL(ctx, "app:"+k).Result()
		if err != nil || pttl != -1 {
			t.Errorf("%s over a versioned value without expiry: tombstone PTTL %v (%v), want -1 (no expiry)", how, pttl, err)
		}
		err = s.Set(ctx, k, Entry{Value: []byte("v4"), Version: 4}, nf)
		if !errors.Is(err, ErrStale) {
			t.Errorf("%s over a versioned value without expiry: an older versioned Set (v4) got %v, want ErrStale (tombstone PTTL: %v)", how, err, pttl)
		}
	}
}

// TestReviewUnversionedSetRepairsZeroVersionBytes: bytes that look like an
// envelope with the version flag but a zero version are corrupt (decode
// refuses them). An unversioned Set over them should leave a readable value;
// keep/inherit copies the zero version into the new envelope, so the new
// value is corrupt too and the key can never be repaired by a script write.
func TestReviewUnversionedSetRepairsZeroVersionBytes(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	ctx := context.Background()
	nf := Notify(testNotify("inv"))
	bad := append([]byte{0xC7, 1, 0x20}, make([]byte, 8)...)
	bad = append(bad, 'x')
	if err := srv.Client().Set(ctx, "app:z", bad, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if e, err := s.Read(ctx, "z"); err == nil && !e.Corrupt {
		t.Fatalf("precondition: zero-version bytes decode: %+v", e)
	}
	if err := s.Set(ctx, "z", Entry{Value: []byte("new"), TTL: time.Minute}, nf); err != nil {
		t.Fatalf("unversioned Set: %v", err)
	}
	e, err := s.Read(ctx, "z")
	if err != nil || e.Corrupt || string(e.Value) != "new" {
		t.Errorf("after an unversioned Set over zero-version bytes: Read = %q, corrupt %v, err %v; want \"new\"", e.Value, e.Corrupt, err)
	}
}

// TestReviewCorruptBytesDoNotHoldAVersion: bytes that decode refuses (here:
// a tag section that lies about its count beside the version flag) are corrupt, "never a
// version". The script's version() only looks at flags%64, so it reads 8
// bytes of them as a stored version: a versioned Set cannot replace the
// corrupt value (refused as stale by a version nobody wrote), and an
// unversioned Set copies that version into the new value.
func TestReviewCorruptBytesDoNotHoldAVersion(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	ctx := context.Background()
	nf := Notify(testNotify("inv"))
	for name, flags := range map[string]byte{
		"tag flag 0x80, count 120 over 64":   0xA0,
		"refresh flag 0x40, its 8 bytes cut": 0x60,
	} {
		bad := []byte{0xC7, 1, flags, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 'x'}
		for _, k := range []string{"v", "u"} {
			if err := srv.Client().Set(ctx, "app:"+k, bad, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if e, err := s.Read(ctx, k); err == nil && !e.Corrupt {
				t.Fatalf("%s: precondition: the bytes decode: %+v", name, e)
			}
		}
		if err := s.Set(ctx, "v", Entry{Value: []byte("v5"), Version: 5, TTL: time.Minute}, nf); err != nil {
			t.Errorf("%s: versioned Set over corrupt bytes: %v, want it written", name, err)
		}
		if err := s.Set(ctx, "u", Entry{Value: []byte("new"), TTL: time.Minute}, nf); err != nil {
			t.Fatalf("%s: unversioned Set over corrupt bytes: %v", name, err)
		}
		if e, err := s.Read(ctx, "u"); err != nil || e.Version != 0 {
			t.Errorf("%s: unversioned Set over corrupt bytes: Read version %#x, err %v; want no version (the corrupt bytes had none)", name, e.Version, err)
		}
	}
}

// TestReviewCasInheritEveryFlagCombination: a load's write-back (SetIf, the
// script's "cas", announced or quiet) over a versioned value keeps the
// stored version for every envelope flag combination of old and new, and
// with MaxValueSize set to exactly the size the unversioned write may have,
// the inherited form still decodes within the limit (the old value is
// written by a store without the limit).
func TestReviewCasInheritEveryFlagCombination(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	const stored = uint64(1)<<50 + 3
	for nw := 0; nw < 32; nw++ {
		want := flagEntry(nw, "new", 0)
		limit := encodedLen(&want) + 8
		s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: fmt.Sprintf("cas%d:", nw), MaxValueSize: limit})
		w := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: fmt.Sprintf("cas%d:", nw), MaxValueSize: NoValueSizeLimit})
		if err := s.CheckSize("x", want); err != nil {
			t.Fatalf("new %d: CheckSize at the limit: %v", nw, err)
		}
		for old := 0; old < 32; old++ {
			for _, loud := range []bool{false, true} {
				k := fmt.Sprintf("k-%d-%v", old, loud)
				if err := w.Set(ctx, k, flagEntry(old, "o", stored), Notify(testNotify("inv"))); err != nil {
					t.Fatalf("%d/%s: versioned Set: %v", nw, k, err)
				}
				raw, err := srv.Client().Get(ctx, fmt.Sprintf("cas%d:", nw)+k).Bytes()
				if err != nil {
					t.Fatal(err)
				}
				var opts []WriteOption
				if loud {
					opts = append(opts, Notify(testNotify("inv")))
				}
				ok, err := s.SetIf(ctx, k, want, raw, opts...)
				if err != nil || !ok {
					t.Fatalf("%d/%s: SetIf over the bytes read: %v %v", nw, k, ok, err)
				}
				e, err := s.Read(ctx, k)
				if err != nil || e.Corrupt || e.Version != stored || string(e.Value) != "new" && !want.Tombstone ||
					e.Negative != want.Negative || e.Tombstone != want.Tombstone || len(e.Metadata) != len(want.Metadata) {
					t.Fatalf("%d/%s: after the write-back: %+v err %v; want the new fields with version %d", nw, k, e, err, stored)
				}
			}
		}
	}
}
