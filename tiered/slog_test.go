package tiered_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// captured is one record a capture handler got.
type captured struct {
	slog.Record
	// attrs holds every attribute of the record, those the handler was
	// given by WithAttrs included, keyed by their group path ("g.key").
	attrs map[string]slog.Value
}

// captureLog is what a capture handler and the handlers derived from it
// share.
type captureLog struct {
	mu         sync.Mutex // guards every field below
	records    []captured
	withAttrs  int // WithAttrs calls
	withGroups int // WithGroup calls
	err        error
}

// capture is a slog.Handler that records what it is asked to handle.
type capture struct {
	level  slog.Level
	log    *captureLog
	pre    map[string]slog.Value // attributes from WithAttrs, by group path
	prefix string                // the open groups, each followed by "."
}

func newCapture(level slog.Level) *capture {
	return &capture{level: level, log: &captureLog{}}
}

func (h *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *capture) WithAttrs(as []slog.Attr) slog.Handler {
	h.log.mu.Lock()
	h.log.withAttrs++
	h.log.mu.Unlock()
	c := *h
	c.pre = make(map[string]slog.Value, len(h.pre)+len(as))
	for k, v := range h.pre {
		c.pre[k] = v
	}
	for _, a := range as {
		flatten(c.pre, h.prefix, a)
	}
	return &c
}

func (h *capture) WithGroup(name string) slog.Handler {
	h.log.mu.Lock()
	h.log.withGroups++
	h.log.mu.Unlock()
	c := *h
	c.prefix += name + "."
	return &c
}

func (h *capture) Handle(_ context.Context, r slog.Record) error {
	attrs := make(map[string]slog.Value)
	for k, v := range h.pre {
		attrs[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		flatten(attrs, h.prefix, a)
		return true
	})
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	h.log.records = append(h.log.records, captured{Record: r.Clone(), attrs: attrs})
	return h.log.err
}

// flatten adds a to m under prefix, and the members of a group under its
// path.
func flatten(m map[string]slog.Value, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() != slog.KindGroup {
		m[prefix+a.Key] = v
		return
	}
	if a.Key != "" {
		prefix += a.Key + "."
	}
	for _, g := range v.Group() {
		flatten(m, prefix, g)
	}
}

func (h *capture) records() []captured {
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	return append([]captured(nil), h.log.records...)
}

// only returns the one record h got, failing the test otherwise.
func (h *capture) only(t *testing.T) captured {
	t.Helper()
	rs := h.records()
	if len(rs) != 1 {
		t.Fatalf("handler got %d records, want 1", len(rs))
	}
	return rs[0]
}

func (h *capture) calls() (withAttrs, withGroups int) {
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	return h.log.withAttrs, h.log.withGroups
}

// checkAttr checks that r has attribute key of kind with value want.
func checkAttr(t *testing.T, r captured, key string, kind slog.Kind, want any) {
	t.Helper()
	v, ok := r.attrs[key]
	if !ok {
		t.Fatalf("no attribute %q in %v", key, r.attrs)
	}
	if v.Kind() != kind {
		t.Fatalf("attribute %q is a %v (%v), want a %v", key, v.Kind(), v, kind)
	}
	if diff := cmp.Diff(want, v.Any()); diff != "" {
		t.Fatalf("attribute %q (-want +got):\n%s", key, diff)
	}
}

