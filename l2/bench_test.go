package l2

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// Benchmarks against a real redis-server, with the raw go-redis baseline in
// the same run so ratios compare like with like:
//
//	go test -run '^$' -bench . -benchmem ./l2/
//
// The payload is 256 bytes; "decode" in the raw baseline is the []byte copy
// go-redis makes, which Store.Get reuses without copying again.
func benchServer(b *testing.B) (*Store, *redis.Client) {
	srv := redistest.StartServer(b)
	s := openStore(b, Config{Addrs: []string{srv.Addr()}, KeyPrefix: "b:"})
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1})
	b.Cleanup(func() { _ = raw.Close() })
	return s, raw
}

var payload = make([]byte, 256)

func BenchmarkGet(b *testing.B) {
	s, raw := benchServer(b)
	ctx := context.Background()
	if err := s.Set(ctx, "key", Entry{Value: payload, TTL: time.Hour}); err != nil {
		b.Fatal(err)
	}
	raw.Set(ctx, "raw:key", payload, time.Hour)
	b.Run("raw-go-redis-GET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			v, err := raw.Get(ctx, "raw:key").Bytes()
			if err != nil || len(v) != len(payload) {
				b.Fatal(err)
			}
		}
	})
	// paired alternates the two in one loop, so machine noise hits both
	// alike; x-raw is Store.Get's time over raw GET's.
	b.Run("paired", func(b *testing.B) {
		var rawNS, storeNS time.Duration
		for b.Loop() {
			t0 := time.Now()
			if _, err := raw.Get(ctx, "raw:key").Bytes(); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := s.Get(ctx, "key"); err != nil {
				b.Fatal(err)
			}
			rawNS += t1.Sub(t0)
			storeNS += time.Since(t1)
		}
		b.ReportMetric(float64(storeNS)/float64(rawNS), "x-raw")
	})
	b.Run("Store.Get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e, err := s.Get(ctx, "key")
			if err != nil || len(e.Value) != len(payload) {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkGetMany(b *testing.B) {
	s, raw := benchServer(b)
	ctx := context.Background()
	items := map[string]Entry{}
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
		items[keys[i]] = Entry{Value: payload, TTL: time.Hour}
	}
	if err := s.SetMany(ctx, items); err != nil {
		b.Fatal(err)
	}
	raw.Set(ctx, "raw:key", payload, time.Hour)
	b.Run("raw-go-redis-GET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := raw.Get(ctx, "raw:key").Bytes(); err != nil {
				b.Fatal(err)
			}
		}
	})
	rawKeys := make([]string, len(keys))
	for i, k := range keys {
		rawKeys[i] = "b:" + k
	}
	b.Run("raw-go-redis-MGET-100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if vals, err := raw.MGet(ctx, rawKeys...).Result(); err != nil || len(vals) != 100 {
				b.Fatal(err)
			}
		}
	})
	b.Run("Store.GetMany-100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m, err := s.GetMany(ctx, keys)
			if err != nil || len(m) != 100 {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSet(b *testing.B) {
	s, raw := benchServer(b)
	ctx := context.Background()
	b.Run("raw-go-redis-SET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := raw.Set(ctx, "raw:key", payload, time.Hour).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Store.Set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Set(ctx, "key", Entry{Value: payload, TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Store.Set+Notify", func(b *testing.B) {
		nf := Notify(testNotify("bench"))
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Set(ctx, "key", Entry{Value: payload, TTL: time.Hour}, nf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
