package event

import "hash/fnv"

// PartitionOf returns the partition of key among n partitions (FNV-1a 32 of
// the key, mod n). Every DC must use the same n.
func PartitionOf(key string, n int) uint32 {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return h.Sum32() % uint32(n)
}

// CheckKey says why key cannot travel in an event (it also travels in a NATS
// header): empty, longer than maxBytes, not UTF-8, or with control
// characters.
func CheckKey(key string, maxBytes int) error { return checkKey(key, maxBytes) }
