// Package redisinfo reads fields from the text of a Redis INFO reply
// ("name:value" lines grouped under "# Section" headers), for l2's server
// stats and the invalidation bus's run-id check.
package redisinfo

import (
	"strconv"
	"strings"
)

// Field returns the value of name in info, or "" if it is absent.
func Field(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == name {
			return v
		}
	}
	return ""
}

// Int returns the integer value of name in info, or 0 if it is absent or
// not an integer.
func Int(info, name string) int64 {
	n, _ := strconv.ParseInt(Field(info, name), 10, 64)
	return n
}

// PubSubClients counts the pub/sub connections in a CLIENT LIST reply: the
// lines whose flags include P.
func PubSubClients(clientList string) int {
	n := 0
	for line := range strings.SplitSeq(clientList, "\n") {
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "flags="); ok && strings.Contains(v, "P") {
				n++
			}
		}
	}
	return n
}
