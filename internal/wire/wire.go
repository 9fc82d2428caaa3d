package wire

import (
	"context"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
)

// MaxSeqDigits bounds the decimal sequence that ends a payload.
const MaxSeqDigits = 20

// KeyPrefix is the prefix of the namespace's data keys.
func KeyPrefix(ns string) string { return ns + ":" }

// Channel is the namespace's invalidation channel.
func Channel(ns string) string { return ns + ":inv" }

// ShardChannel is the shard channel of partition p on Redis Cluster:
// Channel(ns) behind the hash tag of slot p, so that it lives in the slot
// of the partition's data and sequence keys. A write script publishes on
// it with SPUBLISH, whose message stays on the master that owns the slot
// (and its replicas) instead of crossing the cluster bus to every node as a
// PUBLISH does. A partition outside [0, 16384) is reduced modulo 16384.
func ShardChannel(ns string, p int) string { return ShardOf(Channel(ns), p) }

// ShardOf is the shard channel of partition p of the plain channel ch
// (Channel(ns)): ch behind the hash tag of slot p.
func ShardOf(ch string, p int) string { return "{" + hashslot.Tag(Partition(p)) + "}" + ch }

// SplitChannel parses a channel a subscriber received: for a shard channel
// ("{tag}NS:inv") it returns NS:inv, the slot of the tag and true; for any
// other channel, the channel itself, 0 and false.
func SplitChannel(ch string) (base string, slot int, shard bool) {
	if len(ch) == 0 || ch[0] != '{' {
		return ch, 0, false
	}
	end := strings.IndexByte(ch, '}')
	if end < 2 {
		return ch, 0, false
	}
	return ch[end+1:], hashslot.Slot(ch[:end+1]), true
}

// RouteChannel is the route channel of instance id: subscribed beside
// Channel and never published to, so that PUBSUB NUMSUB of it on the
// command connection's server tells whether the subscription is there.
func RouteChannel(ns string, id [16]byte) string {
	return Channel(ns) + routeInfix + hex.EncodeToString(id[:])
}

// RouteChannels is the ACL pattern that grants every route channel of the
// namespace (&NS:inv:route:*).
func RouteChannels(ns string) string { return Channel(ns) + routeInfix + "*" }

const routeInfix = ":route:"

// ClaimKey is the refresh claim of the data key prefix+key (prefix is
// KeyPrefix(ns)): "{tag(s)}NS:claim:key", where s is the data key's hash
// slot, so the claim lives on the node of the value it guards. The tag comes
// first, so it never starts with "NS:" (a SCAN of the namespace's data never
// sees it) and never equals a sequence or epoch key ("claim:" is not
// "inv:").
func ClaimKey(prefix, key string) string {
	return "{" + hashslot.Tag(hashslot.Slot(prefix+key)) + "}" + prefix + "claim:" + key
}

// SeqKey is the sequence key of partition p, hash-tagged to slot p. A
// partition outside [0, 16384) is reduced modulo 16384.
func SeqKey(ns string, p int) string {
	return "{" + hashslot.Tag(Partition(p)) + "}" + ns + ":inv:seq"
}

// EpochKey is the epoch key kept in slot p (0 on a standalone or
// Sentinel-managed Redis; on Redis Cluster, one slot of each master). A slot
// outside [0, 16384) is reduced modulo 16384.
func EpochKey(ns string, p int) string {
	return "{" + hashslot.Tag(Partition(p)) + "}" + ns + ":inv:epoch"
}

// Partition reduces p into [0, 16384).
func Partition(p int) int {
	p %= hashslot.Count
	if p < 0 {
		p += hashslot.Count
	}
	return p
}

// AppendSeq appends seq to body as the scripts do.
func AppendSeq(body []byte, seq uint64) []byte { return strconv.AppendUint(body, seq, 10) }

// ParseSeq parses the sequence that ends a payload (the bytes after the
// body): 1 to MaxSeqDigits ASCII digits, no sign, no leading zero, a value
// in [1, 2^64).
func ParseSeq(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > MaxSeqDigits || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return v, true
}

// Notification is what a write publishes: Body to Channel, followed by the
// new value of SeqKey.
type Notification struct {
	Channel string
	// SeqKey is the partition's sequence key; on a Cluster it must hash to
	// the slot of the data keys written with it (SeqKey does).
	SeqKey string
	Body   []byte
}

