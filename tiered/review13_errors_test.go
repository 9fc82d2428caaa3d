package tiered

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/l2"
)

// TestClearRefusedByRedisIsNotUnavailable: a Clear that Redis answers with
// an error (here: the sequence key holds garbage, so the wire frame refuses
// to publish) is an answer from Redis, as the same refusal of a Set is: it
// wraps no ErrUnavailable and says no "redis unavailable".
func TestClearRefusedByRedisIsNotUnavailable(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "cr"})
	if err := mr.Set(wire.SeqKey("cr", 0), "garbage"); err != nil {
		t.Fatal(err)
	}
	setErr := c.Set(ctx, "k", "v")
	if setErr == nil || errors.Is(setErr, ErrUnavailable) || !errors.Is(setErr, l2.ErrOperation) {
		t.Fatalf("Set over a corrupt sequence key: %v, want an l2.ErrOperation that is not ErrUnavailable", setErr)
	}
	err := c.Clear(ctx)
	if err == nil {
		t.Fatal("Clear over a corrupt sequence key: no error")
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("Clear refused by Redis: %v; want an answer from Redis, not ErrUnavailable (Set's refusal: %v)", err, setErr)
	}
	checkSaidOnce(t, err.Error())
}

// TestReadErrorsNameTheirKeys: every error a read returns says which call
// and keys it is about, once, like the writes' errors do: a read left by
// its caller's ctx (the error still errors.Is the ctx's error), and a load
// that overran LoadTimeout.
func TestReadErrorsNameTheirKeys(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "rk", LoadTimeout: 50 * time.Millisecond})
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	slow := func(context.Context, string) (string, error) { <-gate; return "", nil }
	slowBatch := func(context.Context, []string) (map[string]string, error) { <-gate; return nil, nil }

	for _, tc := range []struct {
		name string
		call func(ctx context.Context) error
		want string
	}{
		{"GetOrLoad", func(ctx context.Context) error { _, err := c.GetOrLoad(ctx, "a", slow); return err }, `tiered: load "a": `},
		{"GetManyOrLoad", func(ctx context.Context) error {
			_, err := c.GetManyOrLoad(ctx, []string{"c", "b"}, slowBatch)
			return err
		}, `tiered: load 2 keys ("b", "c"): `},
	} {
		t.Run(tc.name+"/caller ctx", func(t *testing.T) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
			defer cancel()
			err := tc.call(cctx)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("read left by its caller's ctx: %v; want an error starting %q that errors.Is context.DeadlineExceeded", err, tc.want)
			} else {
				checkSaidOnce(t, err.Error())
			}
		})
		t.Run(tc.name+"/overrun", func(t *testing.T) {
			err := tc.call(ctx)
			if !errors.Is(err, errLoadOverran) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("load overran LoadTimeout: %v; want an error starting %q that errors.Is errLoadOverran", err, tc.want)
			} else {
				checkSaidOnce(t, err.Error())
			}
		})
	}
}