// TestSlogLevels: each zap level reaches the handler as its slog level,
// DPanic, Panic and Fatal as Error+4, with the entry's message and time;
// Panic and Fatal still end the call after the record is handled.
func TestSlogLevels(t *testing.T) {
	for _, tc := range []struct {
		zap  zapcore.Level
		want slog.Level
	}{
		{zapcore.DebugLevel, slog.LevelDebug},
		{zapcore.InfoLevel, slog.LevelInfo},
		{zapcore.WarnLevel, slog.LevelWarn},
		{zapcore.ErrorLevel, slog.LevelError},
		{zapcore.DPanicLevel, slog.LevelError + 4},
		{zapcore.PanicLevel, slog.LevelError + 4},
		{zapcore.FatalLevel, slog.LevelError + 4},
	} {
		t.Run(tc.zap.String(), func(t *testing.T) {
			h := newCapture(slog.LevelDebug)
			// Fatal would exit the test binary: panic instead, after the write.
			log := tiered.SlogLogger(h).WithOptions(zap.WithFatalHook(zapcore.WriteThenPanic))
			before := time.Now()
			terminated := func() (p bool) {
				defer func() { p = recover() != nil }()
				log.Log(tc.zap, "msg "+tc.zap.String())
				return false
			}()
			if want := tc.zap >= zapcore.PanicLevel; terminated != want {
				t.Fatalf("%v entry panicked: %v, want %v", tc.zap, terminated, want)
			}
			r := h.only(t)
			if r.Level != tc.want || r.Message != "msg "+tc.zap.String() {
				t.Fatalf("record %v %q, want %v %q", r.Level, r.Message, tc.want, "msg "+tc.zap.String())
			}
			if r.Time.Before(before) || r.Time.After(time.Now()) {
				t.Fatalf("record time %v, want the entry's (between %v and now)", r.Time, before)
			}
			if len(r.attrs) != 0 {
				t.Fatalf("attributes %v of an entry without fields, name or caller, want none", r.attrs)
			}
		})
	}
}

// TestSlogLoggerName: the logger's name is the "logger" attribute, nested
// names joined with "." as zap does; an unnamed logger adds none.
func TestSlogLoggerName(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	log := tiered.SlogLogger(h)
	log.Named("invalidation").Info("a")
	log.Named("outer").Named("inner").Info("b")
	log.Info("c")
	rs := h.records()
	if len(rs) != 3 {
		t.Fatalf("%d records, want 3", len(rs))
	}
	checkAttr(t, rs[0], "logger", slog.KindString, "invalidation")
	checkAttr(t, rs[1], "logger", slog.KindString, "outer.inner")
	if v, ok := rs[2].attrs["logger"]; ok {
		t.Fatalf("unnamed logger: logger attribute %v, want none", v)
	}
}

type point struct{ X, Y int }

// user marshals itself as a zap object.
type user struct {
	ID   int
	Name string
}

func (u user) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt("id", u.ID)
	enc.AddString("name", u.Name)
	return nil
}

type stringer string

func (s stringer) String() string { return "stringer " + string(s) }

// verboseError prints more with %+v, as errors with stacks do.
type verboseError struct{}

func (verboseError) Error() string { return "short" }

func (e verboseError) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('+') {
		_, _ = io.WriteString(f, "short\nwith details")
		return
	}
	_, _ = io.WriteString(f, e.Error())
}

// groupError is an error group, as go.uber.org/multierr builds.
type groupError []error

func (g groupError) Error() string   { return "2 errors" }
func (g groupError) Errors() []error { return g }

