package l2

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Envelope layout (version 1), all integers big-endian:
//
//	byte 0      magic 0xC7
//	byte 1      format version (1)
//	byte 2      flags: 0x01 negative entry, 0x02 has metadata,
//	            0x04 has soft expiry, 0x08 has hard expiry,
//	            0x10 tombstone (a delete that blocks late fills; payload is a nonce)
//	            0x20 has version, 0x40 has refresh time, 0x80 has tags
//	[8 bytes]   soft expiry, Unix milliseconds (if 0x04)
//	[8 bytes]   hard expiry, Unix milliseconds (if 0x08)
//	[8 bytes]   version (if 0x20): the writer's version of the value; the
//	            write scripts read it here (see the write scripts in notify.go)
//	[8 bytes]   refresh time, Unix milliseconds (if 0x40): when readers
//	            should start refreshing the value ahead of its expiry
//	[tags]      uvarint tag count, then per tag: uvarint len, name bytes,
//	            8-byte version the tag had when the value was made (if 0x80)
//	[metadata]  uvarint pair count, then per pair: uvarint len, key bytes,
//	            uvarint len, value bytes (if 0x02)
//	payload     the rest
const (
	envMagic   = 0xC7
	envVersion = 1

	flagNegative = 0x01
	flagMeta     = 0x02
	flagSoft     = 0x04
	flagHard     = 0x08
	flagTomb     = 0x10
	flagVersion  = 0x20
	flagRefresh  = 0x40
	flagTags     = 0x80
	knownFlags   = flagNegative | flagMeta | flagSoft | flagHard | flagTomb | flagVersion | flagRefresh | flagTags

	headerLen = 3
	// maxMetaPairs bounds the metadata map a decoder will build.
	maxMetaPairs = 1024
	// MaxTags bounds the tags of one entry (and what a decoder will build).
	MaxTags = 64
)

// Tag is one tag of an entry with the version the tag had (see
// Store.TagVersions) when the entry's value was made: the entry is current
// while every one of its tags still has at most that version.
type Tag struct {
	Name    string
	Version uint64
}

// Entry is one value with its envelope fields.
type Entry struct {
	// Value is the payload (the caller's encoded value). On read it aliases
	// the buffer returned by Redis; it is not shared with anyone else.
	Value []byte
	// Metadata is optional per-entry metadata, stored inline in the envelope.
	Metadata map[string]string
	// TTL is the Redis expiry of the key on write. If zero, the key does not
	// expire.
	TTL time.Duration
	// FreshFor is the soft TTL on write: after it the entry is stale but may
	// still be served by a fail-safe until TTL. If zero, the entry has no
	// soft expiry.
	FreshFor time.Duration
	// RefreshAfter is, on write, how long after the write readers should
	// start refreshing the value (refresh-ahead), read back as RefreshAt.
	// If zero, the entry has no refresh time.
	RefreshAfter time.Duration
	// Negative marks a cached "not found".
	Negative bool
	// Tombstone marks a deleted key kept briefly so that a load which began
	// before the delete cannot write its older value back (see
	// Store.SetIf). Get reports tombstones as ErrNotFound; Read returns them.
	Tombstone bool
	// Version, if not zero, is the writer's version of the value (a database
	// row version or commit timestamp). SetMany refuses to replace a stored
	// version with one that is not newer (ErrStale); an unversioned write
	// over a versioned value (Set, SetIf whose expected bytes match, a
	// tombstone) goes through and keeps the stored version. Zero means
	// unversioned.
	Version uint64

	// Tags are the entry's tags with their versions (at most MaxTags).
	Tags []Tag

	// Raw is the whole stored envelope as read (aliasing Value); pass it to
	// SetIf to replace exactly this version. Read sets it also for corrupt
	// values, with Corrupt true.
	Raw []byte
	// Corrupt marks a value Read could not decode: only Raw is set.
	Corrupt bool

	// StaleAt is the soft expiry read back (zero if none).
	StaleAt time.Time
	// ExpiresAt is the hard expiry read back (zero if none). It is written
	// from the writer's clock; instances' clocks are assumed within a few ms.
	ExpiresAt time.Time
	// RefreshAt is the refresh time read back (zero if none), from the
	// writer's clock like ExpiresAt.
	RefreshAt time.Time
}

