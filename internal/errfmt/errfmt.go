// Package errfmt names keys in error messages the same way in every
// package: a key quoted (and cut at MaxKeyLen bytes), a batch as its size
// and its first few keys in sorted order, so that a message does not depend
// on map iteration order.
package errfmt

import "strconv"

// MaxKeyLen is how many bytes of a key a message shows.
const MaxKeyLen = 128

// shown is how many keys of a batch a message names.
const shown = 3

// Key quotes k for a message, cut at MaxKeyLen bytes.
func Key(k string) string {
	if len(k) > MaxKeyLen {
		return strconv.Quote(k[:MaxKeyLen]) + "..."
	}
	return strconv.Quote(k)
}

// Keys names the keys of an operation: "" for none, the quoted key for
// one, and for more `N keys ("a", "b", "c", ...)` with the smallest three.
func Keys(keys []string) string {
	switch len(keys) {
	case 0:
		return ""
	case 1:
		return Key(keys[0])
	}
	first := smallest(keys)
	b := make([]byte, 0, 64)
	b = strconv.AppendInt(b, int64(len(keys)), 10)
	b = append(b, " keys ("...)
	for i, k := range first {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, Key(k)...)
	}
	if len(keys) > len(first) {
		b = append(b, ", ..."...)
	}
	return string(append(b, ')'))
}

// smallest returns the (at most) three smallest distinct keys, sorted, in
// one pass: a batch of any size costs no sort and no copy.
func smallest(keys []string) []string {
	var top [shown]string
	n := 0
	for _, k := range keys {
		i := n
		for i > 0 && k < top[i-1] {
			i--
		}
		if (i > 0 && top[i-1] == k) || i == shown {
			continue
		}
		if n < shown {
			n++
		}
		copy(top[i+1:n], top[i:n-1])
		top[i] = k
	}
	return top[:n]
}
