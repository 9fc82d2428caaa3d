package l2

import (
	"encoding/binary"
)

// versionRoom is what the write script may add to e's envelope: the 8-byte
// version it keeps from the stored value (see the write scripts in notify.go).
func versionRoom(e *Entry) int {
	if e.Version != 0 {
		return 0
	}
	return 8
}

func roomNote(e *Entry) string {
	if versionRoom(e) == 0 {
		return ""
	}
	return " (+8 kept free for a version)"
}

// versionArg renders a version for the write script: 8 big-endian bytes,
// or "" for an unversioned write.
func versionArg(v uint64) string {
	if v == 0 {
		return ""
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return string(b[:])
}

// refusals collects the keys a versioned script refused.
type refusals struct {
	s     *Store
	stale *StaleError
}

func (s *Store) newRefusals() *refusals { return &refusals{s: s} }

// collect reads one group's reply: per key 1 (written) or the stored
// version that refused it.
func (r *refusals) collect(keys []string, g slotGroup, v any, offered func(string) uint64) {
	res, _ := v.([]any)
	for j, i := range g.idx {
		if j >= len(res) {
			break
		}
		stored, ok := res[j].(string)
		if !ok || len(stored) != 8 {
			continue
		}
		if r.stale == nil {
			r.stale = &StaleError{Offered: map[string]uint64{}, Stored: map[string]uint64{}}
		}
		k := keys[i]
		r.stale.Offered[k] = offered(k)
		r.stale.Stored[k] = binary.BigEndian.Uint64([]byte(stored))
	}
}

func (r *refusals) count() int {
	if r.stale == nil {
		return 0
	}
	return len(r.stale.Stored)
}

// err is the refusal of an operation on keys as an *Error (nil if nothing
// was refused), counted in Stats.StaleRefused. Its message names the
// refused keys (the StaleError's), not all of keys.
func (r *refusals) err(op string, keys []string) error {
	if r.stale == nil {
		return nil
	}
	r.s.stale.Add(uint64(len(r.stale.Stored)))
	return newError(op, keys, ErrOperation, r.stale)
}
