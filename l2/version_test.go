package l2

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

// TestVersionedWrites: a versioned write replaces only an older version (or
// an unversioned value); a refused write publishes nothing and says which
// key and versions; versioned deletes leave versioned tombstones; SetIf (a
// load's write-back) keeps the version it replaces.
func TestVersionedWrites(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, raw := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			next := subscribe(t, raw, "inv")
			nf := Notify(testNotify("inv"))
			set := func(v uint64, val string) error {
				return s.Set(ctx, "k", Entry{Value: []byte(val), Version: v, TTL: time.Minute}, nf)
			}
			read := func() Entry {
				t.Helper()
				e, err := s.Read(ctx, "k")
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				return e
			}

			if err := set(5, "v5"); err != nil {
				t.Fatalf("first versioned Set: %v", err)
			}
			if m, _ := next(); m != "0|k|1" {
				t.Fatalf("notification: got %q", m)
			}
			if e := read(); e.Version != 5 || string(e.Value) != "v5" {
				t.Fatalf("stored: version %d value %q, want 5 v5", e.Version, e.Value)
			}
			notified := s.Stats().Notifications
			for _, v := range []uint64{5, 4, 1} {
				noMessage(t, raw, "inv", func() {
					err := set(v, "old")
					var se *StaleError
					if !errors.Is(err, ErrStale) || !errors.Is(err, ErrOperation) || !errors.As(err, &se) ||
						se.Stored["k"] != 5 || se.Offered["k"] != v {
						t.Errorf("Set version %d over 5: got %v, want ErrStale with stored 5, offered %d", v, err, v)
					}
				})
			}
			if got := s.Stats().Notifications; got != notified {
				t.Errorf("Notifications after refused writes: %d, want %d", got, notified)
			}
			if e := read(); e.Version != 5 || string(e.Value) != "v5" {
				t.Fatalf("after refused writes: version %d value %q, want 5 v5", e.Version, e.Value)
			}
			if err := set(math.MaxUint64, "max"); err != nil {
				t.Fatalf("Set with the largest version: %v", err)
			}
			if m, _ := next(); m != "0|k|2" {
				t.Fatalf("notification: got %q", m)
			}
			if e := read(); e.Version != math.MaxUint64 {
				t.Fatalf("version %d, want max (compared as unsigned 64-bit, not as a Lua double)", e.Version)
			}
			// 2^53+1 over 2^53: a double would see them equal.
			if err := s.Set(ctx, "big", Entry{Value: []byte("a"), Version: 1 << 53}); err != nil {
				t.Fatal(err)
			}
			if err := s.Set(ctx, "big", Entry{Value: []byte("b"), Version: 1<<53 + 1}); err != nil {
				t.Fatalf("Set 2^53+1 over 2^53: %v", err)
			}

			// A load's write-back over the versioned value it read keeps
			// the version (a later older write is still refused).
			cur := read()
			if ok, err := s.SetIf(ctx, "k", Entry{Value: []byte("loaded")}, cur.Raw, nf); !ok || err != nil {
				t.Fatalf("SetIf over the versioned value it read: %v %v, want written", ok, err)
			}
			if e := read(); string(e.Value) != "loaded" || e.Version != math.MaxUint64 {
				t.Fatalf("after SetIf: %q version %d, want loaded, version kept", e.Value, e.Version)
			}

			// Versioned delete: a tombstone with the version; older
			// deletes and sets are refused, a newer set goes through.
			if err := s.Set(ctx, "d", Entry{Value: []byte("v7"), Version: 7}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Delete(ctx, "d", nf, Version(6), Tombstone(time.Minute)); !errors.Is(err, ErrStale) {
				t.Fatalf("Delete version 6 over 7: %v, want ErrStale", err)
			}
			if e, _ := s.Get(ctx, "d"); string(e.Value) != "v7" {
				t.Fatalf("after a refused delete: %q, want v7", e.Value)
			}
			if n, err := s.DeleteMany(ctx, []string{"d"}, nf, Version(8), Tombstone(time.Minute)); n != 1 || err != nil {
				t.Fatalf("Delete version 8: %d %v", n, err)
			}
			tomb, err := s.Read(ctx, "d")
			if err != nil || !tomb.Tombstone || tomb.Version != 8 {
				t.Fatalf("tombstone: %+v %v, want a tombstone with version 8", tomb, err)
			}
			if err := s.Set(ctx, "d", Entry{Value: []byte("v8"), Version: 8}); !errors.Is(err, ErrStale) {
				t.Fatalf("Set version 8 over a version-8 tombstone: %v, want ErrStale", err)
			}
			if ok, _ := s.SetIf(ctx, "d", Entry{Value: []byte("loaded")}, tomb.Raw); !ok {
				t.Fatalf("SetIf over the versioned tombstone it read: not written")
			}
			if e, _ := s.Read(ctx, "d"); e.Version != 8 {
				t.Fatalf("SetIf over a versioned tombstone: version %d, want 8 kept", e.Version)
			}
			if err := s.Set(ctx, "d", Entry{Value: []byte("v9"), Version: 9}); err != nil {
				t.Fatalf("Set version 9 over the tombstone: %v", err)
			}
			if _, err := s.Delete(ctx, "d", Version(10)); err == nil {
				t.Fatalf("versioned Delete without a tombstone: want an error")
			}

			// Batches: each key is judged on its own.
			err = s.SetMany(ctx, map[string]Entry{
				"d": {Value: []byte("x"), Version: 3},  // refused: 9 stored
				"e": {Value: []byte("e1"), Version: 1}, // absent: written
				"f": {Value: []byte("f")},              // unversioned: written
			}, nf)
			var se *StaleError
			if !errors.As(err, &se) || len(se.Stored) != 1 || se.Stored["d"] != 9 {
				t.Fatalf("SetMany with one stale key: %v, want a StaleError for d only", err)
			}
			for k, want := range map[string]string{"d": "v9", "e": "e1", "f": "f"} {
				if e, err := s.Get(ctx, k); err != nil || string(e.Value) != want {
					t.Errorf("after SetMany: %s = %q %v, want %q", k, e.Value, err, want)
				}
			}
			if st := s.Stats(); st.StaleRefused != 6 {
				t.Errorf("StaleRefused %d, want 6", st.StaleRefused)
			}
		})
	}
}

