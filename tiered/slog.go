package tiered

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// SlogLogger returns a *zap.Logger whose entries go to h, for [Config].Logger
// (and invalidation.Config.Logger) in a program that logs with [log/slog].
//
// Levels map to slog's: Debug, Info, Warn and Error to their namesakes;
// DPanic, Panic and Fatal to slog.LevelError+4. Whether an entry is logged
// is h.Enabled's answer (asked with context.Background()), so an entry below
// the handler's level builds no record. The logger still panics after a
// Panic entry and exits after a Fatal one, as every zap logger does.
//
// Each record carries the entry's message and time and, as attributes:
//
//   - "logger": the logger's name, when it has one ("invalidation" for the
//     invalidation bus; names of nested loggers joined with ".").
//   - "caller": the calling file:line as zap prints it by default
//     (package/file.go:line), when the entry has a caller; the record's PC
//     is set too, so a handler built with AddSource reports the source. As
//     with zap.New, entries carry a caller only if the logger is built with
//     [zap.AddCaller]: SlogLogger(h).WithOptions(zap.AddCaller()).
//   - the entry's fields, with their types: strings, bools, signed and
//     unsigned integers, floats, durations and times become the slog kinds of
//     the same name; an error becomes its Error() string under the field's key
//     (usually "error"), with the "Verbose" and "Causes" companions zap adds
//     for rich errors and error groups; a fmt.Stringer its String(); a byte
//     string a string; arrays and objects (zap.Array, zap.Object, zap.Any of a
//     marshaler) the []any or map[string]any [zapcore.MapObjectEncoder]
//     builds; [zap.Namespace] opens a group that holds the fields after it. A field
//     whose rendering panics becomes "<nil>" (a nil pointer) or a
//     key+"Error" attribute "PANIC=...", as zap renders it.
//   - "stack": the stack trace, when the entry has one.
//
// Fields given to With ([zap.Logger.With]) are converted once and handed to
// h.WithAttrs; a zap.Namespace among them becomes h.WithGroup. Handle gets
// context.Background(); its error is the Write error zap reports to the
// logger's ErrorOutput. Sync returns nil.
//
// If h is nil, SlogLogger returns [zap.NewNop]().
//
// NOTE: slog nests every attribute of a record in the groups its handler
// has opened. After a zap.Namespace passed to With, "logger", "caller" and
// "stack" are therefore inside that group too, unlike in zap's encoders.
func SlogLogger(h slog.Handler) *zap.Logger {
	if h == nil {
		return zap.NewNop()
	}
	return zap.New(&slogCore{h: h})
}

// slogCore is a zapcore.Core that hands entries to a slog.Handler. It is
// immutable: With returns a new one.
type slogCore struct {
	h slog.Handler
}

var _ zapcore.Core = (*slogCore)(nil)

// slogLevel maps a zap level to a slog level.
func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	case l == zapcore.ErrorLevel:
		return slog.LevelError
	default: // DPanic, Panic, Fatal
		return slog.LevelError + 4
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	h := c.h
	var attrs []slog.Attr
	for _, f := range fields {
		if f.Type == zapcore.NamespaceType {
			if len(attrs) > 0 {
				h, attrs = h.WithAttrs(attrs), nil
			}
			h = h.WithGroup(f.Key)
			continue
		}
		attrs = appendField(attrs, f)
	}
	if len(attrs) > 0 {
		h = h.WithAttrs(attrs)
	}
	return &slogCore{h: h}
}

func (c *slogCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *slogCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	var pc uintptr
	if ent.Caller.Defined && ent.Caller.PC != 0 {
		// zap keeps the PC of the call instruction (a runtime.Frame's); a
		// record wants a return PC, as runtime.Callers gives, which
		// runtime.CallersFrames backs up by one byte.
		pc = ent.Caller.PC + 1
	}
	r := slog.NewRecord(ent.Time, slogLevel(ent.Level), ent.Message, pc)
	if ent.LoggerName != "" {
		r.AddAttrs(slog.String("logger", ent.LoggerName))
	}
	if ent.Caller.Defined {
		r.AddAttrs(slog.String("caller", ent.Caller.TrimmedPath()))
	}
	r.AddAttrs(fieldAttrs(fields)...)
	if ent.Stack != "" {
		r.AddAttrs(slog.String("stack", ent.Stack))
	}
	return c.h.Handle(context.Background(), r)
}

