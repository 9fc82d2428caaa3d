package l2

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// flagEntry builds an entry with the envelope flags named by bits:
// 1 negative, 2 metadata, 4 soft expiry, 8 hard expiry, 16 tombstone.
func flagEntry(bits int, val string, version uint64) Entry {
	e := Entry{Value: []byte(val), Version: version}
	if bits&1 != 0 {
		e.Negative = true
	}
	if bits&2 != 0 {
		e.Metadata = map[string]string{"m": val, "long-metadata-key": "x"}
	}
	if bits&4 != 0 {
		e.FreshFor = time.Minute
	}
	if bits&8 != 0 {
		e.TTL = 2 * time.Minute
	}
	if bits&16 != 0 {
		e.Tombstone = true
	}
	if bits&32 != 0 {
		e.RefreshAfter = 30 * time.Second
	}
	if bits&64 != 0 {
		e.Tags = []Tag{{Name: "t", Version: 3}, {Name: "a-longer-tag-" + val, Version: 1<<40 + 1}}
	}
	return e
}

// TestReviewVersionSurvivesEveryFlagCombination: for every combination of
// envelope flags on the stored versioned entry and on an unversioned write
// over it (a script "set", an unversioned key of a "vset" batch, a "tomb"),
// the Lua version()/inherit() helpers find the stored version and insert it
// at the right offset: the new envelope decodes with the new fields intact
// and the old version, and an older versioned write is still refused.
func TestReviewVersionSurvivesEveryFlagCombination(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	ctx := context.Background()
	nf := Notify(testNotify("inv"))
	const stored = uint64(1)<<40 + 7
	for old := 0; old < 128; old++ {
		for nw := 0; nw < 128; nw++ {
			for _, how := range []string{"set", "vset-mixed", "tomb"} {
				if how == "tomb" && nw != 0 {
					continue
				}
				k := fmt.Sprintf("k-%d-%d-%s", old, nw, how)
				if err := s.Set(ctx, k, flagEntry(old, "old", stored), nf); err != nil {
					t.Fatalf("%s: versioned Set: %v", k, err)
				}
				want := flagEntry(nw, "new", 0)
				var err error
				switch how {
				case "set":
					err = s.Set(ctx, k, want, nf)
				case "vset-mixed":
					err = s.SetMany(ctx, map[string]Entry{k: want, k + "-other": {Value: []byte("o"), Version: 3}}, nf)
				case "tomb":
					_, err = s.Delete(ctx, k, nf, Tombstone(time.Minute))
					want = Entry{Tombstone: true, TTL: time.Minute}
				}
				if err != nil {
					t.Fatalf("%s: unversioned write: %v", k, err)
				}
				e, err := s.Read(ctx, k)
				if err != nil || e.Corrupt {
					t.Fatalf("%s: Read after unversioned write: %v (corrupt %v)", k, err, e.Corrupt)
				}
				if e.Version != stored {
					t.Fatalf("%s: version %d after unversioned write, want the stored %d", k, e.Version, stored)
				}
				if e.Negative != want.Negative || e.Tombstone != want.Tombstone ||
					len(e.Metadata) != len(want.Metadata) || len(e.Tags) != len(want.Tags) || e.StaleAt.IsZero() != (want.FreshFor == 0) ||
					e.ExpiresAt.IsZero() != (want.TTL == 0) || e.RefreshAt.IsZero() != (want.RefreshAfter == 0) {
					t.Fatalf("%s: fields after inherit: %+v, want those of %+v", k, e, want)
				}
				if how != "tomb" && string(e.Value) != "new" {
					t.Fatalf("%s: value %q, want new", k, e.Value)
				}
				if want.Metadata != nil && e.Metadata["m"] != "new" {
					t.Fatalf("%s: metadata %v", k, e.Metadata)
				}
				if want.Tags != nil && (e.Tags[1] != want.Tags[1] || e.Tags[0] != want.Tags[0]) {
					t.Fatalf("%s: tags %v, want %v", k, e.Tags, want.Tags)
				}
				err = s.Set(ctx, k, Entry{Value: []byte("older"), Version: stored}, nf)
				if !errors.Is(err, ErrStale) {
					t.Fatalf("%s: versioned Set with the stored version after inherit: %v, want ErrStale", k, err)
				}
				if err := s.Set(ctx, k, Entry{Value: []byte("newer"), Version: stored + 1}, nf); err != nil {
					t.Fatalf("%s: newer versioned Set: %v", k, err)
				}
			}
		}
	}
}