// TestSlogFields: every kind of zap field becomes an attribute of the
// matching slog kind and value.
func TestSlogFields(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.FixedZone("CET", 3600)
	}
	when := time.Date(2024, 5, 6, 7, 8, 9, 10, paris)
	far := time.Date(2300, 1, 2, 3, 4, 5, 0, time.UTC) // beyond int64 nanoseconds: zap keeps the time.Time
	type attr struct {
		key  string
		kind slog.Kind
		want any
	}
	for _, tc := range []struct {
		name  string
		field zap.Field
		want  []attr
	}{
		{"String", zap.String("s", "text"), []attr{{"s", slog.KindString, "text"}}},
		{"Bool", zap.Bool("b", true), []attr{{"b", slog.KindBool, true}}},
		{"BoolFalse", zap.Bool("b", false), []attr{{"b", slog.KindBool, false}}},
		{"Int", zap.Int("i", -3), []attr{{"i", slog.KindInt64, int64(-3)}}},
		{"Int8", zap.Int8("i", math.MinInt8), []attr{{"i", slog.KindInt64, int64(math.MinInt8)}}},
		{"Int16", zap.Int16("i", math.MaxInt16), []attr{{"i", slog.KindInt64, int64(math.MaxInt16)}}},
		{"Int32", zap.Int32("i", math.MinInt32), []attr{{"i", slog.KindInt64, int64(math.MinInt32)}}},
		{"Int64", zap.Int64("i", math.MaxInt64), []attr{{"i", slog.KindInt64, int64(math.MaxInt64)}}},
		{"Uint", zap.Uint("u", 7), []attr{{"u", slog.KindUint64, uint64(7)}}},
		{"Uint8", zap.Uint8("u", math.MaxUint8), []attr{{"u", slog.KindUint64, uint64(math.MaxUint8)}}},
		{"Uint16", zap.Uint16("u", math.MaxUint16), []attr{{"u", slog.KindUint64, uint64(math.MaxUint16)}}},
		{"Uint32", zap.Uint32("u", math.MaxUint32), []attr{{"u", slog.KindUint64, uint64(math.MaxUint32)}}},
		{"Uint64", zap.Uint64("u", math.MaxUint64), []attr{{"u", slog.KindUint64, uint64(math.MaxUint64)}}},
		{"Uintptr", zap.Uintptr("u", 0xbeef), []attr{{"u", slog.KindUint64, uint64(0xbeef)}}},
		{"Float64", zap.Float64("f", -1.5), []attr{{"f", slog.KindFloat64, -1.5}}},
		{"Float32", zap.Float32("f", 0.25), []attr{{"f", slog.KindFloat64, 0.25}}},
		{"Duration", zap.Duration("d", 1500*time.Millisecond), []attr{{"d", slog.KindDuration, 1500 * time.Millisecond}}},
		{"Time", zap.Time("t", when), []attr{{"t", slog.KindTime, when}}},
		{"TimeFull", zap.Time("t", far), []attr{{"t", slog.KindTime, far}}},
		{"Error", zap.Error(errors.New("boom")), []attr{{"error", slog.KindString, "boom"}}},
		{"NamedError", zap.NamedError("cause", errors.New("boom")), []attr{{"cause", slog.KindString, "boom"}}},
		{"ErrorVerbose", zap.Error(verboseError{}), []attr{
			{"error", slog.KindString, "short"},
			{"errorVerbose", slog.KindString, "short\nwith details"},
		}},
		{"ErrorGroup", zap.Error(groupError{errors.New("a"), errors.New("b")}), []attr{
			{"error", slog.KindString, "2 errors"},
			{"errorCauses", slog.KindAny, []any{map[string]any{"error": "a"}, map[string]any{"error": "b"}}},
		}},
		{"Stringer", zap.Stringer("st", stringer("x")), []attr{{"st", slog.KindString, "stringer x"}}},
		{"ByteString", zap.ByteString("bs", []byte("raw")), []attr{{"bs", slog.KindString, "raw"}}},
		{"Binary", zap.Binary("bin", []byte{0, 1, 2}), []attr{{"bin", slog.KindAny, []byte{0, 1, 2}}}},
		{"Strings", zap.Strings("arr", []string{"a", "b"}), []attr{{"arr", slog.KindAny, []any{"a", "b"}}}},
		{"Ints", zap.Ints("arr", []int{1, 2}), []attr{{"arr", slog.KindAny, []any{1, 2}}}},
		{"Object", zap.Object("user", user{42, "ada"}), []attr{{"user", slog.KindAny, map[string]any{"id": 42, "name": "ada"}}}},
		{"Objects", zap.Objects("users", []user{{1, "a"}, {2, "b"}}), []attr{{"users", slog.KindAny,
			[]any{map[string]any{"id": 1, "name": "a"}, map[string]any{"id": 2, "name": "b"}}}}},
		{"Inline", zap.Inline(user{7, "bob"}), []attr{{"id", slog.KindInt64, int64(7)}, {"name", slog.KindString, "bob"}}},
		{"Complex", zap.Complex128("c", complex(1, 2)), []attr{{"c", slog.KindAny, complex(1, 2)}}},
		{"Reflect", zap.Reflect("p", point{1, 2}), []attr{{"p", slog.KindAny, point{1, 2}}}},
		{"AnyOfString", zap.Any("a", "via any"), []attr{{"a", slog.KindString, "via any"}}},
		{"AnyOfDuration", zap.Any("a", time.Second), []attr{{"a", slog.KindDuration, time.Second}}},
		{"Skip", zap.Skip(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newCapture(slog.LevelDebug)
			tiered.SlogLogger(h).Info("fields", tc.field)
			r := h.only(t)
			if len(r.attrs) != len(tc.want) {
				t.Fatalf("attributes %v, want %d", r.attrs, len(tc.want))
			}
			for _, a := range tc.want {
				checkAttr(t, r, a.key, a.kind, a.want)
			}
			if tc.name == "Time" {
				if got := r.attrs["t"].Time().Location(); got != paris {
					t.Fatalf("time attribute in %v, want %v", got, paris)
				}
			}
		})
	}
}