func (c *slogCore) Sync() error { return nil }

// fieldAttrs converts an entry's fields; each zap.Namespace puts the fields
// after it in a group.
func fieldAttrs(fields []zapcore.Field) []slog.Attr {
	for i, f := range fields {
		if f.Type == zapcore.NamespaceType {
			attrs := make([]slog.Attr, 0, i+1)
			for _, g := range fields[:i] {
				attrs = appendField(attrs, g)
			}
			inner := fieldAttrs(fields[i+1:])
			return append(attrs, slog.Attr{Key: f.Key, Value: slog.GroupValue(inner...)})
		}
	}
	attrs := make([]slog.Attr, 0, len(fields))
	for _, f := range fields {
		attrs = appendField(attrs, f)
	}
	return attrs
}

// appendField appends the attributes of f (one, but for errors with
// companions and inline objects) to attrs. A panic while rendering f
// leaves a key+"Error" attribute "PANIC=..." instead, as zap writes it.
func appendField(attrs []slog.Attr, f zapcore.Field) (out []slog.Attr) {
	n := len(attrs)
	defer func() {
		if r := recover(); r != nil {
			out = append(attrs[:n], slog.String(f.Key+"Error", fmt.Sprintf("PANIC=%v", r)))
		}
	}()
	switch f.Type {
	case zapcore.SkipType:
		return attrs
	case zapcore.StringType:
		return append(attrs, slog.String(f.Key, f.String))
	case zapcore.BoolType:
		return append(attrs, slog.Bool(f.Key, f.Integer == 1))
	case zapcore.Int64Type, zapcore.Int32Type, zapcore.Int16Type, zapcore.Int8Type:
		return append(attrs, slog.Int64(f.Key, f.Integer))
	case zapcore.Uint64Type, zapcore.Uint32Type, zapcore.Uint16Type, zapcore.Uint8Type, zapcore.UintptrType:
		return append(attrs, slog.Uint64(f.Key, uint64(f.Integer)))
	case zapcore.Float64Type:
		return append(attrs, slog.Float64(f.Key, math.Float64frombits(uint64(f.Integer))))
	case zapcore.Float32Type:
		return append(attrs, slog.Float64(f.Key, float64(math.Float32frombits(uint32(f.Integer)))))
	case zapcore.DurationType:
		return append(attrs, slog.Duration(f.Key, time.Duration(f.Integer)))
	case zapcore.TimeType:
		t := time.Unix(0, f.Integer)
		if loc, ok := f.Interface.(*time.Location); ok && loc != nil {
			t = t.In(loc)
		}
		return append(attrs, slog.Time(f.Key, t))
	case zapcore.TimeFullType:
		t, _ := f.Interface.(time.Time)
		return append(attrs, slog.Time(f.Key, t))
	case zapcore.ByteStringType:
		b, _ := f.Interface.([]byte)
		return append(attrs, slog.String(f.Key, string(b)))
	case zapcore.ErrorType, zapcore.StringerType:
		if f.Interface == nil {
			return append(attrs, slog.String(f.Key, "<nil>"))
		}
	}
	// The rest (errors, Stringers, arrays, objects, binary, complex
	// numbers, reflected values) as zap renders them, nil pointers and
	// panics included.
	enc := zapcore.NewMapObjectEncoder()
	f.AddTo(enc)
	if v, ok := enc.Fields[f.Key]; ok && f.Type != zapcore.InlineMarshalerType {
		attrs = append(attrs, slog.Any(f.Key, v))
		delete(enc.Fields, f.Key)
	}
	// Companions ("errorVerbose", "errorCauses", "keyError") and inline
	// fields, in key order since a map has none.
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