// TestReviewClusterVersionedAndClear: on a Cluster, a versioned SetMany over
// many slots refuses exactly the keys whose stored version is as new, writes
// the others and publishes one message per slot it wrote in; Clear with
// NotifyKeys counts every removed key and publishes an invalidation naming
// each of them.
func TestReviewClusterVersionedAndClear(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	s := openStore(t, Config{Addrs: cl.Addrs(), KeyPrefix: "app:"})
	raw := rawClient(t, cl.Addrs(), true)
	nf := Notify(testNotify("inv"))
	items := map[string]Entry{}
	for i := 0; i < 200; i++ {
		items[fmt.Sprintf("k%d", i)] = Entry{Value: []byte("v5"), Version: 5, TTL: time.Minute}
	}
	if err := s.SetMany(ctx, items, nf); err != nil {
		t.Fatalf("versioned SetMany across slots: %v", err)
	}
	// Half the keys go to 9, the rest are offered 5 again.
	mixed := map[string]Entry{}
	for i := 0; i < 200; i++ {
		v := uint64(5)
		if i%2 == 0 {
			v = 9
		}
		mixed[fmt.Sprintf("k%d", i)] = Entry{Value: []byte(fmt.Sprint(v)), Version: v, TTL: time.Minute}
	}
	err := s.SetMany(ctx, mixed, nf)
	var se *StaleError
	if !errors.Is(err, ErrStale) || !errors.As(err, &se) || len(se.Stored) != 100 {
		t.Fatalf("mixed versioned SetMany: %v, want ErrStale naming 100 keys", err)
	}
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("k%d", i)
		e, err := s.Read(ctx, k)
		want := uint64(5)
		if i%2 == 0 {
			want = 9
		}
		if err != nil || e.Version != want {
			t.Fatalf("%s: version %d %v, want %d", k, e.Version, err, want)
		}
		if _, ok := se.Stored[k]; ok == (i%2 == 0) {
			t.Fatalf("%s: refused %v, want %v", k, ok, i%2 != 0)
		}
	}
	// Tombstones and plain values, then Clear: every key counted.
	if _, err := s.DeleteMany(ctx, []string{"k0", "k2", "k4"}, nf, Tombstone(time.Minute), Version(10)); err != nil {
		t.Fatalf("versioned DeleteMany across slots: %v", err)
	}
	next := subscribe(t, raw, "inv")
	n, err := s.Clear(ctx, NotifyKeys(testNotify("inv")))
	if err != nil || n != 200 {
		t.Fatalf("Clear with NotifyKeys on a cluster: removed %d %v, want 200", n, err)
	}
	seen := map[string]bool{}
	for len(seen) < 200 {
		m, ok := next()
		if !ok {
			t.Fatalf("Clear published invalidations for %d of 200 keys", len(seen))
		}
		var p int
		var rest string
		if _, err := fmt.Sscanf(m, "%d|%s", &p, &rest); err != nil {
			t.Fatalf("message %q: %v", m, err)
		}
		for _, k := range splitKeys(m) {
			seen[k] = true
		}
	}
	if left, _ := s.Keys(ctx, "*"); len(left) != 0 {
		t.Fatalf("keys left after Clear: %v", left)
	}
}

// splitKeys reads the keys of a testNotify message "p|k1,k2|seq".
func splitKeys(m string) []string {
	var keys []string
	start := -1
	for i := 0; i < len(m); i++ {
		if m[i] == '|' {
			if start < 0 {
				start = i + 1
				continue
			}
			part := m[start:i]
			from := 0
			for j := 0; j <= len(part); j++ {
				if j == len(part) || part[j] == ',' {
					if j > from {
						keys = append(keys, part[from:j])
					}
					from = j + 1
				}
			}
			return keys
		}
	}
	return keys
}

// TestReviewVersionedDeleteCount: Delete "reports whether it existed" and
// DeleteMany "returns how many existed", as the unversioned tombstone path
// does; a versioned delete reports every key it tombstoned instead.
func TestReviewVersionedDeleteCount(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	ctx := context.Background()
	if ok, err := s.Delete(ctx, "absent", Tombstone(time.Minute)); ok || err != nil {
		t.Fatalf("unversioned Delete of an absent key: %v %v, want false", ok, err)
	}
	if ok, err := s.Delete(ctx, "absent2", Tombstone(time.Minute), Version(3)); ok || err != nil {
		t.Errorf("versioned Delete of an absent key: %v %v, want false (it did not exist)", ok, err)
	}
	if err := s.Set(ctx, "here", Entry{Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.DeleteMany(ctx, []string{"here", "absent3"}, Tombstone(time.Minute), Version(4)); n != 1 || err != nil {
		t.Errorf("versioned DeleteMany of one present and one absent key: %d %v, want 1", n, err)
	}
}
