package l2

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/alicebob/miniredis/v2"
)

// TestErrorMessages pins the messages of a Store's errors: "l2: " once,
// then the operation and its key (or a batch's size and first keys), the
// kind, and the cause without a second "l2: "; and errors.Is and errors.As
// still reach every sentinel and type.
func TestErrorMessages(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	s := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "app:", MaxValueSize: 64})
	mr.Set("app:bad", `{"json":"not an envelope"}`)
	mr.Set("app:trunc", string([]byte{envMagic, envVersion, flagSoft | flagHard, 1, 2}))
	if err := s.SetMany(ctx, map[string]Entry{"k": {Value: []byte("v"), Version: 5}, "j": {Value: []byte("v"), Version: 5}}); err != nil {
		t.Fatal(err)
	}
	closed := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "app:"})
	_ = closed.Close()

	for _, tc := range []struct {
		name string
		call func() error
		want string
		is   []error
		op   string
		key  string
		keys []string
	}{
		{"corrupt/Get", func() error { _, err := s.Get(ctx, "bad"); return err },
			`l2: decode "bad": corrupt value: magic byte 0x7b, want 0xc7 (written by another program?)`,
			[]error{ErrCorrupt, ErrOperation}, "decode", "bad", nil},
		{"corrupt/truncated", func() error { _, err := s.Get(ctx, "trunc"); return err },
			`l2: decode "trunc": corrupt value: truncated soft expiry`,
			[]error{ErrCorrupt, ErrOperation}, "decode", "trunc", nil},
		{"too large/Set", func() error { return s.Set(ctx, "big", Entry{Value: make([]byte, 100)}) },
			`l2: set "big": value too large: encoded 103 bytes (+8 kept free for a version), limit 64 (Config.MaxValueSize)`,
			[]error{ErrTooLarge, ErrOperation}, "set", "big", nil},
		{"stale/Set", func() error { return s.Set(ctx, "k", Entry{Value: []byte("v"), Version: 3}) },
			`l2: set: stale version: key "k": version 3 is not newer than the stored version 5`,
			[]error{ErrStale, ErrOperation}, "set", "k", nil},
		{"stale/SetMany", func() error {
			return s.SetMany(ctx, map[string]Entry{"k": {Value: []byte("v"), Version: 4}, "j": {Value: []byte("v"), Version: 4}, "new": {Value: []byte("v"), Version: 4}})
		}, `l2: mset: stale version: key "j": version 4 is not newer than the stored version 5 (and 1 more key refused)`,
			[]error{ErrStale, ErrOperation}, "mset", "", []string{"j", "k", "new"}},
		{"closed/Get", func() error { _, err := closed.Get(ctx, "k"); return err },
			`l2: get "k": store closed`, []error{ErrClosed, ErrOperation}, "get", "k", nil},
		{"closed/DeleteMany", func() error { _, err := closed.DeleteMany(ctx, []string{"b", "a"}); return err },
			`l2: mdel 2 keys ("a", "b"): store closed`, []error{ErrClosed, ErrOperation}, "mdel", "", []string{"a", "b"}},
		{"closed/Ping", func() error { return closed.Ping(ctx) },
			`l2: ping: store closed`, []error{ErrClosed}, "ping", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("message\n got %s\nwant %s", got, tc.want)
			}
			if n := strings.Count(err.Error(), "l2: "); n != 1 {
				t.Errorf("%q says \"l2: \" %d times", err, n)
			}
			for _, target := range tc.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%q, %v) is false", err, target)
				}
			}
			var le *Error
			if !errors.As(err, &le) || le.Op != tc.op || le.Key != tc.key || !sameSet(le.Keys, tc.keys) {
				t.Errorf("errors.As *Error: %+v, want Op %q Key %q Keys %q", le, tc.op, tc.key, tc.keys)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, k := range a {
		m[k]++
	}
	for _, k := range b {
		m[k]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestErrorConnection: a go-redis failure is an *Error of kind
// ErrConnection that names the operation and keys once; a timeout also
// wraps ErrTimeout; a batch's Keys are the Store's copy, not the caller's
// slice.
func TestErrorConnection(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	keys := []string{"x", "y"}
	err := classify("mget", keys, refused)
	keys[0] = "changed"
	if got, want := err.Error(), `l2: mget 2 keys ("x", "y"): connection error: dial tcp: connection refused`; got != want {
		t.Fatalf("message\n got %s\nwant %s", got, want)
	}
	if !errors.Is(err, ErrConnection) || !errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, ErrTimeout) {
		t.Fatalf("errors.Is on %v: want ErrConnection and ECONNREFUSED, not ErrTimeout", err)
	}
	err = classify("get", []string{"k"}, context.DeadlineExceeded)
	if got, want := err.Error(), `l2: get "k": connection error: context deadline exceeded`; got != want {
		t.Fatalf("message\n got %s\nwant %s", got, want)
	}
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, ErrConnection) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("errors.Is on %v: want ErrTimeout, ErrConnection and DeadlineExceeded", err)
	}
}
