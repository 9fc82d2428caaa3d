package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// trapCodec stores strings as they are; a stored "goexit" makes Unmarshal
// call runtime.Goexit, a stored "panic" makes it panic.
type trapCodec struct{}

func (trapCodec) Marshal(v string) ([]byte, error) { return []byte(v), nil }

func (trapCodec) Unmarshal(b []byte) (string, error) {
	switch string(b) {
	case "goexit":
		runtime.Goexit()
	case "panic":
		panic("trapCodec: stored panic")
	}
	return string(b), nil
}

// TestKeysNeverCross hammers one Cache with every read and write at once:
// single-key reads led inline (context.Background) and under DoChan
// (cancellable ctx, sometimes cancelled mid-wait), batches that join and are
// joined, invalidations and drop-alls that forget running flights, writes,
// loaders and batch loaders that panic or call runtime.Goexit, and a codec
// that does both on the caller's goroutine. Every value it ever hands out
// for key k is the only one ever stored or loaded for k, "v:"+k: a flight,
// a batch's working memory or a result reused while something still
// referred to it would hand one caller another key's value.
func TestKeysNeverCross(t *testing.T) {
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "cross", Codec: trapCodec{},
		NegativeTTL: time.Second, BreakerFailures: NoBreaker})
	keys := make([]string, 24)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
	}
	want := func(k string) string { return "v:" + k }
	// A loader's outcome depends on the key and a draw: a value, not
	// found, an error, a panic, or runtime.Goexit.
	misbehave := func(k string) (string, bool, error) {
		switch rand.IntN(40) {
		case 0:
			panic("loader panic for " + k)
		case 1:
			runtime.Goexit()
		case 2:
			return "", false, errors.New("loader failed")
		case 3:
			return "", false, ErrNotFound
		}
		return want(k), true, nil
	}
	load := func(_ context.Context, k string) (string, error) {
		v, ok, err := misbehave(k)
		if err == nil && !ok {
			err = ErrNotFound
		}
		return v, err
	}
	loadMany := func(_ context.Context, ks []string) (map[string]string, error) {
		m := make(map[string]string, len(ks))
		for _, k := range ks {
			v, ok, err := misbehave(k)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return nil, err
			}
			if ok {
				m[k] = v
			}
		}
		return m, nil
	}
	var bad atomic.Int64
	var mu sync.Mutex
	var firstBad string
	check := func(op, k, v string) {
		if v != want(k) {
			bad.Add(1)
			mu.Lock()
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s(%q) = %q, want %q", op, k, v, want(k))
			}
			mu.Unlock()
		}
	}
	pick := func() []string {
		n := 1 + rand.IntN(6)
		ks := make([]string, n)
		for i := range ks {
			ks[i] = keys[rand.IntN(len(keys))]
		}
		return ks
	}
	ops := []func(ctx context.Context){
		func(ctx context.Context) {
			k := keys[rand.IntN(len(keys))]
			if v, err := c.GetOrLoad(ctx, k, load); err == nil {
				check("GetOrLoad", k, v)
			}
		},
		func(ctx context.Context) {
			k := keys[rand.IntN(len(keys))]
			if v, err := c.Get(ctx, k); err == nil {
				check("Get", k, v)
			}
		},
		func(ctx context.Context) {
			m, _ := c.GetMany(ctx, pick())
			for k, v := range m {
				check("GetMany", k, v)
			}
		},
		func(ctx context.Context) {
			m, _ := c.GetManyOrLoad(ctx, pick(), loadMany)
			for k, v := range m {
				check("GetManyOrLoad", k, v)
			}
		},
		func(ctx context.Context) {
			k := keys[rand.IntN(len(keys))]
			switch rand.IntN(8) {
			case 0:
				_ = c.Delete(ctx, k)
			case 1:
				c.invalidateLocal(k)
			case 2:
				c.dropAll()
			case 3:
				// Poison the key: whoever decodes it next exits or
				// panics inside the codec.
				trap := "goexit"
				if rand.IntN(2) == 0 {
					trap = "panic"
				}
				_ = c.Set(ctx, k, trap)
				c.invalidateLocal(k)
			default:
				_ = c.Set(ctx, k, want(k))
			}
		},
	}
	const workers, rounds = 16, 400
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				ctx := context.Background()
				var cancel context.CancelFunc = func() {}
				switch rand.IntN(4) {
				case 0:
					ctx, cancel = context.WithCancel(ctx)
				case 1:
					ctx = context.WithValue(ctx, trapCodec{}, i)
				}
				op := ops[rand.IntN(len(ops))]
				done := make(chan struct{})
				// Each op on a goroutine of its own: a Goexit in the
				// codec ends the caller's goroutine on the inline path.
				go func() {
					defer close(done)
					op(ctx)
				}()
				if rand.IntN(8) == 0 {
					cancel()
				}
				<-done
				cancel()
			}
		}()
	}
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d reads returned another key's value; first: %s", n, firstBad)
	}
}
