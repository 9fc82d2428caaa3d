package l2

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestScriptShapesPerKeyArgs: every write script, run over several
// keys in one call, gives each key its own value and its own TTL (a wrong
// ARGV index would give a key its neighbour's value, TTL or expected bytes),
// publishes once when it wrote, and publishes nothing when it wrote nothing.
func TestScriptShapesPerKeyArgs(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, raw := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			nf := Notify(testNotify("inv"))
			keys := []string{"a", "b", "c", "d"}
			ttl := func(i int) time.Duration { return time.Duration(i+1) * 100 * time.Second }
			check := func(t *testing.T, shape string, want func(i int) (string, time.Duration)) {
				t.Helper()
				for i, k := range keys {
					v, d := want(i)
					e, err := s.Read(ctx, k)
					if err != nil {
						t.Fatalf("%s: Read(%s): %v", shape, k, err)
					}
					if got := string(e.Value); v != "" && got != v {
						t.Errorf("%s: %s = %q, want %q", shape, k, got, v)
					}
					pttl := raw.PTTL(ctx, "app:"+k).Val()
					if pttl > d || pttl < d-5*time.Second {
						t.Errorf("%s: PTTL(%s) = %v, want about %v", shape, k, pttl, d)
					}
				}
			}
			entries := func(tag string, version uint64) map[string]Entry {
				m := map[string]Entry{}
				for i, k := range keys {
					m[k] = Entry{Value: []byte(fmt.Sprintf("%s-%s", tag, k)), TTL: ttl(i), Version: version}
				}
				return m
			}
			next := subscribe(t, raw, "inv")
			expectOne := func(t *testing.T, shape string) {
				t.Helper()
				if _, ok := next(); !ok {
					t.Fatalf("%s: no notification", shape)
				}
			}

			// setScript
			if err := s.SetMany(ctx, entries("set", 0), nf); err != nil {
				t.Fatal(err)
			}
			expectOne(t, "set")
			check(t, "set", func(i int) (string, time.Duration) { return "set-" + keys[i], ttl(i) })

			// casScript: each key's expected bytes are its own.
			old := map[string][]byte{}
			for _, k := range keys {
				e, _ := s.Read(ctx, k)
				old[k] = e.Raw
			}
			cas := entries("cas", 0)
			w, err := s.SetManyIf(ctx, cas, old, nf)
			if err != nil || len(w) != len(keys) {
				t.Fatalf("cas over each key's own bytes: written %v, %v; want all", w, err)
			}
			expectOne(t, "cas")
			check(t, "cas", func(i int) (string, time.Duration) { return "cas-" + keys[i], ttl(i) })
			// A cas that matches no key writes nothing and publishes nothing.
			noMessage(t, raw, "inv", func() {
				w, err := s.SetManyIf(ctx, entries("late", 0), old, nf)
				if err != nil || len(w) != 0 {
					t.Errorf("cas over outdated bytes: written %v, %v; want none", w, err)
				}
			})

			// vsetScript: versioned, then all refused (no publish).
			if err := s.SetMany(ctx, entries("vset", 7), nf); err != nil {
				t.Fatal(err)
			}
			expectOne(t, "vset")
			check(t, "vset", func(i int) (string, time.Duration) { return "vset-" + keys[i], ttl(i) })
			for _, k := range keys {
				if e, _ := s.Read(ctx, k); e.Version != 7 {
					t.Errorf("vset: %s version %d, want 7", k, e.Version)
				}
			}
			noMessage(t, raw, "inv", func() {
				if err := s.SetMany(ctx, entries("old", 6), nf); err == nil {
					t.Errorf("vset of an older version: no error")
				}
			})

			// tombScript with distinct TTLs is not per key (one tombstone TTL);
			// vtombScript: all refused publishes nothing.
			noMessage(t, raw, "inv", func() {
				if _, err := s.DeleteMany(ctx, keys, nf, Version(5), Tombstone(time.Minute)); err == nil {
					t.Errorf("versioned delete below the stored version: no error")
				}
			})
			n, err := s.DeleteMany(ctx, keys, nf, Version(9), Tombstone(time.Minute))
			if err != nil || n != int64(len(keys)) {
				t.Fatalf("versioned delete: %d %v", n, err)
			}
			expectOne(t, "vtomb")
			for i, k := range keys {
				e, err := s.Read(ctx, k)
				if err != nil || !e.Tombstone || e.Version != 9 {
					t.Errorf("vtomb: %s = %+v %v, want a version-9 tombstone", k, e, err)
				}
				// outlive: a tombstone lives at least as long as the value it replaced.
				if pttl := raw.PTTL(ctx, "app:"+k).Val(); pttl < ttl(i)-5*time.Second {
					t.Errorf("vtomb: PTTL(%s) = %v, want at least the replaced value's %v", k, pttl, ttl(i))
				}
			}
		})
	}
}
