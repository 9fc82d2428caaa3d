// Package hashslot computes Redis Cluster hash slots (CRC16/XMODEM of the key,
// or of its {hash tag}, modulo 16384) and finds, for every slot, a short hash
// tag that maps to it. l2 groups keys by slot with it; invalidation names one
// sequence key per slot with it, so a write script that touches a data key and
// its partition's sequence key stays single-slot.
package hashslot

import (
	"strconv"
	"strings"
	"sync"
)

// Count is the number of hash slots in a Redis Cluster.
const Count = 16384

// Slot returns the cluster hash slot of key, honouring a {hash tag}.
func Slot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	return int(crc16(key) % Count)
}

var (
	tagsOnce sync.Once
	tags     []string // tags[slot] hashes to slot; built once, read-only after
)

// Tag returns a short string t such that Slot("{"+t+"}") == slot.
// It panics only if slot is outside [0, Count), which is a programming error.
func Tag(slot int) string {
	tagsOnce.Do(buildTags)
	return tags[slot]
}

func buildTags() {
	t := make([]string, Count)
	found := 0
	var buf []byte
	for i := 0; found < Count; i++ {
		buf = strconv.AppendInt(buf[:0], int64(i), 36)
		s := int(crc16(string(buf)) % Count)
		if t[s] == "" {
			t[s] = string(buf)
			found++
		}
	}
	tags = t
}

// crc16 is CRC16/XMODEM (polynomial 0x1021, init 0), the checksum Redis
// Cluster uses for key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
