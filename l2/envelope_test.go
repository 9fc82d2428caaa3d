package l2

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	cases := []Entry{
		{},
		{Value: []byte("v")},
		{Value: []byte("v"), TTL: time.Hour, FreshFor: time.Minute},
		{Value: []byte("v"), TTL: time.Hour, FreshFor: time.Minute, RefreshAfter: 40 * time.Second, Version: 9,
			Metadata: map[string]string{"m": "1"}},
		{Negative: true, TTL: time.Second},
		{Value: bytes.Repeat([]byte{0xC7}, 300), Metadata: map[string]string{"a": "1", "long": string(bytes.Repeat([]byte("x"), 200))}},
	}
	for i, in := range cases {
		b := encode(nil, &in, now)
		if len(b) != encodedLen(&in) {
			t.Fatalf("case %d: encodedLen %d, encode wrote %d", i, encodedLen(&in), len(b))
		}
		out, err := decode(b, 0)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !bytes.Equal(out.Value, in.Value) || out.Negative != in.Negative || !cmp.Equal(out.Metadata, in.Metadata, cmpopts.EquateEmpty()) {
			t.Fatalf("case %d: got %+v, want %+v", i, out, in)
		}
		if in.TTL > 0 && !out.ExpiresAt.Equal(now.Add(in.TTL)) {
			t.Fatalf("case %d: ExpiresAt %v", i, out.ExpiresAt)
		}
		if in.FreshFor > 0 && !out.StaleAt.Equal(now.Add(in.FreshFor)) {
			t.Fatalf("case %d: StaleAt %v", i, out.StaleAt)
		}
		if (in.RefreshAfter > 0) != !out.RefreshAt.IsZero() || (in.RefreshAfter > 0 && !out.RefreshAt.Equal(now.Add(in.RefreshAfter))) {
			t.Fatalf("case %d: RefreshAt %v", i, out.RefreshAt)
		}
		if out.Version != in.Version {
			t.Fatalf("case %d: Version %d, want %d", i, out.Version, in.Version)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string][]byte{
		"empty":             nil,
		"short":             {envMagic, envVersion},
		"magic":             {'{', envVersion, 0},
		"version":           {envMagic, 9, 0},
		"tag count zero":    {envMagic, envVersion, flagTags, 0},
		"tag count lie":     {envMagic, envVersion, flagTags, 2, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 1},
		"tag count limit":   append([]byte{envMagic, envVersion, flagTags, MaxTags + 1}, make([]byte, 9*(MaxTags+1))...),
		"tag len lie":       {envMagic, envVersion, flagTags, 1, 20, 'a', 0, 0, 0, 0, 0, 0, 0, 1},
		"truncated tag ver": {envMagic, envVersion, flagTags, 1, 1, 'a', 0, 0, 0, 0, 0, 0, 0},
		"truncated soft":    {envMagic, envVersion, flagSoft, 1, 2, 3},
		"truncated hard":    {envMagic, envVersion, flagHard, 1},
		"truncated refresh": {envMagic, envVersion, flagRefresh, 1, 2},
		"meta count lie":    {envMagic, envVersion, flagMeta, 0xff, 0xff, 0xff, 0x7f, 1, 1},
		"meta len lie":      {envMagic, envVersion, flagMeta, 1, 50, 'a'},
		"meta bad varint":   {envMagic, envVersion, flagMeta, 0x80},
	}
	for name, b := range cases {
		if _, err := decode(b, 0); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := decode(make([]byte, 100), 50); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: got %v, want ErrTooLarge", err)
	}
}

// FuzzDecode: decode never panics, never allocates beyond its input's
// bounds, and whatever it accepts re-encodes to an equivalent entry.
func FuzzDecode(f *testing.F) {
	now := time.UnixMilli(1_700_000_000_000)
	for _, e := range []Entry{{Value: []byte("v")}, {TTL: time.Hour, FreshFor: time.Minute, Metadata: map[string]string{"k": "v"}}, {Negative: true}} {
		f.Add(encode(nil, &e, now))
	}
	f.Add([]byte("{\"plain\":\"json\"}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decode(b, 1<<20)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error of unknown kind: %v", err)
			}
			return
		}
		if len(e.Metadata) > len(b) {
			t.Fatalf("%d metadata pairs from %d bytes", len(e.Metadata), len(b))
		}
		again, err := decode(encode(nil, &Entry{Value: e.Value, Metadata: e.Metadata, Negative: e.Negative}, now), 0)
		if err != nil || !bytes.Equal(again.Value, e.Value) || len(again.Metadata) != len(e.Metadata) {
			t.Fatalf("re-encode of an accepted envelope: %+v, %v", again, err)
		}
	})
}
