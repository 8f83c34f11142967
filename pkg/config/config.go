// Package config holds one replicator sidecar's configuration: which DC it
// is, the topology it replicates along, where NATS runs, and how conflicts
// are resolved.
//
// A config is built in three steps, each of which can be used alone:
//
//	cfg := config.Default()   // every default filled in
//	// YAML decoded over it, unknown keys rejected (Parse, Load)
//	cfg.Complete()            // defaults that depend on other fields
//	err := cfg.Validate()     // every problem at once, each naming its field
//
// Load and Parse do all of it. The defaults are documented on each field and
// in configs/README.md; a test parses every example in configs/.
//
// The YAML format it reads is API (docs/INTERFACES.md and configs/*.yaml);
// the Go package is internal to the sidecar.
package config

import (
	"strings"
	"time"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// The topologies events travel along (see docs/DESIGN.md "Transport and
// topologies").
const (
	// Mesh: every DC consumes every other DC's stream; nobody forwards.
	Mesh = "mesh"
	// Ring: DC i consumes DC i-1's stream (in dcs order) and forwards.
	Ring = "ring"
	// Star: the hub consumes every leaf and forwards; leaves consume the hub.
	Star = "star"
)

// DefaultContextWait is context_wait's default.
const DefaultContextWait = 5 * time.Second

// Bounds Validate enforces.
const (
	// MaxContextWait is the longest context_wait.
	MaxContextWait = time.Minute
	// MaxDCs is the largest number of DCs a deployment may have; it matches
	// vclock.MaxEntries.
	MaxDCs = 64
	// MaxPartitions is the largest partition count.
	MaxPartitions = 1024
	// MaxStreamReplicas is JetStream's largest replica count.
	MaxStreamReplicas = 5
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// Config is one sidecar's configuration.
type Config struct {
	// DC is this sidecar's DC id; it must be one of DCs. Required.
	DC string `yaml:"dc"`
	// DCs lists every DC of the deployment, in the same order in every DC's
	// config (the ring follows this order). DC ids become NATS subject
	// tokens: 1 to 64 letters, digits, '_' or '-'. Required; at most 64.
	DCs []string `yaml:"dcs"`
	// Topology is mesh, ring or star. Default "mesh". Mesh needs at least 2
	// DCs; ring and star need at least 3 (with 2 DCs they are a mesh).
	Topology string `yaml:"topology"`
	// Hub is the star's hub. Required for star, rejected otherwise.
	Hub string `yaml:"hub"`
	// StandbyHub is the star's standby hub: while the hub is unreachable
	// (see HealAfter) it relays between the leaves as the hub does.
	// Optional, star only, and not the hub itself.
	StandbyHub string `yaml:"standby_hub"`
	// HealAfter is how long a DC may send no applied-vector report before
	// the others take it as unreachable and heal around it: in a ring the
	// next DC also consumes the nearest live predecessor, in a star the
	// standby_hub stands in for the hub. 0 turns healing off. Default 30s;
	// 0 or at least 2s (reports go out every second).
	HealAfter Duration `yaml:"heal_after"`
	// ExpiryTakeover is how long the DC that owns an expired value (the
	// origin of the version with the longest TTL) may send no
	// applied-vector report on the value's partition before another DC
	// deletes the value in its place: the first DC of dcs, in order, that
	// still reports on it. Default
	// 30s; at least 2s (reports go out every second).
	ExpiryTakeover Duration `yaml:"expiry_takeover"`
	// ContextWait bounds how long a request that carries what its client
	// has seen waits for this DC to cover it: a write or read with
	// X-Repl-Context, a read with X-Repl-Session (and the NATS API's
	// context and session fields). Past it the request answers 503 with
	// Retry-After, and a write is not made. Default 5s; 0 (answer at
	// once from what this DC holds) to 1m.
	ContextWait Duration `yaml:"context_wait"`
	// Partitions is the number of partitions keys hash into (subjects
	// repl.<dc>.<partition>). It must be equal in every DC. Default 16,
	// range 1..1024.
	Partitions int `yaml:"partitions"`
	// Shard places this sidecar among its DC's sidecars when the DC runs
	// several, each owning a disjoint set of partitions with its own
	// Pebble store (shard.go, invariant 16): "i of S", i counting from 0.
	// Default "" (one sidecar owns every partition). S > 1 needs topology
	// mesh and at most partitions shards.
	Shard string `yaml:"shard"`
	// ShardPartitions lists the partitions this shard owns, instead of the
	// default p mod S = i. Default none. Needs shard.
	ShardPartitions []int `yaml:"shard_partitions"`
	// NATS says where NATS runs and how to reach it.
	NATS NATS `yaml:"nats"`
	// DataDir holds the Pebble store (and the embedded NATS server's store
	// under data_dir/nats). Default "./data/<dc>".
	DataDir string `yaml:"data_dir"`
	// HTTP is the sidecar's API listener.
	HTTP HTTP `yaml:"http"`
	// Resolvers chooses the conflict resolver per key prefix.
	Resolvers Resolvers `yaml:"resolvers"`
	// Home gives key prefixes a home DC that executes every write to
	// them (home.go). Default none.
	Home []HomeRule `yaml:"home"`
	// Durability sets the fsync and JetStream trade-offs.
	Durability Durability `yaml:"durability"`
	// Limits bounds the size of what the sidecar accepts.
	Limits Limits `yaml:"limits"`
	// ConflictLog bounds the conflict log (conflictlog.go).
	ConflictLog ConflictLog `yaml:"conflict_log"`
	// Changes bounds the change feed (changes.go).
	Changes Changes `yaml:"changes"`
}

// NATS says where NATS runs. Either URL names an external server (cluster,
// supercluster or leafnode) or Embedded runs one in-process; not both.
type NATS struct {
	// URL is the external server's address, or a comma-separated list of
	// them (schemes nats, tls, ws, wss). Default "" (run embedded).
	URL string `yaml:"url"`
	// Embedded runs a NATS server with JetStream inside the sidecar, its
	// store under data_dir/nats. Default: true when url is empty, false
	// otherwise. Setting it to true together with url is an error.
	Embedded *bool `yaml:"embedded"`
	// Listen is the embedded server's client address. Default
	// "127.0.0.1:-1" (loopback, a random free port; -1 is nats-server's
	// "pick a port"). Only for the embedded server. A non-loopback address
	// needs user/password or token, so the server is not open to the
	// network.
	Listen string `yaml:"listen"`
	// Creds is a .creds file (user JWT and NKey seed) for URL. Default "".
	Creds string `yaml:"creds"`
	// User and Password authenticate to URL, or protect the embedded
	// server. Default "". Set both or neither.
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Token is a bearer token for URL, or protects the embedded server.
	// Default "". Use at most one of creds, user/password and token.
	Token string `yaml:"token"`
	// TLS secures the connection to URL. Not used by the embedded server.
	TLS TLS `yaml:"tls"`
	// Domain is the JetStream domain that holds the replication streams:
	// the sidecar's JetStream API calls go to $JS.<domain>.API. Set it
	// when DCs are linked by leafnodes and the streams live in a JetStream
	// reached across the leafnode link (see configs/leafnode-domain.yaml).
	// Default "" (the JetStream of the server connected to).
	Domain string `yaml:"domain"`
	// Placement says in which cluster of a NATS supercluster (clusters
	// joined by gateways), or on which tagged servers, JetStream creates
	// this DC's streams REPL_<dc> and REPL_<dc>_DLQ. Set it to the DC's
	// own region's cluster, so its stream lives where it is written and
	// other DCs' consumers read it across the gateway. Default: none
	// (JetStream places a new stream in the cluster of the server the
	// sidecar is connected to). Only with nats.url. An existing stream is
	// never moved: one that lives elsewhere stops the sidecar with an
	// error saying how to move it.
	Placement Placement `yaml:"placement"`
}

// Placement is JetStream stream placement: a cluster, server tags, or
// both.
type Placement struct {
	// Cluster is the name of the NATS cluster (its cluster and gateway
	// name) the streams are created in. Default "" (any).
	Cluster string `yaml:"cluster"`
	// Tags are server tags (nats-server's server_tags) every server that
	// holds a replica must have; "!tag" excludes servers with the tag.
	// Default none.
	Tags []string `yaml:"tags"`
}

// IsZero reports whether no placement is set.
func (p Placement) IsZero() bool { return p.Cluster == "" && len(p.Tags) == 0 }

// TLS configures the client side of a TLS connection to NATS.
type TLS struct {
	// CA is a PEM file of CAs to trust instead of the system pool. Default "".
	CA string `yaml:"ca"`
	// Cert and Key are a PEM client certificate and its key, for mutual
	// TLS. Default "". Set both or neither.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// InsecureSkipVerify turns off server certificate verification. For
	// tests only. Default false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Enabled reports whether any TLS setting is present.
func (t TLS) Enabled() bool {
	return t.CA != "" || t.Cert != "" || t.Key != "" || t.InsecureSkipVerify
}

// UseEmbedded reports whether the sidecar runs its own NATS server: when
// embedded is true, or when it is unset and url is empty.
func (n NATS) UseEmbedded() bool {
	if n.Embedded != nil {
		return *n.Embedded
	}
	return n.URL == ""
}

// HTTP is the sidecar's API listener.
type HTTP struct {
	// Listen is the API's address. Default "127.0.0.1:7070". A non-loopback
	// address needs a token.
	Listen string `yaml:"listen"`
	// Token, when set, is the bearer token every request must carry.
	// Default "" (no authentication; loopback only).
	Token string `yaml:"token"`
	// MaxBodyBytes bounds a request body. Default 1 MiB (1048576); at
	// least limits.max_value_bytes.
	MaxBodyBytes int `yaml:"max_body_bytes"`
}

// Resolver names accepted in resolvers.default and rules (see
// docs/DESIGN.md "Resolvers").
const (
	Siblings = "siblings"
	LWW      = "lww"
	Priority = "priority"
	Concat   = "concat"
	Union    = "union"
	Record   = "record"
	External = "external"
	// Counter, Fields and Set are the typed resolvers: their keys take
	// typed operations (incr; PATCH; add and remove).
	Counter = "counter"
	Fields  = "fields"
	Set     = "set"
)

// resolverNames lists the resolver names in the order error messages show.
var resolverNames = []string{Siblings, LWW, Priority, Concat, Union, Record, External, Counter, Fields, Set}

// Default values of rule fields that Complete fills in.
const (
	DefaultSeparator       = "/"
	DefaultExternalTimeout = 2 * time.Second
	DefaultFallback        = Siblings
)

// Resolvers chooses the conflict resolver for each key.
type Resolvers struct {
	// Default is the resolver for keys no rule matches. Default
	// "siblings". It cannot be priority or external, which need
	// parameters: use a rule with prefix "" for those.
	Default string `yaml:"default"`
	// Rules pick a resolver by key prefix; the longest matching prefix
	// wins, so their order does not matter. Default none.
	Rules []Rule `yaml:"rules"`
}

// Rule is the resolver for keys starting with Prefix.
type Rule struct {
	// Prefix is the key prefix the rule applies to; "" matches every key.
	// Prefixes must be distinct.
	Prefix string `yaml:"prefix"`
	// Resolver is one of siblings, lww, priority, concat, union, record,
	// external, counter, fields, set. Required.
	Resolver string `yaml:"resolver"`
	// Priority lists every DC, the winner first (priority, or external
	// with fallback priority).
	Priority []string `yaml:"priority"`
	// Separator joins concurrent values (concat, or external with fallback
	// concat). Default "/".
	Separator string `yaml:"separator"`
	// Fallback is used when the external resolver times out or fails; any
	// resolver but external and the typed ones. Default "siblings"
	// (external only).
	Fallback string `yaml:"fallback"`
	// Subject is the NATS subject of the application's resolver service
	// (external only, required there).
	Subject string `yaml:"subject"`
	// Timeout bounds one request to the resolver service. Default 2s,
	// at most 1m (external only).
	Timeout Duration `yaml:"timeout"`
}

// For returns the rule for key: the rule with the longest prefix of key,
// or a rule with the default resolver when none matches.
func (r Resolvers) For(key string) Rule {
	best := -1
	for i, rule := range r.Rules {
		if strings.HasPrefix(key, rule.Prefix) && (best < 0 || len(rule.Prefix) > len(r.Rules[best].Prefix)) {
			best = i
		}
	}
	if best >= 0 {
		return r.Rules[best]
	}
	rule := Rule{Resolver: r.Default}
	if rule.Resolver == Concat {
		rule.Separator = DefaultSeparator
	}
	return rule
}

// Durability sets how much the sidecar pays for durability.
type Durability struct {
	// Fsync makes Pebble fsync each write batch before the write is
	// acknowledged (docs/DESIGN.md, invariant 1). Default true. false
	// acknowledges writes a power failure can lose.
	Fsync bool `yaml:"fsync"`
	// StreamReplicas is the replica count of this DC's JetStream stream.
	// Default 1, range 1..5; use 3 on a three-node cluster.
	StreamReplicas int `yaml:"stream_replicas"`
	// DuplicateWindow is the stream's deduplication window for
	// Nats-Msg-Id. Default 2m; at least 1s.
	DuplicateWindow Duration `yaml:"duplicate_window"`
	// MaxClockDrift is how far ahead of the local clock a remote HLC may
	// be before the local clock refuses to take it (the event is still
	// applied; the refusal is counted). Default 1m; greater than 0.
	MaxClockDrift Duration `yaml:"max_clock_drift"`
	// StreamRetention is how long this DC's stream keeps events every
	// downstream DC has acknowledged; older ones are deleted (the last
	// event of each partition always stays). A DC whose data dir is
	// restored from a copy younger than this takes its own later writes
	// back from its stream. Default 24h; at least 1m.
	StreamRetention Duration `yaml:"stream_retention"`
}

// Limits bounds the size of keys, values and events. The defaults match
// event.DefaultLimits.
type Limits struct {
	// MaxEventBytes bounds an encoded change event; larger ones are
	// rejected. Default 1 MiB (1048576), range 32 KiB..64 MiB. Keep it
	// within the NATS server's max_payload (default 1 MiB).
	MaxEventBytes int `yaml:"max_event_bytes"`
	// MaxKeyBytes bounds a key. Default 4096, range 1..65536.
	MaxKeyBytes int `yaml:"max_key_bytes"`
	// MaxValueBytes bounds a value. Default 1 MiB - 32 KiB (1015808).
	// max_key_bytes + max_value_bytes + EnvelopeBytes may not exceed
	// max_event_bytes, so that a largest key and value still leave room
	// for the event's context and path; the default leaves 28 KiB, which
	// also covers the NATS headers under a 1 MiB max_payload.
	MaxValueBytes int `yaml:"max_value_bytes"`
	// MaxTxnOps bounds the ops of one transaction (POST /v1/txn). Default
	// 1000, range 1..4096 (what every DC accepts).
	MaxTxnOps int `yaml:"max_txn_ops"`
	// MaxTxnBytes bounds one encoded transaction, which travels as one
	// NATS message. Default 4 MiB (4194304), range 64 KiB..8 MiB. A NATS
	// server whose max_payload is lower lowers it further: the embedded
	// server allows 8 MiB, a default nats-server 1 MiB.
	MaxTxnBytes int `yaml:"max_txn_bytes"`
	// MaxSiblings bounds the siblings a local write may leave a key with:
	// a write without the read's context under the siblings or record
	// resolver keeps every value it does not supersede, and past this
	// many it is refused with 409 (Riak's max_siblings). Remote events are
	// always applied. Default 100, range 2..65536.
	MaxSiblings int `yaml:"max_siblings"`
}

// EnvelopeBytes is the room Validate keeps in max_event_bytes beyond the
// largest key and value, for the rest of the event: its causal context and
// path of up to 64 DCs, HLC, dot and framing.
const EnvelopeBytes = 16 * kib

// Default returns the configuration every file is decoded over. DC and DCs
// have no default; DataDir, NATS.Listen and NATS.Embedded depend on other
// fields and are filled in by Complete.
func Default() Config {
	return Config{
		Topology:       Mesh,
		Partitions:     16,
		HealAfter:      Duration(30 * time.Second),
		ExpiryTakeover: Duration(30 * time.Second),
		ContextWait:    Duration(DefaultContextWait),
		HTTP: HTTP{
			Listen:       "127.0.0.1:7070",
			MaxBodyBytes: mib,
		},
		Resolvers: Resolvers{Default: Siblings},
		Durability: Durability{
			Fsync:           true,
			StreamReplicas:  1,
			DuplicateWindow: Duration(2 * time.Minute),
			StreamRetention: Duration(24 * time.Hour),
			MaxClockDrift:   Duration(time.Minute),
		},
		Limits: Limits{
			MaxEventBytes: mib,
			MaxKeyBytes:   4 * kib,
			MaxValueBytes: mib - 32*kib,
			MaxTxnOps:     1000,
			MaxSiblings:   100,
			MaxTxnBytes:   4 * mib,
		},
		ConflictLog: ConflictLog{
			Retention:  Duration(DefaultConflictRetention),
			MaxEntries: DefaultConflictMaxEntries,
		},
		Changes: Changes{
			Retention: Duration(DefaultChangesRetention),
			MaxBytes:  DefaultChangesMaxBytes,
		},
	}
}

// DefaultEmbeddedListen is the embedded NATS server's default address.
const DefaultEmbeddedListen = "127.0.0.1:-1"

// Complete fills in the defaults that depend on other fields: data_dir
// from dc, nats.embedded from nats.url, nats.listen for the embedded
// server, and the separator, fallback and timeout of rules that use them.
// Load and Parse call it; call it on a Config built in code before
// Validate. It leaves fields that are set alone.
func (c *Config) Complete() {
	if c.DataDir == "" && vclock.ValidID(c.DC) == nil {
		c.DataDir = "./data/" + c.DC
	}
	if c.NATS.Embedded == nil {
		embedded := c.NATS.URL == ""
		c.NATS.Embedded = &embedded
	}
	if *c.NATS.Embedded && c.NATS.Listen == "" {
		c.NATS.Listen = DefaultEmbeddedListen
	}
	for i := range c.Resolvers.Rules {
		r := &c.Resolvers.Rules[i]
		if r.Resolver == External {
			if r.Fallback == "" {
				r.Fallback = DefaultFallback
			}
			if r.Timeout == 0 {
				r.Timeout = Duration(DefaultExternalTimeout)
			}
		}
		if r.Separator == "" && r.uses(Concat) {
			r.Separator = DefaultSeparator
		}
	}
	c.completeHome()
}

// uses reports whether the rule runs resolver name, directly or as the
// external resolver's fallback.
func (r Rule) uses(name string) bool {
	return r.Resolver == name || r.Resolver == External && r.Fallback == name
}