// TestSlogFieldOrder: attributes come in the order of the fields, after
// the logger name.
func TestSlogFieldOrder(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	tiered.SlogLogger(h).Named("n").Info("m", zap.String("z", "1"), zap.Int("a", 2), zap.Error(errors.New("e")))
	var keys []string
	h.only(t).Attrs(func(a slog.Attr) bool {
		keys = append(keys, a.Key)
		return true
	})
	if want := []string{"logger", "z", "a", "error"}; !cmp.Equal(keys, want) {
		t.Fatalf("attribute keys %v, want %v", keys, want)
	}
}

// TestSlogWith: fields given to With are converted once, in one WithAttrs
// call, and every later entry carries them without converting them again;
// a zap.Namespace among them opens a handler group; named children of the
// logger keep them.
func TestSlogWith(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	var calls countingStringer
	log := tiered.SlogLogger(h).With(zap.String("req", "r1"), zap.Int("n", 1), zap.Stringer("s", &calls))
	if wa, wg := h.calls(); wa != 1 || wg != 0 || calls.n != 1 {
		t.Fatalf("after With: %d WithAttrs, %d WithGroup calls, String called %d times; want 1, 0, 1", wa, wg, calls.n)
	}
	log.Info("one", zap.Int("i", 1))
	log.Warn("two")
	log.Named("child").Info("three")
	if wa, wg := h.calls(); wa != 1 || wg != 0 || calls.n != 1 {
		t.Fatalf("after 3 entries: %d WithAttrs, %d WithGroup calls, String called %d times; want still 1, 0, 1", wa, wg, calls.n)
	}
	rs := h.records()
	if len(rs) != 3 {
		t.Fatalf("%d records, want 3", len(rs))
	}
	for _, r := range rs {
		checkAttr(t, r, "req", slog.KindString, "r1")
		checkAttr(t, r, "n", slog.KindInt64, int64(1))
		checkAttr(t, r, "s", slog.KindString, "called 1")
		if r.NumAttrs() > 2 {
			t.Fatalf("record %q carries %d attributes of its own; the With fields must be the handler's, not the record's", r.Message, r.NumAttrs())
		}
	}
	checkAttr(t, rs[0], "i", slog.KindInt64, int64(1))
	checkAttr(t, rs[2], "logger", slog.KindString, "child")

	// A namespace: the fields after it, in With and in the entry, are in
	// its group, and so are the record's own attributes (see the NOTE of
	// SlogLogger).
	h = newCapture(slog.LevelDebug)
	tiered.SlogLogger(h).With(zap.String("a", "1"), zap.Namespace("ns"), zap.String("b", "2")).
		Named("x").Info("m", zap.String("c", "3"))
	if wa, wg := h.calls(); wa != 2 || wg != 1 {
		t.Fatalf("With around a namespace: %d WithAttrs, %d WithGroup calls; want 2 and 1", wa, wg)
	}
	r := h.only(t)
	checkAttr(t, r, "a", slog.KindString, "1")
	checkAttr(t, r, "ns.b", slog.KindString, "2")
	checkAttr(t, r, "ns.c", slog.KindString, "3")
	checkAttr(t, r, "ns.logger", slog.KindString, "x")
	if len(r.attrs) != 4 {
		t.Fatalf("attributes %v, want 4", r.attrs)
	}
}

// countingStringer counts the calls of its String method. Not safe for
// concurrent use.
type countingStringer struct{ n int }

func (c *countingStringer) String() string {
	c.n++
	return "called " + strconv.Itoa(c.n)
}

// TestSlogNamespace: a zap.Namespace among an entry's fields puts the
// fields after it in a group, nested namespaces in nested groups.
func TestSlogNamespace(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	tiered.SlogLogger(h).Info("m", zap.String("a", "1"), zap.Namespace("g"), zap.String("b", "2"),
		zap.Namespace("h"), zap.Int("c", 3))
	r := h.only(t)
	if len(r.attrs) != 3 {
		t.Fatalf("attributes %v, want 3", r.attrs)
	}
	checkAttr(t, r, "a", slog.KindString, "1")
	checkAttr(t, r, "g.b", slog.KindString, "2")
	checkAttr(t, r, "g.h.c", slog.KindInt64, int64(3))
	var top []string
	r.Attrs(func(a slog.Attr) bool {
		top = append(top, a.Key+":"+a.Value.Kind().String())
		return true
	})
	if want := []string{"a:String", "g:Group"}; !cmp.Equal(top, want) {
		t.Fatalf("top-level attributes %v, want %v", top, want)
	}
}

