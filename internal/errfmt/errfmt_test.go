package errfmt

import (
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	long := strings.Repeat("x", MaxKeyLen+5)
	for _, tc := range []struct {
		keys []string
		want string
	}{
		{nil, ``},
		{[]string{"k"}, `"k"`},
		{[]string{`a"b`}, `"a\"b"`},
		{[]string{long}, `"` + long[:MaxKeyLen] + `"...`},
		{[]string{"b", "a"}, `2 keys ("a", "b")`},
		{[]string{"c", "b", "a"}, `3 keys ("a", "b", "c")`},
		{[]string{"e", "d", "c", "b", "a"}, `5 keys ("a", "b", "c", ...)`},
		{[]string{"a", "z", "b", "y", "a"}, `5 keys ("a", "b", "y", ...)`},
		{[]string{"a", "a"}, `2 keys ("a", ...)`},
	} {
		if got := Keys(tc.keys); got != tc.want {
			t.Errorf("Keys(%q) = %s, want %s", tc.keys, got, tc.want)
		}
	}
}
