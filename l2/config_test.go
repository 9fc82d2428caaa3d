package l2

import (
	"context"
	"errors"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestConfigOffSettings: zero MaxRetries is one retry, larger values count
// as one, and NoRetries (or any negative value) is none (go-redis is given
// -1 and keeps 0); NoValueSizeLimit lifts the bound that the default
// MaxValueSize enforces, on write and on read.
func TestConfigOffSettings(t *testing.T) {
	mr := miniredis.RunT(t)
	for _, tc := range []struct{ in, want int }{{0, 1}, {1, 1}, {5, 1}, {NoRetries, 0}, {-3, 0}} {
		s, err := Open(context.Background(), Config{Addrs: []string{mr.Addr()}, MaxRetries: tc.in})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Client().(*redis.Client).Options().MaxRetries; got != tc.want {
			t.Errorf("MaxRetries %d: the client retries %d times, want %d", tc.in, got, tc.want)
		}
		_ = s.Close()
	}

	ctx := context.Background()
	big := Entry{Value: make([]byte, DefaultMaxValueSize+1)}
	bounded := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "size:"})
	if err := bounded.Set(ctx, "big", big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Set of %d bytes with the default MaxValueSize: %v, want ErrTooLarge", len(big.Value), err)
	}
	unbounded := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "size:", MaxValueSize: NoValueSizeLimit})
	if err := unbounded.Set(ctx, "big", big); err != nil {
		t.Fatalf("Set of %d bytes with NoValueSizeLimit: %v", len(big.Value), err)
	}
	if e, err := unbounded.Get(ctx, "big"); err != nil || len(e.Value) != len(big.Value) {
		t.Errorf("Get with NoValueSizeLimit: %d bytes, %v; want %d bytes", len(e.Value), err, len(big.Value))
	}
	if _, err := bounded.Get(ctx, "big"); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Get of the big value with the default MaxValueSize: %v, want ErrTooLarge", err)
	}
}
