package changelog

import (
	"encoding/binary"
)

// The store's key space. Each kind of record has a one-byte prefix, so one
// Pebble instance holds key state, the outbox and the bookkeeping that must
// commit in the same batch as them.
const (
	pfxKey       = 'k' // k <user key>                      -> encoded dvv.State
	pfxTomb      = 't' // t <user key>                      -> empty: the key holds only tombstones
	pfxSeq       = 's' // s <partition u32>                 -> u64: this DC's last sequence in the partition
	pfxApplied   = 'a' // a <origin> 0x00 <partition u32>   -> u64: contiguous applied sequence
	pfxOutbox    = 'o' // o <index u64>                     -> encoded event, own or forwarded
	pfxOwn       = 'i' // i <partition u32> <seq u64>       -> u64 outbox index of an own event
	pfxConflict  = 'x' // x <id>                            -> encoded Conflict
	pfxPurged    = 'g' // g <partition u32>                 -> encoded VV: the purge frontier
	pfxMeta      = 'm' // m <name>                          -> metadata (checkpoint, hlc high water)
	pfxExpiry    = 'e' // e <expiry u64> <user key>         -> empty: the key's live value expires then (dvv.State.Expiry)
	metaCkpt     = "ckpt"
	metaHLC      = "hlc"
	metaOutboxHi = "obhi"
)

func keyKey(k string) []byte { return append([]byte{pfxKey}, k...) }

func tombKey(k string) []byte { return append([]byte{pfxTomb}, k...) }

func expiryKey(at uint64, k string) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{pfxExpiry}, at), k...)
}

func seqKey(p uint32) []byte { return binary.BigEndian.AppendUint32([]byte{pfxSeq}, p) }

func appliedKey(origin string, p uint32) []byte {
	b := append([]byte{pfxApplied}, origin...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, p)
}

func outboxKey(idx uint64) []byte { return binary.BigEndian.AppendUint64([]byte{pfxOutbox}, idx) }

func ownKey(p uint32, seq uint64) []byte {
	b := binary.BigEndian.AppendUint32([]byte{pfxOwn}, p)
	return binary.BigEndian.AppendUint64(b, seq)
}

func conflictKey(id string) []byte { return append([]byte{pfxConflict}, id...) }

func purgedKey(p uint32) []byte { return binary.BigEndian.AppendUint32([]byte{pfxPurged}, p) }

func metaKey(name string) []byte { return append([]byte{pfxMeta}, name...) }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// prefixEnd returns the first key after every key that starts with p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}