// TestSlogLevelFilter: with a handler at Warn, Check refuses Info entries
// (no record is built, no field rendered, nothing allocated) and lets Warn
// ones through.
func TestSlogLevelFilter(t *testing.T) {
	h := newCapture(slog.LevelWarn)
	log := tiered.SlogLogger(h)
	if ce := log.Check(zap.InfoLevel, "info"); ce != nil {
		t.Fatalf("Check of an Info entry with a Warn handler: %v, want nil", ce)
	}
	if ce := log.Named("invalidation").With(zap.String("k", "v")).Check(zap.DebugLevel, "debug"); ce != nil {
		t.Fatalf("Check of a Debug entry on a child logger: %v, want nil", ce)
	}
	if log.Core().Enabled(zap.InfoLevel) || !log.Core().Enabled(zap.WarnLevel) {
		t.Fatal("core enabled for Info or not for Warn; want the handler's level, Warn")
	}
	var s countingStringer
	log.Info("info", zap.Stringer("s", &s))
	if s.n != 0 {
		t.Fatalf("a disabled entry's Stringer was called %d times, want 0", s.n)
	}
	if allocs := testing.AllocsPerRun(100, func() { log.Info("info") }); allocs != 0 {
		t.Fatalf("a disabled Info entry allocates %v times, want 0", allocs)
	}
	if n := len(h.records()); n != 0 {
		t.Fatalf("%d records of disabled entries, want 0", n)
	}
	log.Warn("warn")
	if r := h.only(t); r.Level != slog.LevelWarn || r.Message != "warn" {
		t.Fatalf("record %v %q, want WARN warn", r.Level, r.Message)
	}
}

type panickingStringer struct{}

func (panickingStringer) String() string { panic("stringer exploded") }

type nilStringer struct{ s string }

func (n *nilStringer) String() string { return n.s }

type nilError struct{ msg string }

func (e *nilError) Error() string { return e.msg }

type panickingError struct{}

func (panickingError) Error() string { panic("error exploded") }

type panickingObject struct{}

func (panickingObject) MarshalLogObject(zapcore.ObjectEncoder) error { panic("object exploded") }

type failingObject struct{}

func (failingObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("part", "written")
	return errors.New("marshal failed")
}

// TestSlogOddFields: fields whose rendering panics or that hold nil never
// panic the logger; they render as zap renders them ("<nil>", or a
// key+"Error" attribute "PANIC=..."), and the other fields of the entry
// are kept.
func TestSlogOddFields(t *testing.T) {
	for _, tc := range []struct {
		name  string
		field zap.Field
		want  map[string]any
	}{
		{"NilError", zap.Error(nil), map[string]any{}},
		{"NilErrorField", zapcore.Field{Key: "error", Type: zapcore.ErrorType}, map[string]any{"error": "<nil>"}},
		{"NilPointerError", zap.Error((*nilError)(nil)), map[string]any{"error": "<nil>"}},
		{"PanickingError", zap.Error(panickingError{}), map[string]any{"errorError": "PANIC=error exploded"}},
		{"NilStringer", zap.Stringer("s", nil), map[string]any{"s": "<nil>"}},
		{"NilPointerStringer", zap.Stringer("s", (*nilStringer)(nil)), map[string]any{"s": "<nil>"}},
		{"PanickingStringer", zap.Stringer("s", panickingStringer{}), map[string]any{"sError": "PANIC=stringer exploded"}},
		{"PanickingObject", zap.Object("o", panickingObject{}), map[string]any{"oError": "PANIC=object exploded"}},
		{"FailingObject", zap.Object("o", failingObject{}), map[string]any{"o": map[string]any{"part": "written"}, "oError": "marshal failed"}},
		{"TimeFullWithoutTime", zapcore.Field{Key: "t", Type: zapcore.TimeFullType}, map[string]any{"t": time.Time{}}},
		{"ByteStringNil", zap.ByteString("bs", nil), map[string]any{"bs": ""}},
		{"UnknownType", zapcore.Field{Key: "u", Type: zapcore.FieldType(250)}, map[string]any{"uError": "PANIC=unknown field type: {u 250 0  <nil>}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newCapture(slog.LevelDebug)
			log := tiered.SlogLogger(h)
			log.Info("odd", zap.String("before", "b"), tc.field, zap.String("after", "a"))
			log.With(tc.field).Info("odd in With")
			rs := h.records()
			if len(rs) != 2 {
				t.Fatalf("%d records, want 2", len(rs))
			}
			for i, r := range rs {
				got := make(map[string]any, len(r.attrs))
				for k, v := range r.attrs {
					got[k] = v.Any()
				}
				want := make(map[string]any, len(tc.want)+2)
				for k, v := range tc.want {
					want[k] = v
				}
				if i == 0 {
					want["before"], want["after"] = "b", "a"
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("record %q attributes (-want +got):\n%s", r.Message, diff)
				}
			}
		})
	}
}

