package invalidation

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nearcache/nearcache/internal/wire"
)

var testOrigin = InstanceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	many := make([]string, 1000)
	for i := range many {
		many[i] = strings.Repeat("k", i%300) + strconv.Itoa(i)
	}
	cases := []struct {
		name      string
		partition int
		op        opcode
		keys      []string
		key       []byte
		seq       string
		wantSeq   uint64
	}{
		{"delete one", 0, opDelete, []string{"user:1"}, nil, "1", 1},
		{"delete with empty key", 7, opDelete, []string{"", "a"}, nil, "42", 42},
		{"delete many", 16383, opDelete, many, nil, "18446744073709551615", 1<<64 - 1},
		{"delete none", 3, opDelete, nil, nil, "9", 9},
		{"clear", 0, opClear, nil, nil, "123", 123},
		{"signed delete", 12, opDelete, []string{"a", "b{x}"}, []byte("secret"), "5", 5},
		{"signed clear", 0, opClear, nil, []byte("secret"), "6", 6},
		{"tags", 99, opTags, []string{"tenant:1", "all"}, nil, "7", 7},
		{"signed tags", 99, opTags, []string{"t"}, []byte("secret"), "8", 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := time.Now().UnixNano()
			body := encode(testOrigin, tc.partition, tc.op, ts, tc.keys, tc.key)
			m, err := decode(string(body)+tc.seq, tc.key, nil)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			wantKeys := tc.keys
			if tc.op == opDelete && wantKeys == nil {
				wantKeys = []string{}
			}
			want := message{origin: testOrigin, partition: tc.partition, seq: tc.wantSeq, op: tc.op, unixNanos: ts, keys: wantKeys}
			if diff := cmp.Diff(want, m, cmp.AllowUnexported(message{})); diff != "" {
				t.Fatalf("decoded message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	key := []byte("secret")
	body := string(encode(testOrigin, 1, opDelete, 1, []string{"a", "bb"}, nil))
	signed := string(encode(testOrigin, 1, opDelete, 1, []string{"a", "bb"}, key))
	forged := []byte(signed)
	forged[headerLen+1] = 'z' // change a key, keep the old signature
	otherKey := string(encode(testOrigin, 1, opDelete, 1, []string{"a"}, []byte("other")))
	patch := func(s string, off int, b byte) string { x := []byte(s); x[off] = b; return string(x) }
	cases := []struct {
		name    string
		payload string
		key     []byte
		want    error
	}{
		{"empty", "", nil, errDecode},
		{"no sequence", body, nil, errDecode},
		{"zero sequence", body + "0", nil, errDecode},
		{"leading zero", body + "01", nil, errDecode},
		{"signed sequence", body + "+1", nil, errDecode},
		{"non-digit", body + "1a", nil, errDecode},
		{"21 digits", body + strings.Repeat("1", 21), nil, errDecode},
		{"overflow", body + "18446744073709551616", nil, errDecode},
		{"bad magic", patch(body, 0, 0) + "1", nil, errDecode},
		{"bad version", patch(body, 1, 9) + "1", nil, errDecode},
		{"bad op", patch(body, 2, 9) + "1", nil, errDecode},
		{"unknown flag", patch(body, 3, 0x80) + "1", nil, errDecode},
		{"partition out of range", patch(body, 20, 0xff) + "1", nil, errDecode},
		{"key count too large", patch(body, 37, 200) + "1", nil, errDecode},
		{"key length past end", patch(body, headerLen, 100) + "1", nil, errDecode},
		{"body length too small", patch(body, 33, 3) + "1", nil, errDecode},
		{"body length past end", patch(body, 32, 0xff) + "1", nil, errDecode},
		{"truncated header", body[:20], nil, errDecode},
		{"garbage with key", "hello", key, errAuth},
		{"unsigned with key", body + "1", key, errAuth},
		{"forged", string(forged) + "1", key, errAuth},
		{"signed with other key", otherKey + "1", key, errAuth},
		{"signed, bad sequence", signed + "x", key, errDecode},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(tc.payload, tc.key, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("decode: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSignedAcceptedWithoutKey(t *testing.T) {
	signed := encode(testOrigin, 1, opDelete, 1, []string{"a"}, []byte("secret"))
	m, err := decode(string(signed)+"3", nil, nil)
	if err != nil || len(m.keys) != 1 || m.keys[0] != "a" || m.seq != 3 {
		t.Fatalf("decode signed without key: got %+v, %v; want key a, seq 3", m, err)
	}
}

func TestEncodeOversizeBecomesClear(t *testing.T) {
	keys := []string{strings.Repeat("x", MaxBodySize)}
	body := encode(testOrigin, 0, opDelete, 1, keys, nil)
	m, err := decode(string(body)+"1", nil, nil)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if m.op != opClear || len(m.keys) != 0 {
		t.Fatalf("oversize delete: got op %d with %d keys, want a clear", m.op, len(m.keys))
	}
}

func FuzzDecode(f *testing.F) {
	key := []byte("k")
	f.Add(string(encode(testOrigin, 5, opDelete, 1, []string{"a", "bc"}, nil))+"17", false)
	f.Add(string(encode(testOrigin, 0, opClear, 1, nil, nil))+"1", false)
	f.Add(string(encode(testOrigin, 9, opDelete, 1, []string{"x"}, key))+"2", true)
	f.Add("", false)
	f.Add("\xce\x01", true)
	f.Fuzz(func(t *testing.T, payload string, signed bool) {
		var k []byte
		if signed {
			k = key
		}
		m, err := decode(payload, k, nil)
		if err != nil {
			if !errors.Is(err, errDecode) && !errors.Is(err, errAuth) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		// Whatever decodes must re-encode to the same payload.
		var keys []string
		if m.op == opDelete {
			keys = m.keys
		}
		re := string(wire.AppendSeq(encode(m.origin, m.partition, m.op, m.unixNanos, keys, k), m.seq))
		if k != nil && re != payload {
			t.Fatalf("re-encoding differs:\n got %q\nwant %q", re, payload)
		}
		if m2, err := decode(re, k, nil); err != nil || m2.seq != m.seq || len(m2.keys) != len(m.keys) {
			t.Fatalf("re-encoded message does not decode the same: %+v, %v", m2, err)
		}
	})
}

func TestConfigRedactsHMACKey(t *testing.T) {
	cfg := Config{Namespace: "ns", HMACKey: []byte("topsecret")}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg), cfg.String(), cfg.GoString(), string(js)} {
		if strings.Contains(s, "topsecret") || !strings.Contains(s, "ns") {
			t.Fatalf("printed config leaks the key or lacks the namespace: %s", s)
		}
	}
}

func TestCauseString(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Causes() {
		s := c.String()
		if s == "unknown" || seen[s] {
			t.Fatalf("cause %d: name %q missing or duplicated", c, s)
		}
		seen[s] = true
	}
	if Cause(200).String() != "unknown" {
		t.Fatalf("out of range cause: got %q, want unknown", Cause(200).String())
	}
}
