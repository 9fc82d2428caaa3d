package invalidation

import (
	"encoding/hex"
	"testing"
)

// TestBodyFormat pins the bytes of a message body (the layout is described
// at encode): instances of different builds share the channel, so a change
// here must come with a new format version. The signed body's MAC is
// HMAC-SHA256, keyed with the HMAC key, of the bytes before it (the value
// below was computed independently of this package).
func TestBodyFormat(t *testing.T) {
	const origin = "0102030405060708090a0b0c0d0e0f10"
	for _, c := range []struct {
		name string
		body []byte
		want string
	}{
		{"delete", encode(testOrigin, 513, opDelete, 0x0102030405060708, []string{"a", "bc"}, nil),
			"ce" + "01" + "01" + "00" + origin + "0201" + "0102030405060708" + "0000002b" + "00000002" + "0161" + "026263"},
		{"clear", encode(testOrigin, 0, opClear, 1, []string{"ignored"}, nil),
			"ce" + "01" + "02" + "00" + origin + "0000" + "0000000000000001" + "00000026" + "00000000"},
		{"signed clear", encode(testOrigin, 0, opClear, 1, nil, []byte("k")),
			"ce" + "01" + "02" + "01" + origin + "0000" + "0000000000000001" + "00000046" + "00000000" +
				"6e6852220848bfdc6cb7c38ee0132db6ec8ac6b8897505b5540550e6d1c45ac4"},
	} {
		if got := hex.EncodeToString(c.body); got != c.want {
			t.Errorf("%s: body\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}