// TestSlogCaller: an entry with a caller (zap.AddCaller) has a "caller"
// attribute as zap prints it and a PC that resolves to the logging line;
// one without has neither.
func TestSlogCaller(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	log := tiered.SlogLogger(h)
	log.WithOptions(zap.AddCaller()).Info("with caller")
	_, file, line, _ := runtime.Caller(0)
	line-- // the line above
	log.Info("without caller")
	rs := h.records()
	if len(rs) != 2 {
		t.Fatalf("%d records, want 2", len(rs))
	}
	checkAttr(t, rs[0], "caller", slog.KindString, "tiered/slog_test.go:"+strconv.Itoa(line))
	if rs[0].PC == 0 {
		t.Fatal("record PC 0, want the caller's")
	}
	f, _ := runtime.CallersFrames([]uintptr{rs[0].PC}).Next()
	if f.File != file || f.Line != line || !strings.HasSuffix(f.Function, ".TestSlogCaller") {
		t.Fatalf("record PC resolves to %s:%d (%s), want %s:%d in TestSlogCaller", f.File, f.Line, f.Function, file, line)
	}
	if v, ok := rs[1].attrs["caller"]; ok || rs[1].PC != 0 {
		t.Fatalf("entry without a caller: caller attribute %v, PC %#x; want none", v, rs[1].PC)
	}

	// A handler with AddSource reports it.
	var buf bytes.Buffer
	tiered.SlogLogger(slog.NewTextHandler(&buf, &slog.HandlerOptions{AddSource: true})).
		WithOptions(zap.AddCaller()).Info("sourced")
	_, _, line, _ = runtime.Caller(0)
	if want := "source=" + file + ":" + strconv.Itoa(line-1) + " "; !strings.Contains(buf.String(), want) {
		t.Fatalf("text handler with AddSource wrote %q, want %q", buf.String(), want)
	}
}

// TestSlogStack: an entry with a stack trace (zap.AddStacktrace) has it as
// the "stack" attribute, after the fields.
func TestSlogStack(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	log := tiered.SlogLogger(h).WithOptions(zap.AddStacktrace(zap.ErrorLevel))
	log.Error("failed", zap.Int("i", 1))
	log.Warn("no stack")
	rs := h.records()
	if len(rs) != 2 {
		t.Fatalf("%d records, want 2", len(rs))
	}
	st, ok := rs[0].attrs["stack"]
	if !ok || st.Kind() != slog.KindString || !strings.Contains(st.String(), "TestSlogStack") {
		t.Fatalf("stack attribute %v, want a stack trace through TestSlogStack", st)
	}
	var last string
	rs[0].Attrs(func(a slog.Attr) bool {
		last = a.Key
		return true
	})
	if last != "stack" {
		t.Fatalf("last attribute %q, want stack", last)
	}
	if v, ok := rs[1].attrs["stack"]; ok {
		t.Fatalf("Warn entry has a stack attribute %v, want none", v)
	}
}