// encode appends the envelope of e, with expiries computed from now.
func encode(dst []byte, e *Entry, now time.Time) []byte {
	flags := byte(0)
	if e.Negative {
		flags |= flagNegative
	}
	if e.Tombstone {
		flags |= flagTomb
	}
	if len(e.Metadata) > 0 {
		flags |= flagMeta
	}
	if e.FreshFor > 0 {
		flags |= flagSoft
	}
	if e.TTL > 0 {
		flags |= flagHard
	}
	if e.Version != 0 {
		flags |= flagVersion
	}
	if e.RefreshAfter > 0 {
		flags |= flagRefresh
	}
	if len(e.Tags) > 0 {
		flags |= flagTags
	}
	dst = append(dst, envMagic, envVersion, flags)
	if flags&flagSoft != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(now.Add(e.FreshFor).UnixMilli()))
	}
	if flags&flagHard != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(now.Add(e.TTL).UnixMilli()))
	}
	if flags&flagVersion != 0 {
		dst = binary.BigEndian.AppendUint64(dst, e.Version)
	}
	if flags&flagRefresh != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(now.Add(e.RefreshAfter).UnixMilli()))
	}
	if flags&flagTags != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(e.Tags)))
		for _, t := range e.Tags {
			dst = binary.AppendUvarint(dst, uint64(len(t.Name)))
			dst = append(dst, t.Name...)
			dst = binary.BigEndian.AppendUint64(dst, t.Version)
		}
	}
	if flags&flagMeta != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(e.Metadata)))
		for k, v := range e.Metadata {
			dst = binary.AppendUvarint(dst, uint64(len(k)))
			dst = append(dst, k...)
			dst = binary.AppendUvarint(dst, uint64(len(v)))
			dst = append(dst, v...)
		}
	}
	return append(dst, e.Value...)
}

// encodedLen is the exact size encode will produce.
func encodedLen(e *Entry) int {
	n := headerLen + len(e.Value)
	if e.FreshFor > 0 {
		n += 8
	}
	if e.TTL > 0 {
		n += 8
	}
	if e.Version != 0 {
		n += 8
	}
	if e.RefreshAfter > 0 {
		n += 8
	}
	if len(e.Tags) > 0 {
		n += uvarintLen(uint64(len(e.Tags)))
		for _, t := range e.Tags {
			n += uvarintLen(uint64(len(t.Name))) + len(t.Name) + 8
		}
	}
	if len(e.Metadata) > 0 {
		n += uvarintLen(uint64(len(e.Metadata)))
		for k, v := range e.Metadata {
			n += uvarintLen(uint64(len(k))) + len(k) + uvarintLen(uint64(len(v))) + len(v)
		}
	}
	return n
}

func uvarintLen(x uint64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], x)
}

// decode parses an envelope. Value aliases b. Every length is checked against
// the remaining input before anything is allocated; maxSize (if > 0) bounds
// the whole input. The returned error wraps ErrCorrupt or ErrTooLarge and
// says what was wrong.
func decode(b []byte, maxSize int) (Entry, error) {
	var e Entry
	err := decodeInto(&e, b, maxSize)
	return e, err
}