// TestUnversionedWritesKeepVersion: an unversioned Set or Delete over a
// versioned value keeps the version (Redis remembers the highest version of
// a key while it lives), so a late write with an older version is still
// refused.
func TestUnversionedWritesKeepVersion(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			nf := Notify(testNotify("inv"))
			for _, tc := range []struct {
				name  string
				write func(key string) error
			}{
				{"delete", func(k string) error { _, err := s.Delete(ctx, k, nf, Tombstone(time.Minute)); return err }},
				{"set", func(k string) error { return s.Set(ctx, k, Entry{Value: []byte("plain"), TTL: time.Minute}, nf) }},
				{"set-no-notify", func(k string) error { return s.Set(ctx, k, Entry{Value: []byte("plain"), TTL: time.Minute}) }},
				{"mixed-batch", func(k string) error {
					return s.SetMany(ctx, map[string]Entry{k: {Value: []byte("plain")}, k + "-other": {Value: []byte("o"), Version: 1}}, nf)
				}},
			} {
				k := "k-" + tc.name
				if err := s.Set(ctx, k, Entry{Value: []byte("v5"), Version: 5, TTL: time.Minute}, nf); err != nil {
					t.Fatal(err)
				}
				if err := tc.write(k); err != nil {
					t.Fatalf("%s: unversioned write: %v", tc.name, err)
				}
				e, err := s.Read(ctx, k)
				if tc.name == "set-no-notify" {
					// A plain SET, no script: documented as forgetting the version.
					if err != nil || e.Version != 0 {
						t.Fatalf("%s: %+v %v, want an unversioned value", tc.name, e, err)
					}
					continue
				}
				if err != nil || e.Version != 5 {
					t.Fatalf("%s: after the unversioned write: %+v %v, want version 5 kept", tc.name, e, err)
				}
				if err := s.Set(ctx, k, Entry{Value: []byte("v4"), Version: 4}, nf); !errors.Is(err, ErrStale) {
					t.Errorf("%s: versioned write 4 after an unversioned write over 5: %v, want ErrStale", tc.name, err)
				}
				if err := s.Set(ctx, k, Entry{Value: []byte("v6"), Version: 6}, nf); err != nil {
					t.Errorf("%s: versioned write 6: %v", tc.name, err)
				}
			}
		})
	}
}