// TestSlogHandleError: the handler's error is the core's Write error, which
// zap reports to the logger's ErrorOutput; Sync returns nil.
func TestSlogHandleError(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	h.log.err = errors.New("disk full")
	var errOut bytes.Buffer
	log := tiered.SlogLogger(h).WithOptions(zap.ErrorOutput(zapcore.AddSync(&errOut)))
	log.Info("m")
	if !strings.Contains(errOut.String(), "disk full") {
		t.Fatalf("error output %q, want the handler's error", errOut.String())
	}
	if err := log.Sync(); err != nil {
		t.Fatalf("Sync: %v, want nil", err)
	}
}

// TestSlogNilHandler: a nil handler gives a logger that discards entries.
func TestSlogNilHandler(t *testing.T) {
	log := tiered.SlogLogger(nil)
	log.Named("invalidation").With(zap.String("k", "v")).Error("dropped")
	if log.Core().Enabled(zap.FatalLevel) {
		t.Fatal("logger of a nil handler enabled, want a no-op logger")
	}
}

// TestSlogCache: a Cache logging through SlogLogger delivers its warnings
// to the slog handler: a write failing on a closed Redis logs "nearcache:
// redis writes failing" at Warn with the key and the error, the
// invalidation bus's warnings carry the logger name "invalidation", and
// Close logs the episode's end with its count.
func TestSlogCache(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	h := newCapture(slog.LevelInfo)
	c, err := tiered.New(tiered.Config[string]{Redis: rdb, Namespace: "slog", Logger: tiered.SlogLogger(h)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})
	if err := c.Set(ctx, "before", "v"); err != nil {
		t.Fatalf("Set with Redis up: %v", err)
	}
	mr.Close()
	if err := c.Set(ctx, "k1", "v"); !errors.Is(err, tiered.ErrUnavailable) {
		t.Fatalf("Set with Redis down: %v, want ErrUnavailable", err)
	}
	find := func(msg string, level slog.Level, logger string) (captured, bool) {
		for _, r := range h.records() {
			name := ""
			if v, ok := r.attrs["logger"]; ok {
				name = v.String()
			}
			if r.Message == msg && r.Level == level && name == logger {
				return r, true
			}
		}
		return captured{}, false
	}
	const msg = "nearcache: redis writes failing"
	r, ok := find(msg, slog.LevelWarn, "")
	if !ok {
		t.Fatalf("no Warn %q among the records %v", msg, h.records())
	}
	checkAttr(t, r, "key", slog.KindString, "k1")
	if e := r.attrs["error"]; e.Kind() != slog.KindString || !strings.Contains(e.String(), "redis unavailable") {
		t.Fatalf("error attribute %v, want the write's error as a string", e)
	}
	if d := r.attrs["quiet"]; d.Kind() != slog.KindDuration || d.Duration() <= 0 {
		t.Fatalf("quiet attribute %v, want a duration", d)
	}

	redistest.WaitFor(t, 5*time.Second, "the bus's warning", func() bool {
		_, ok := find("invalidation stream interrupted", slog.LevelWarn, "invalidation")
		return ok
	})

	closed = true
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	end, ok := find(msg+": episode ended", slog.LevelInfo, "")
	if !ok {
		t.Fatalf("no Info %q after Close", msg+": episode ended")
	}
	checkAttr(t, end, "count", slog.KindUint64, uint64(1))
	checkAttr(t, end, "ended", slog.KindString, "closed")
	checkAttr(t, end, "last_key", slog.KindString, "k1")
}

// A program that logs with log/slog hands its handler to the Cache:
// tiered.Config[V]{Redis: rdb, Logger: tiered.SlogLogger(h)}. The
// invalidation bus logs under the name "invalidation".
func ExampleSlogLogger() {
	h := slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{} // dropped, for a stable output
			}
			return a
		},
	})
	log := tiered.SlogLogger(h)
	log.Warn("nearcache: redis writes failing", zap.Error(errors.New("connection refused")),
		zap.Duration("quiet", 10*time.Second), zap.String("key", "user:42"))
	log.Named("invalidation").Info("sequence gap", zap.Int("partition", 3), zap.Uint64("after", 41), zap.Uint64("got", 43))
	log.Debug("not written: the handler's level is Info")
	// Output:
	// level=WARN msg="nearcache: redis writes failing" error="connection refused" quiet=10s key=user:42
	// level=INFO msg="sequence gap" logger=invalidation partition=3 after=41 got=43
}