// Frame of every script. KEYS = the write's data keys, then the sequence key
// when notifying. ARGV[1] = channel ("" = no notification: no sequence key,
// nothing published), ARGV[2] = body, ARGV[3:] = the write's own arguments.
// A channel that begins with "{" is a shard channel (ShardChannel): the
// frame publishes with SPUBLISH, and if Redis refuses that (a server
// before 7.0, or an ACL without the shard channel) with PUBLISH on the
// channel without its hash tag, which every subscriber also hears, so that
// a write that ran is never left without its notification. It does the same
// when SPUBLISH reached no subscriber on this node: a slot being migrated
// runs the writes of its moved keys on the importing node (ASK), which no
// subscriber can SSUBSCRIBE the slot on before it owns it (MOVED), while
// the subscribers on the source stay healthy; and a slot that has just
// moved is subscribed on its new owner only after the subscribers' next
// look (they hear NS:inv on every master meanwhile). A namespace with no
// subscriber at all pays the plain PUBLISH.
// The write sees n (its number of data keys) and must set res, its reply; it
// may return early to publish nothing (a write that wrote no key). The
// sequence key is validated before the write runs, and nothing after the
// write can fail. string.format keeps the sequence in integer notation
// (tostring switches to exponent notation at 1e14).
const (
	prologue = `
local notify = ARGV[1] ~= ''
local n = #KEYS
local seqkey, cur
if notify then
  n = n - 1
  seqkey = KEYS[#KEYS]
  cur = redis.call('GET', seqkey)
end
local seq = 0
if cur then
  seq = tonumber(cur)
  if seq == nil or seq < 0 or seq ~= math.floor(seq) then
    return redis.error_reply('ERR nearcache: sequence key holds a non-integer: ' .. seqkey)
  end
end
local res = 0
`
	epilogue = `
if not notify then return res end
local s = string.format('%d', seq + 1)
redis.call('SET', seqkey, s)
if string.byte(ARGV[1], 1) == 123 then
  local r = redis.pcall('SPUBLISH', ARGV[1], ARGV[2] .. s)
  if r == 0 or (type(r) == 'table' and r.err) then
    local e = string.find(ARGV[1], '}', 1, true)
    redis.call('PUBLISH', string.sub(ARGV[1], e + 1), ARGV[2] .. s)
  end
  return res
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. s)
return res
`
)

// NewScript returns the script that runs write (Lua, see the frame above)
// and publishes its notification.
func NewScript(write string) *redis.Script {
	return redis.NewScript(prologue + write + epilogue)
}

// PublishScript is the frame with no write: it advances the sequence and
// publishes (a Clear's clear-all, or a notification alone).
var PublishScript = NewScript("")

// Args builds KEYS and ARGV for a script from NewScript: dataKeys, then n's
// sequence key and fields (n nil: no notification), then the write's own
// arguments. dataKeys is not modified.
func Args(dataKeys []string, n *Notification, own ...any) ([]string, []any) {
	keys := dataKeys
	argv := make([]any, 0, 2+len(own))
	if n != nil {
		keys = append(dataKeys[:len(dataKeys):len(dataKeys)], n.SeqKey)
		argv = append(argv, n.Channel, n.Body)
	} else {
		argv = append(argv, "", "")
	}
	return keys, append(argv, own...)
}

// Publish advances n's sequence key and publishes n.Body with the new
// sequence appended, atomically.
func Publish(ctx context.Context, c redis.Scripter, n Notification) error {
	keys, argv := Args(nil, &n)
	return PublishScript.Run(ctx, c, keys, argv...).Err()
}

// TagKey is the version key of tag in the namespace whose data keys start
// with prefix (KeyPrefix(ns)): "{tag(s)}NS:tag:name", where s is the hash
// slot of "NS:tag:name", so that tags spread over a Cluster's masters. Like
// ClaimKey it starts with the hash tag, so a SCAN of the namespace's data
// never sees it, and "tag:" keeps it apart from claim, sequence and epoch
// keys. It holds the tag's version in ASCII decimal; absent means 0.
func TagKey(prefix, tag string) string {
	return "{" + hashslot.Tag(TagSlot(prefix, tag)) + "}" + prefix + "tag:" + tag
}

// TagSlot is the hash slot of TagKey(prefix, tag): the partition of the
// tag's invalidation on Redis Cluster.
func TagSlot(prefix, tag string) int { return hashslot.Slot(prefix + "tag:" + tag) }

// TagTTL is how long a tag version key lives after its last invalidation
// or its last read by TagReadScript that found it past half its life. A
// key that is gone (expired, evicted, flushed) reads as a new version, as
// if the tag had been invalidated: what was stamped with the old version
// is a miss, never current (see TagReadScript).
const TagTTL = 7 * 24 * time.Hour

// luaTagNow is the tag version of "now": Redis's clock in microseconds.
const luaTagNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
`

// TagScript invalidates tags: it moves each tag version key (KEYS, all in
// one slot, then the sequence key of that slot's partition when notifying;
// ARGV[3] = TagTTL in ms) to a new version, the greater of its current
// version + 1 and Redis's clock in microseconds (TIME), so that versions
// never go back, and publishes the notification. It replies with the
// number of tags.
var TagScript = NewScript(luaTagNow + `
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  local v = 0
  if cur then
    v = tonumber(cur)
    if v == nil or v < 0 or v ~= math.floor(v) then
      return redis.error_reply('ERR nearcache: tag version key holds a non-integer: ' .. KEYS[i])
    end
  end
  v = math.max(v + 1, now)
  redis.call('SET', KEYS[i], string.format('%d', v), 'PX', ARGV[3])
end
res = n
`)

// TagReadScript returns the version of the tag whose key is KEYS[1]
// (ARGV[1] = TagTTL in ms), as a string. A missing key is created with
// Redis's clock in microseconds: it may have expired or been evicted
// after an invalidation, and a version of 0 would make entries stamped
// before that invalidation current again. A key past half its TTL gets
// its TTL back, so a tag in use does not expire.
var TagReadScript = redis.NewScript(luaTagNow + `
local cur = redis.call('GET', KEYS[1])
if cur then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) / 2 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
  return cur
end
local v = string.format('%d', now)
redis.call('SET', KEYS[1], v, 'PX', ARGV[1])
return v
`)
