package tiered

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/l2"
)

// errDown is what every command gets from a client behind downHook: the
// same error every time, so that a message can be pinned whole.
var errDown = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

// downHook fails every command and pipeline of a client with errDown while
// down is set: Redis unreachable, as a connection refused says it. The
// client's pub/sub connection is not affected.
type downHook struct{ down *atomic.Bool }

func (h downHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h downHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errDown)
			return errDown
		}
		return next(ctx, cmd)
	}
}

func (h downHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() {
			for _, c := range cmds {
				c.SetErr(errDown)
			}
			return errDown
		}
		return next(ctx, cmds)
	}
}

// testCodec is a string Codec whose Marshal and Unmarshal fail (with
// marshalErr, unmarshalErr) or panic (with marshalPanic, unmarshalPanic)
// when those are set.
type testCodec struct {
	marshalErr, unmarshalErr     error
	marshalPanic, unmarshalPanic any
}

func (c testCodec) Marshal(v string) ([]byte, error) {
	if c.marshalPanic != nil {
		panic(c.marshalPanic)
	}
	if c.marshalErr != nil {
		return nil, c.marshalErr
	}
	return []byte(v), nil
}

func (c testCodec) Unmarshal(b []byte) (string, error) {
	if c.unmarshalPanic != nil {
		panic(c.unmarshalPanic)
	}
	if c.unmarshalErr != nil {
		return "", c.unmarshalErr
	}
	return string(b), nil
}

var quoted = regexp.MustCompile(`"[^"]*"`)

// checkSaidOnce fails if msg says a package prefix, a class or a quoted key
// more than once: each layer adds its context once.
func checkSaidOnce(t *testing.T, msg string) {
	t.Helper()
	for _, s := range []string{"tiered: ", "l2: ", "invalidation: ", "redis unavailable", "connection error", "stale version", "panicked"} {
		if n := strings.Count(msg, s); n > 1 {
			t.Errorf("%q says %q %d times", msg, s, n)
		}
	}
	seen := map[string]bool{}
	for _, k := range quoted.FindAllString(msg, -1) {
		if seen[k] {
			t.Errorf("%q names key %s twice", msg, k)
		}
		seen[k] = true
	}
}

