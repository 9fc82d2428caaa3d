package invalidation

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/wire"
)

// Body format constants; the layout is described at encode.
const (
	magic      = 0xCE
	version    = 1
	headerLen  = 38
	macLen     = sha256.Size
	flagSigned = 1 << 0

	// MaxBodySize bounds an encoded message body. A delete whose body would
	// be larger is encoded as a clear-all instead (coarser, always correct),
	// and the decoder rejects anything larger.
	MaxBodySize = 1 << 20

	// maxPayload bounds a payload: a body and its sequence. The reader
	// drops longer ones before queueing them.
	maxPayload = MaxBodySize + wire.MaxSeqDigits
)

// opcode is what a message asks receivers to do.
type opcode uint8

// Operations.
const (
	opDelete opcode = 1 // drop the listed keys
	opClear  opcode = 2 // drop everything (Clear on some instance)
	opTags   opcode = 3 // the listed tags have new versions (InvalidateTag)
)

// InstanceID identifies a bus (an instance) in the messages it publishes.
type InstanceID [16]byte

// Errors returned by the decoder. Both are counted by the bus and never
// reach the caller.
var (
	errDecode = errors.New("invalidation: malformed message")
	errAuth   = errors.New("invalidation: unsigned or forged message")
)

// message is one decoded invalidation message. keys alias the payload string.
type message struct {
	origin    InstanceID
	partition int
	seq       uint64
	op        opcode
	unixNanos int64
	keys      []string
}

// encode builds a message body (everything but the trailing sequence,
// which the publishing script appends: see internal/wire). Keys that do not
// fit in MaxBodySize turn the message into a clear-all. The layout, all
// integers big-endian:
//
//	magic 0xCE | version 1 | op (1 delete, 2 clear, 3 tags) | flags (bit 0: signed)
//	origin instance id (16 bytes) | partition (uint16)
//	publish time, Unix ns (int64) | body length incl. the MAC (uint32)
//	key count (uint32) | per key (per tag for op 3): uvarint length, bytes
//	[signed: HMAC-SHA256 of every byte before it]
//
// TestBodyFormat pins it.
func encode(origin InstanceID, partition int, op opcode, unixNanos int64, keys []string, macKey []byte) []byte {
	size := headerLen
	if op == opDelete || op == opTags {
		for _, k := range keys {
			size += uvarintLen(uint64(len(k))) + len(k)
			if size > MaxBodySize-macLen {
				op, keys, size = opClear, nil, headerLen
				break
			}
		}
	} else {
		keys = nil
	}
	var flags byte
	if macKey != nil {
		flags |= flagSigned
		size += macLen
	}
	buf := make([]byte, headerLen, size)
	buf[0] = magic
	buf[1] = version
	buf[2] = byte(op)
	buf[3] = flags
	copy(buf[4:20], origin[:])
	binary.BigEndian.PutUint16(buf[20:22], uint16(partition))
	binary.BigEndian.PutUint64(buf[22:30], uint64(unixNanos))
	binary.BigEndian.PutUint32(buf[30:34], uint32(size))
	binary.BigEndian.PutUint32(buf[34:38], uint32(len(keys)))
	for _, k := range keys {
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
	}
	if macKey != nil {
		m := hmac.New(sha256.New, macKey)
		m.Write(buf)
		buf = m.Sum(buf)
	}
	return buf
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// maxKeptKeys bounds the decode buffer a goroutine of the bus keeps between
// messages: a rare huge message does not pin its keys slice.
const maxKeptKeys = 1024

// decode parses a payload: a body followed by the decimal sequence number
// that the publishing script appended. With a non-nil macKey every payload
// without a valid signature fails with errAuth (garbage included, so that
// unauthenticated bytes can never force an invalidation); otherwise malformed
// payloads fail with errDecode. decode never panics. The keys are appended
// to keys (pass a reused buffer, length 0, to decode without allocating; the
// result's keys then alias it); it grows by at most the number of keys,
// bounded by the payload length. The signature check allocates.
func decode(p string, macKey []byte, keys []string) (message, error) {
	var m message
	bad := errDecode
	if macKey != nil {
		bad = errAuth
	}
	if len(p) < headerLen+1 || p[0] != magic {
		return m, bad
	}
	bodyLen := int(binary.BigEndian.Uint32([]byte(p[30:34])))
	if bodyLen < headerLen || bodyLen > MaxBodySize || bodyLen >= len(p) {
		return m, bad
	}
	flags := p[3]
	end := bodyLen // end of the keys section
	if flags&flagSigned != 0 {
		if bodyLen < headerLen+macLen {
			return m, bad
		}
		end = bodyLen - macLen
	}
	if macKey != nil {
		if flags&flagSigned == 0 {
			return m, errAuth
		}
		h := hmac.New(sha256.New, macKey)
		h.Write([]byte(p[:end]))
		if !hmac.Equal(h.Sum(nil), []byte(p[end:bodyLen])) {
			return m, errAuth
		}
	}
	// Authenticated (or no key configured): from here on, errors are decode errors.
	if p[1] != version || flags&^flagSigned != 0 {
		return m, errDecode
	}
	seq, ok := wire.ParseSeq(p[bodyLen:])
	if !ok {
		return m, errDecode
	}
	m.seq = seq
	m.op = opcode(p[2])
	copy(m.origin[:], p[4:20])
	m.partition = int(binary.BigEndian.Uint16([]byte(p[20:22])))
	if m.partition >= hashslot.Count {
		return m, errDecode
	}
	m.unixNanos = int64(binary.BigEndian.Uint64([]byte(p[22:30])))
	n := binary.BigEndian.Uint32([]byte(p[34:38]))
	off := headerLen
	switch m.op {
	case opClear:
		if n != 0 {
			return m, errDecode
		}
	case opDelete, opTags:
		// Every key takes at least one byte, which bounds the allocation.
		if uint64(n) > uint64(end-off) {
			return m, errDecode
		}
		m.keys = slices.Grow(keys[:0], int(n))
		if m.keys == nil {
			m.keys = []string{} // no keys: still a delete, never confused with a clear
		}
		for i := uint32(0); i < n; i++ {
			l, w := uvarint(p[off:end])
			if w <= 0 || l > uint64(end-off-w) {
				return m, errDecode
			}
			off += w
			m.keys = append(m.keys, p[off:off+int(l)])
			off += int(l)
		}
	default:
		return m, errDecode
	}
	if off != end {
		return m, errDecode
	}
	return m, nil
}

// uvarint is binary.Uvarint over a string, without converting it.
func uvarint(s string) (uint64, int) {
	var x uint64
	var shift uint
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		b := s[i]
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				return 0, -1
			}
			return x | uint64(b)<<shift, i + 1
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	return 0, 0
}