// decodeInto is decode writing the entry into *e, which it overwrites
// whole, so that a batch decodes into its reply slice without copying each
// Entry (a couple of hundred bytes) on the way. On an error *e holds what
// was decoded before it (or nothing, for a bad tag or metadata string).
func decodeInto(e *Entry, b []byte, maxSize int) error {
	*e = Entry{}
	if maxSize > 0 && len(b) > maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), maxSize)
	}
	if len(b) < headerLen {
		return fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrCorrupt, len(b), headerLen)
	}
	if b[0] != envMagic {
		return fmt.Errorf("%w: magic byte 0x%02x, want 0x%02x (written by another program?)", ErrCorrupt, b[0], envMagic)
	}
	if b[1] != envVersion {
		return fmt.Errorf("%w: envelope version %d, this build reads %d", ErrCorrupt, b[1], envVersion)
	}
	flags := b[2]
	if flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown flags 0x%02x", ErrCorrupt, flags&^knownFlags)
	}
	p := b[headerLen:]
	if flags&flagSoft != 0 {
		if len(p) < 8 {
			return fmt.Errorf("%w: truncated soft expiry", ErrCorrupt)
		}
		e.StaleAt = time.UnixMilli(int64(binary.BigEndian.Uint64(p)))
		p = p[8:]
	}
	if flags&flagHard != 0 {
		if len(p) < 8 {
			return fmt.Errorf("%w: truncated hard expiry", ErrCorrupt)
		}
		e.ExpiresAt = time.UnixMilli(int64(binary.BigEndian.Uint64(p)))
		p = p[8:]
	}
	if flags&flagVersion != 0 {
		if len(p) < 8 {
			return fmt.Errorf("%w: truncated version", ErrCorrupt)
		}
		e.Version = binary.BigEndian.Uint64(p)
		if e.Version == 0 {
			return fmt.Errorf("%w: version flag with version 0", ErrCorrupt)
		}
		p = p[8:]
	}
	if flags&flagRefresh != 0 {
		if len(p) < 8 {
			return fmt.Errorf("%w: truncated refresh time", ErrCorrupt)
		}
		e.RefreshAt = time.UnixMilli(int64(binary.BigEndian.Uint64(p)))
		p = p[8:]
	}
	if flags&flagTags != 0 {
		n, w := binary.Uvarint(p)
		if w <= 0 {
			return fmt.Errorf("%w: bad tag count", ErrCorrupt)
		}
		p = p[w:]
		// Each tag takes at least nine bytes, so a count above len(p)/9 is a lie.
		if n == 0 || n > MaxTags || n > uint64(len(p)/9) {
			return fmt.Errorf("%w: tag count %d is 0, exceeds the limit of %d or the input", ErrCorrupt, n, MaxTags)
		}
		e.Tags = make([]Tag, n)
		for i := range e.Tags {
			var name string
			var err error
			if name, p, err = readString(p); err != nil {
				*e = Entry{}
				return err
			}
			if len(p) < 8 {
				*e = Entry{}
				return fmt.Errorf("%w: truncated tag version", ErrCorrupt)
			}
			e.Tags[i] = Tag{Name: name, Version: binary.BigEndian.Uint64(p)}
			p = p[8:]
		}
	}
	if flags&flagMeta != 0 {
		n, w := binary.Uvarint(p)
		if w <= 0 {
			return fmt.Errorf("%w: bad metadata count", ErrCorrupt)
		}
		p = p[w:]
		// Each pair takes at least two bytes, so a count above len(p)/2 is a lie.
		if n > maxMetaPairs || n > uint64(len(p)/2) {
			return fmt.Errorf("%w: metadata count %d exceeds limit or input", ErrCorrupt, n)
		}
		e.Metadata = make(map[string]string, n)
		for i := uint64(0); i < n; i++ {
			var k, v string
			var err error
			if k, p, err = readString(p); err != nil {
				*e = Entry{}
				return err
			}
			if v, p, err = readString(p); err != nil {
				*e = Entry{}
				return err
			}
			e.Metadata[k] = v
		}
	}
	e.Negative = flags&flagNegative != 0
	e.Tombstone = flags&flagTomb != 0
	e.Value = p
	e.Raw = b
	return nil
}

func readString(p []byte) (string, []byte, error) {
	n, w := binary.Uvarint(p)
	if w <= 0 {
		return "", nil, fmt.Errorf("%w: bad metadata length", ErrCorrupt)
	}
	p = p[w:]
	if n > uint64(len(p)) {
		return "", nil, fmt.Errorf("%w: metadata length %d exceeds the %d bytes left", ErrCorrupt, n, len(p))
	}
	return string(p[:n]), p[n:], nil
}
