package tiered

import "encoding/json"

// Codec turns values into bytes for Redis and back. Unmarshal receives bytes
// from a shared server: it must reject what it cannot parse with an error,
// never panic, and must not keep b after returning.
type Codec[V any] interface {
	Marshal(v V) ([]byte, error)
	Unmarshal(b []byte) (V, error)
}

// JSONCodec encodes values with encoding/json. It is the default for types
// other than []byte and string.
type JSONCodec[V any] struct{}

// Marshal implements Codec.
func (JSONCodec[V]) Marshal(v V) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec.
func (JSONCodec[V]) Unmarshal(b []byte) (V, error) {
	var v V
	err := json.Unmarshal(b, &v)
	return v, err
}

// BytesCodec stores []byte values as they are (copied on read).
type BytesCodec struct{}

// Marshal implements Codec.
func (BytesCodec) Marshal(v []byte) ([]byte, error) { return v, nil }

// Unmarshal implements Codec.
func (BytesCodec) Unmarshal(b []byte) ([]byte, error) { return append([]byte(nil), b...), nil }

// StringCodec stores string values as their bytes.
type StringCodec struct{}

// Marshal implements Codec.
func (StringCodec) Marshal(v string) ([]byte, error) { return []byte(v), nil }

// Unmarshal implements Codec.
func (StringCodec) Unmarshal(b []byte) (string, error) { return string(b), nil }

// defaultCodec picks raw bytes, string or JSON by V.
func defaultCodec[V any]() Codec[V] {
	var zero V
	switch any(zero).(type) {
	case []byte:
		return any(BytesCodec{}).(Codec[V])
	case string:
		return any(StringCodec{}).(Codec[V])
	}
	return JSONCodec[V]{}
}

// safeUnmarshal runs the codec's Unmarshal: its error comes back as a
// *codecError ("decode: ..."), a panic in it as a *PanicError (with the
// panic value and stack).
func safeUnmarshal[V any](c Codec[V], b []byte) (v V, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newPanicError("decode", "", r)
		} else if err != nil {
			err = &codecError{op: "decode", err: err}
		}
	}()
	return c.Unmarshal(b)
}

// safeMarshal is safeUnmarshal for Marshal.
func safeMarshal[V any](c Codec[V], v V) (b []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newPanicError("encode", "", r)
		} else if err != nil {
			err = &codecError{op: "encode", err: err}
		}
	}()
	return c.Marshal(v)
}