// TestErrorMessages pins the message of every main failure of a Cache, and
// checks that each layer adds its context once (no prefix, class or key
// said twice) while errors.Is still finds every sentinel and errors.As the
// typed errors.
func TestErrorMessages(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	mr := miniredis.RunT(t)
	var down atomic.Bool
	downClient := newClient(t, mr.Addr())
	downClient.AddHook(downHook{&down})

	up := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "up", MaxValueSize: 100})
	gone := newCache(t, Config[string]{Redis: downClient, Namespace: "gone", BreakerFailures: -1})
	open := newCache(t, Config[string]{Redis: downClient, Namespace: "open", BreakerFailures: 1, BreakerCooldown: time.Hour})
	local := newCache(t, Config[string]{Namespace: "local"})
	badEnc := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "enc", Codec: testCodec{marshalErr: errors.New("codec says no")}})
	panicEnc := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "penc", Codec: testCodec{marshalPanic: boom}})
	for _, c := range []*Cache[string]{up, local} {
		for _, k := range []string{"k", "j"} {
			if err := c.Set(ctx, k, "v5", WithVersion(5)); err != nil {
				t.Fatalf("Set version 5: %v", err)
			}
		}
	}
	down.Store(true)
	if _, err := open.Get(ctx, "opener"); !errors.Is(err, ErrUnavailable) { // one failure opens the breaker
		t.Fatalf("Get with Redis down: %v, want ErrUnavailable", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	get := func(c *Cache[string], key string) func() error {
		return func() error { _, err := c.Get(ctx, key); return err }
	}
	load := func(c *Cache[string], key string, l Loader[string]) func() error {
		return func() error { _, err := c.GetOrLoad(ctx, key, l); return err }
	}
	failing := func(context.Context, string) (string, error) { return "", boom }
	panicking := func(context.Context, string) (string, error) { panic(boom) }
	isL2Error := func(op, key string) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			var le *l2.Error
			if !errors.As(err, &le) || le.Op != op || le.Key != key {
				t.Errorf("errors.As *l2.Error: %+v, want Op %q Key %q", le, op, key)
			}
		}
	}
	isPanic := func(op, key string) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			var pe *PanicError
			if !errors.As(err, &pe) || pe.Op != op || pe.Key != key || pe.Value != boom || len(pe.Stack) == 0 {
				t.Errorf("errors.As *PanicError: %+v, want Op %q Key %q Value boom and a stack", pe, op, key)
			}
		}
	}
	isStale := func(t *testing.T, err error) {
		var se *l2.StaleError
		if !errors.As(err, &se) || se.Stored["k"] != 5 {
			t.Errorf("errors.As *l2.StaleError: %+v, want key k stored at 5", se)
		}
	}

	for _, tc := range []struct {
		name  string
		call  func() error
		want  string
		is    []error
		check func(*testing.T, error)
	}{
		// Redis down: the l2 error names the operation and keys; tiered
		// adds its class.
		{"down/Set", func() error { return gone.Set(ctx, "k", "v") },
			`tiered: redis unavailable: l2: set "k": connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection, syscall.ECONNREFUSED}, isL2Error("set", "k")},
		{"down/SetMany", func() error { return gone.SetMany(ctx, map[string]string{"b": "2", "a": "1"}) },
			`tiered: redis unavailable: l2: mset 2 keys ("a", "b"): connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection}, nil},
		{"down/Delete", func() error { return gone.Delete(ctx, "k") },
			`tiered: redis unavailable: l2: del "k": connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection}, isL2Error("del", "k")},
		{"down/DeleteMany", func() error { return gone.Delete(ctx, "a", "b", "c", "d") },
			`tiered: redis unavailable: l2: mdel 4 keys ("a", "b", "c", ...): connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection}, nil},
		{"down/Clear", func() error { return gone.Clear(ctx) },
			`tiered: clear: redis unavailable: invalidation: publish: dial tcp: connection refused`,
			[]error{ErrUnavailable, syscall.ECONNREFUSED}, nil},
		{"down/Get", get(gone, "k"),
			`tiered: redis unavailable: l2: get "k": connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection}, isL2Error("get", "k")},
		{"down/GetMany", func() error { _, err := gone.GetMany(ctx, []string{"a", "b"}); return err },
			`tiered: redis unavailable: l2: mget 2 keys ("a", "b"): connection error: dial tcp: connection refused`,
			[]error{ErrUnavailable, l2.ErrConnection}, nil},
		{"down/GetOrLoad/loaded", load(gone, "k", func(context.Context, string) (string, error) { return "v", nil }),
			``, nil, nil},
		{"down/GetOrLoad/loader error", load(gone, "k2", failing),
			`tiered: load "k2": boom`, []error{boom}, nil},

		// The breaker skipped Redis: no l2 error, tiered names the call.
		{"breaker/Set", func() error { return open.Set(ctx, "k", "v") },
			`tiered: set "k": redis unavailable (circuit breaker open)`, []error{ErrUnavailable}, nil},
		{"breaker/Get", get(open, "k"),
			`tiered: get "k": redis unavailable (circuit breaker open)`, []error{ErrUnavailable}, nil},
		{"caller ctx/Set", func() error { return up.Set(cancelled, "k", "v") },
			`tiered: set "k": context canceled`, []error{context.Canceled}, nil},

		{"too large/Set", func() error { return up.Set(ctx, "big", strings.Repeat("x", 200)) },
			`tiered: l2: set "big": value too large: encoded 211 bytes (+8 kept free for a version), limit 100 (Config.MaxValueSize)`,
			[]error{l2.ErrTooLarge, l2.ErrOperation}, isL2Error("set", "big")},

		// A refused version: the l2 stale error names the key it refused.
		{"stale/Set", func() error { return up.Set(ctx, "k", "v3", WithVersion(3)) },
			`tiered: l2: set: stale version: key "k": version 3 is not newer than the stored version 5`,
			[]error{ErrStale, l2.ErrStale, l2.ErrOperation}, isStale},
		{"stale/SetMany", func() error { return up.SetMany(ctx, map[string]string{"k": "v4", "j": "v4"}, WithVersion(4)) },
			`tiered: l2: mset: stale version: key "j": version 4 is not newer than the stored version 5 (and 1 more key refused)`,
			[]error{ErrStale, l2.ErrStale}, isStale},
		{"stale/DeleteMany", func() error { return up.DeleteMany(ctx, []string{"k"}, WithVersion(2)) },
			`tiered: l2: del: stale version: key "k": version 2 is not newer than the stored version 5`,
			[]error{ErrStale, l2.ErrStale}, isStale},
		{"stale/L1-only Set", func() error { return local.Set(ctx, "k", "v3", WithVersion(3)) },
			`tiered: set: stale version: key "k": version 3 is not newer than the stored version 5`,
			[]error{ErrStale, l2.ErrStale}, isStale},

		{"codec/Marshal error", func() error { return badEnc.Set(ctx, "k", "v") },
			`tiered: set "k": encode: codec says no`, nil, nil},
		{"codec/Marshal panic", func() error { return panicEnc.Set(ctx, "k", "v") },
			`tiered: set "k": codec panicked in Marshal: boom`, []error{boom}, isPanic("encode", "")},

		{"loader/error", load(up, "l", failing), `tiered: load "l": boom`, []error{boom}, nil},
		{"loader/panic", load(up, "p", panicking), `tiered: load "p" panicked: boom`, []error{boom}, isPanic("load", "p")},
		{"loader/batch error", func() error {
			_, err := up.GetManyOrLoad(ctx, []string{"y", "x"}, func(context.Context, []string) (map[string]string, error) { return nil, boom })
			return err
		}, `tiered: load 2 keys ("x", "y"): boom`, []error{boom}, nil},
		{"loader/batch panic", func() error {
			_, err := up.GetManyOrLoad(ctx, []string{"y", "z"}, func(context.Context, []string) (map[string]string, error) { panic(boom) })
			return err
		}, `tiered: batch load panicked: boom`, []error{boom}, isPanic("load", "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("error %q, want none", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("message\n got %s\nwant %s", got, tc.want)
			}
			checkSaidOnce(t, err.Error())
			for _, target := range tc.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%q, %v) is false", err, target)
				}
			}
			if tc.check != nil {
				tc.check(t, err)
			}
		})
	}
}

// TestCodecPanicKeepsStack: a codec that panics in Marshal fails the Set
// with a *PanicError that keeps the panic value and the stack of the
// panicking goroutine (naming the codec's method), and a panic in Unmarshal
// makes the value a counted miss that is reloaded.
func TestCodecPanicKeepsStack(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "cp", Codec: testCodec{marshalPanic: boom}})
	err := c.Set(ctx, "k", "v")
	var pe *PanicError
	if !errors.As(err, &pe) || !errors.Is(err, boom) {
		t.Fatalf("Set: %v, want a *PanicError wrapping boom", err)
	}
	if !strings.Contains(string(pe.Stack), "testCodec.Marshal") {
		t.Fatalf("stack does not name testCodec.Marshal:\n%s", pe.Stack)
	}

	w := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "cp2"})
	r := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "cp2", Codec: testCodec{unmarshalPanic: "bad bytes"}})
	if err := w.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	v, err := r.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "loaded", nil })
	if err != nil || v != "loaded" {
		t.Fatalf("GetOrLoad over a value whose Unmarshal panics: %q, %v; want the loaded value", v, err)
	}
	if n := r.Stats().Loads.DecodeErrors; n != 1 {
		t.Fatalf("DecodeErrors = %d, want 1", n)
	}
	_, err = safeUnmarshal[string](testCodec{unmarshalPanic: boom}, []byte("x"))
	if !errors.As(err, &pe) || pe.Op != "decode" || !errors.Is(err, boom) || !strings.Contains(string(pe.Stack), "testCodec.Unmarshal") ||
		err.Error() != "tiered: codec panicked in Unmarshal: boom" {
		t.Fatalf("safeUnmarshal of a panicking codec: %v (%+v)", err, pe)
	}
	_, err = safeUnmarshal[string](testCodec{unmarshalErr: boom}, []byte("x"))
	if err == nil || err.Error() != "decode: boom" || !errors.Is(err, boom) {
		t.Fatalf("safeUnmarshal of a failing codec: %v, want \"decode: boom\"", err)
	}
}
