package l2

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

// TestClaim checks, on each backend, that of many racing claimants exactly
// one gets a key's claim, that it lives in the claim key with the holder's
// token and the ttl, that Release by another token leaves it, that Release
// with keep shortens it, and that Release with zero drops it so the next
// claimant gets it.
func TestClaim(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, raw := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			var won atomic.Int32
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ok, err := s.Claim(ctx, "k", "tok"+string(rune('a'+i)), 10*time.Second)
					if err != nil {
						t.Errorf("Claim: %v", err)
					}
					if ok {
						won.Add(1)
					}
				}()
			}
			wg.Wait()
			if won.Load() != 1 {
				t.Fatalf("%d claimants won, want 1", won.Load())
			}
			ck := wire.ClaimKey("app:", "k")
			holder, err := raw.Get(ctx, ck).Result()
			if err != nil {
				t.Fatalf("GET %s: %v", ck, err)
			}
			if pttl := raw.PTTL(ctx, ck).Val(); pttl <= 5*time.Second || pttl > 10*time.Second {
				t.Fatalf("claim PTTL %v, want about 10s", pttl)
			}
			if err := s.Release(ctx, "k", "someone-else", 0); err != nil {
				t.Fatalf("Release by a non-holder: %v", err)
			}
			if raw.Exists(ctx, ck).Val() != 1 {
				t.Fatal("a non-holder's Release dropped the claim")
			}
			if err := s.Release(ctx, "k", holder, 2*time.Second); err != nil {
				t.Fatalf("Release with keep: %v", err)
			}
			if pttl := raw.PTTL(ctx, ck).Val(); pttl <= 0 || pttl > 2*time.Second {
				t.Fatalf("claim PTTL after Release(keep 2s) = %v", pttl)
			}
			if ok, _ := s.Claim(ctx, "k", "late", time.Second); ok {
				t.Fatal("claimed while the kept claim lives")
			}
			if err := s.Release(ctx, "k", holder, 0); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if raw.Exists(ctx, ck).Val() != 0 {
				t.Fatal("Release(0) left the claim")
			}
			if ok, err := s.Claim(ctx, "k", "next", time.Second); !ok || err != nil {
				t.Fatalf("Claim after Release = %v, %v; want true", ok, err)
			}
			if n, _ := s.Keys(ctx, "*"); len(n) != 0 {
				t.Fatalf("Keys sees claim keys: %v", n)
			}
		})
	}
}

// TestClaimErrors checks the refused ttl and a closed store.
func TestClaimErrors(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "app:"})
	if _, err := s.Claim(context.Background(), "k", "t", 0); err == nil {
		t.Fatal("Claim with ttl 0: nil error")
	}
	s.Close()
	if _, err := s.Claim(context.Background(), "k", "t", time.Second); err == nil {
		t.Fatal("Claim after Close: nil error")
	}
	if err := s.Release(context.Background(), "k", "t", 0); err == nil {
		t.Fatal("Release after Close: nil error")
	}
}

// TestClaimMany checks, on each backend, that a pipelined claim of several
// keys takes exactly the free ones, and that ReleaseMany renews and drops
// only the token's own claims.
func TestClaimMany(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, raw := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			if ok, _ := s.Claim(ctx, "b", "other", time.Minute); !ok {
				t.Fatal("precondition: Claim(b)")
			}
			got, err := s.ClaimMany(ctx, []string{"a", "b", "c"}, "mine", 10*time.Second)
			if err != nil || !got["a"] || got["b"] || !got["c"] {
				t.Fatalf("ClaimMany = %v, %v; want a and c", got, err)
			}
			if err := s.ReleaseMany(ctx, []string{"a", "b"}, "mine", 2*time.Second); err != nil {
				t.Fatal(err)
			}
			if pttl := raw.PTTL(ctx, wire.ClaimKey("app:", "a")).Val(); pttl <= 0 || pttl > 2*time.Second {
				t.Fatalf("renewed claim PTTL %v, want at most 2s", pttl)
			}
			if pttl := raw.PTTL(ctx, wire.ClaimKey("app:", "b")).Val(); pttl <= 30*time.Second {
				t.Fatalf("another holder's claim PTTL %v: ReleaseMany touched it", pttl)
			}
			if err := s.ReleaseMany(ctx, []string{"a", "b", "c"}, "mine", 0); err != nil {
				t.Fatal(err)
			}
			for k, want := range map[string]int64{"a": 0, "b": 1, "c": 0} {
				if n := raw.Exists(ctx, wire.ClaimKey("app:", k)).Val(); n != want {
					t.Errorf("claim of %s exists %d after ReleaseMany, want %d", k, n, want)
				}
			}
			if _, err := s.ClaimMany(ctx, []string{"a"}, "t", 0); err == nil {
				t.Fatal("ClaimMany with ttl 0: nil error")
			}
		})
	}
}
