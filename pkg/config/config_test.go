package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/event"
)

func ptr[T any](v T) *T { return &v }

// valid is a complete, valid three-DC mesh config that each case mutates.
func valid() Config {
	c := Default()
	c.DC = "a"
	c.DCs = []string{"a", "b", "c"}
	c.Complete()
	return c
}

// problemsOf returns the problem lines of a Validate or Parse error.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %q is not a *ValidationError", err)
	}
	var out []string
	for _, p := range ve.Problems {
		out = append(out, p.Error())
	}
	return out
}

func TestValidate(t *testing.T) {
	many := make([]string, 65)
	for i := range many {
		many[i] = "dc" + strings.Repeat("x", i%3) + string(rune('A'+i%26)) + string(rune('a'+i/26))
	}
	ext := func(r Rule) func(*Config) {
		return func(c *Config) { c.Resolvers.Rules = []Rule{r}; c.Complete() }
	}
	tests := []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{name: "valid mesh", edit: func(*Config) {}},
		{name: "valid ring", edit: func(c *Config) { c.Topology = Ring }},
		{name: "valid star", edit: func(c *Config) { c.Topology = Star; c.Hub = "b"; c.StandbyHub = "c" }},
		{name: "valid external nats", edit: func(c *Config) {
			c.NATS = NATS{URL: "tls://n1:4222, nats://n2:4222", Creds: "x.creds", TLS: TLS{CA: "ca.pem", Cert: "c.pem", Key: "k.pem"}, Domain: "core"}
			c.Complete()
		}},

		// DCs.
		{name: "dc id with a space", edit: func(c *Config) { c.DCs = []string{"a", "b", "dc 3"} },
			want: []string{`dcs[2]: "dc 3": dc ids may contain only letters, digits, '_' and '-'`}},
		{name: "empty and long dc ids", edit: func(c *Config) { c.DCs = []string{"a", "", strings.Repeat("x", 65)} },
			want: []string{
				`dcs[1]: "": dc ids must be 1 to 64 characters`,
				`dcs[2]: "` + strings.Repeat("x", 65) + `": dc ids must be 1 to 64 characters`,
			}},
		{name: "duplicate dc", edit: func(c *Config) { c.DCs = []string{"a", "b", "a"} },
			want: []string{`dcs[2]: "a" is listed twice (also dcs[0])`}},
		{name: "no dcs", edit: func(c *Config) { c.DCs = nil },
			want: []string{`dcs: required; list every DC of the deployment, in the same order in every DC's config`}},
		{name: "too many dcs", edit: func(c *Config) { c.DCs = many; c.DC = many[0] },
			want: []string{`dcs: 65 DCs; at most 64 are supported`}},
		{name: "dc not in dcs", edit: func(c *Config) { c.DC = "d" },
			want: []string{`dc: "d" is not in dcs [a b c]`}},
		{name: "dc missing", edit: func(c *Config) { c.DC = "" },
			want: []string{`dc: required; set it to this sidecar's DC, one of dcs`}},
		{name: "dc invalid", edit: func(c *Config) { c.DC = "a.b" },
			want: []string{`dc: "a.b": dc ids may contain only letters, digits, '_' and '-'`}},

		// Topology.
		{name: "unknown topology", edit: func(c *Config) { c.Topology = "tree" },
			want: []string{`topology: "tree" is not a topology; want mesh, ring or star`}},
		{name: "mesh of one", edit: func(c *Config) { c.DCs = []string{"a"} },
			want: []string{`dcs: [a]: topology mesh needs at least 2 DCs, got 1`}},
		{name: "ring of two", edit: func(c *Config) { c.Topology = Ring; c.DCs = []string{"a", "b"} },
			want: []string{`dcs: [a b]: topology ring needs at least 3 DCs, got 2; use topology mesh for 2 DCs`}},
		{name: "star without hub", edit: func(c *Config) { c.Topology = Star },
			want: []string{`hub: required for topology star; name the DC that relays between the others`}},
		{name: "hub not in dcs", edit: func(c *Config) { c.Topology = Star; c.Hub = "x" },
			want: []string{`hub: "x" is not in dcs [a b c]`}},
		{name: "reserved dc id", edit: func(c *Config) { c.DCs = []string{"a", "b", "api"} },
			want: []string{`dcs[2]: "api" is reserved: the sidecars' own NATS subjects repl.api.* would overlap its event stream; choose another dc id (reserved: ae, api, applied, home, repair, shard, shards, snap)`}},
		{name: "conflict log retention too short", edit: func(c *Config) { c.ConflictLog.Retention = Duration(time.Second) },
			want: []string{`conflict_log.retention: 1s is out of range; want 0 (keep for ever) or at least 1m`}},
		{name: "conflict log max entries negative", edit: func(c *Config) { c.ConflictLog.MaxEntries = -1 },
			want: []string{`conflict_log.max_entries: -1 is negative; want 0 (no bound) or a positive count`}},
		{name: "conflict log kept for ever", edit: func(c *Config) { c.ConflictLog = ConflictLog{} }},
		{name: "no context wait", edit: func(c *Config) { c.ContextWait = 0 }},
		{name: "context wait too long", edit: func(c *Config) { c.ContextWait = Duration(2 * time.Minute) },
			want: []string{`context_wait: 2m0s: want 0 (no wait) to 1m0s`}},
		{name: "context wait negative", edit: func(c *Config) { c.ContextWait = Duration(-time.Second) },
			want: []string{`context_wait: -1s: want 0 (no wait) to 1m0s`}},
		{name: "changes retention too short", edit: func(c *Config) { c.Changes.Retention = Duration(time.Second) },
			want: []string{`changes.retention: 1s is out of range; want 0 (no age bound) or at least 1m`}},
		{name: "changes without a size bound", edit: func(c *Config) { c.Changes = Changes{} },
			want: []string{`changes.max_bytes: 0 is out of range; want at least 1048576 (1 MiB): the feed always has a size bound`}},
		{name: "changes max bytes too small", edit: func(c *Config) { c.Changes.MaxBytes = 4096; c.Changes.Retention = Duration(-time.Minute) },
			want: []string{`changes.retention: -1m0s is out of range; want 0 (no age bound) or at least 1m`, `changes.max_bytes: 4096 is out of range; want at least 1048576 (1 MiB): the feed always has a size bound`}},
		{name: "changes kept whatever their age", edit: func(c *Config) { c.Changes.Retention = 0 }},
		{name: "healing off", edit: func(c *Config) { c.HealAfter = 0 }},
		{name: "heal after too short", edit: func(c *Config) { c.HealAfter = Duration(500 * time.Millisecond) },
			want: []string{`heal_after: 500ms: want 0 (healing off) or at least 2s; DCs report every second, and a shorter wait takes live DCs for dead`}},
		{name: "expiry takeover too short", edit: func(c *Config) { c.ExpiryTakeover = Duration(time.Second) },
			want: []string{`expiry_takeover: 1s: want at least 2s; DCs report every second, and a shorter wait takes live DCs for dead, so two DCs would delete one expired value`}},
		{name: "heal after negative", edit: func(c *Config) { c.HealAfter = Duration(-time.Second) },
			want: []string{`heal_after: -1s: want 0 (healing off) or at least 2s; DCs report every second, and a shorter wait takes live DCs for dead`}},
		{name: "standby hub is the hub", edit: func(c *Config) { c.Topology = Star; c.Hub = "a"; c.StandbyHub = "a" },
			want: []string{`standby_hub: "a" is the hub itself; name another DC or remove it`}},
		{name: "standby hub not in dcs", edit: func(c *Config) { c.Topology = Star; c.Hub = "a"; c.StandbyHub = "z" },
			want: []string{`standby_hub: "z" is not in dcs [a b c]`}},
		{name: "hub on a mesh", edit: func(c *Config) { c.Hub = "a"; c.StandbyHub = "b" },
			want: []string{
				`hub: "a" is only used by topology star (topology is mesh); remove it`,
				`standby_hub: "b" is only used by topology star (topology is mesh); remove it`,
			}},

		// Partitions and data dir.
		{name: "zero partitions", edit: func(c *Config) { c.Partitions = 0 },
			want: []string{`partitions: 0 is out of range; want 1 to 1024, the same in every DC`}},
		{name: "too many partitions", edit: func(c *Config) { c.Partitions = 1025 },
			want: []string{`partitions: 1025 is out of range; want 1 to 1024, the same in every DC`}},
		{name: "no data dir", edit: func(c *Config) { c.DataDir = "" },
			want: []string{`data_dir: required; Complete sets the default ./data/<dc>`}},

		// Shards (invariant 16).
		{name: "valid shard", edit: func(c *Config) { c.Shard = "3 of 4" }},
		{name: "valid shard partitions", edit: func(c *Config) { c.Shard = "1 of 2"; c.ShardPartitions = []int{0, 5, 7} }},
		{name: "shard not i of S", edit: func(c *Config) { c.Shard = "1/4" },
			want: []string{`shard: "1/4": want "i of S", such as "0 of 4" (i counts from 0)`}},
		{name: "shard index counts from 0", edit: func(c *Config) { c.Shard = "4 of 4" },
			want: []string{`shard: "4 of 4": the index counts from 0, so it must be 0 to 3`}},
		{name: "shard words", edit: func(c *Config) { c.Shard = "one of four" },
			want: []string{`shard: "one of four": want "i of S" with whole numbers, such as "0 of 4"`}},
		{name: "more shards than partitions", edit: func(c *Config) { c.Shard = "0 of 32" },
			want: []string{`shard: "0 of 32": 32 shards for 16 partitions would leave a shard with none; use at most 16 shards or more partitions (partitions must be equal in every DC)`}},
		{name: "shard in a ring", edit: func(c *Config) { c.Shard = "0 of 2"; c.Topology = Ring }},
		{name: "shard in a star", edit: func(c *Config) { c.Shard = "1 of 2"; c.Topology = Star; c.Hub = c.DCs[0] }},
		{name: "shard partitions without shard", edit: func(c *Config) { c.ShardPartitions = []int{1} },
			want: []string{`shard_partitions: given without shard: name this sidecar's place among its DC's sidecars with shard: "i of S" (S at least 2)`}},
		{name: "bad shard partitions", edit: func(c *Config) { c.Shard = "0 of 2"; c.ShardPartitions = []int{3, 16, 3, -1} },
			want: []string{
				`shard_partitions: partition 16 is out of range; want 0 to 15 (partitions is 16)`,
				`shard_partitions: partition 3 is listed twice`,
				`shard_partitions: partition -1 is out of range; want 0 to 15 (partitions is 16)`,
			}},

		// HTTP.
		{name: "open api without token", edit: func(c *Config) { c.HTTP.Listen = "0.0.0.0:7070" },
			want: []string{`http.listen: "0.0.0.0:7070" is not loopback; set http.token so the API is not open to the network`}},
		{name: "all interfaces without token", edit: func(c *Config) { c.HTTP.Listen = ":7070" },
			want: []string{`http.listen: ":7070" is not loopback; set http.token so the API is not open to the network`}},
		{name: "open api with token", edit: func(c *Config) { c.HTTP.Listen = "0.0.0.0:7070"; c.HTTP.Token = "t" }},
		{name: "localhost and ipv6 loopback", edit: func(c *Config) { c.HTTP.Listen = "[::1]:0" }},
		{name: "listen without port", edit: func(c *Config) { c.HTTP.Listen = "7070" },
			want: []string{`http.listen: "7070" is not host:port, e.g. 127.0.0.1:7070`}},
		{name: "listen port out of range", edit: func(c *Config) { c.HTTP.Listen = "localhost:-1" },
			want: []string{`http.listen: "localhost:-1" has port "-1"; want 0 to 65535`}},
		{name: "body smaller than values", edit: func(c *Config) { c.HTTP.MaxBodyBytes = 1000 },
			want: []string{`http.max_body_bytes: 1000 is less than limits.max_value_bytes 1015808, so the largest values could not be written; raise it`}},
		{name: "body zero", edit: func(c *Config) { c.HTTP.MaxBodyBytes = 0 },
			want: []string{`http.max_body_bytes: 0 must be positive`}},

		// NATS.
		{name: "url and embedded", edit: func(c *Config) { c.NATS.URL = "nats://h:4222"; c.NATS.Listen = "" },
			want: []string{`nats.embedded: true conflicts with nats.url "nats://h:4222"; set url to use an external server or embedded: true to run one in-process, not both`}},
		{name: "neither url nor embedded", edit: func(c *Config) { c.NATS.Embedded = ptr(false); c.NATS.Listen = "" },
			want: []string{`nats.url: required when nats.embedded is false; give the address of the NATS server, e.g. nats://127.0.0.1:4222`}},
		{name: "bad url scheme and empty entry", edit: func(c *Config) { c.NATS = NATS{URL: "http://h:4222,,nats://"} },
			want: []string{
				`nats.url: "http://h:4222" has scheme "http"; want nats, tls, ws or wss`,
				`nats.url: has an empty entry; separate server URLs with single commas`,
				`nats.url: "nats://" is not a server URL; want e.g. nats://host:4222`,
			}},
		{name: "listen with url", edit: func(c *Config) { c.NATS = NATS{URL: "nats://h:4222", Listen: "127.0.0.1:4222"} },
			want: []string{`nats.listen: "127.0.0.1:4222" is only used by the embedded server (nats.url is set); remove it`}},
		{name: "embedded open without auth", edit: func(c *Config) { c.NATS.Listen = "0.0.0.0:4222" },
			want: []string{`nats.listen: "0.0.0.0:4222" is not loopback; set nats.user and nats.password, or nats.token, so the embedded server is not open to the network`}},
		{name: "embedded open with token", edit: func(c *Config) { c.NATS.Listen = "0.0.0.0:4222"; c.NATS.Token = "t" }},
		{name: "embedded bad port", edit: func(c *Config) { c.NATS.Listen = "127.0.0.1:-2" },
			want: []string{`nats.listen: "127.0.0.1:-2" has port "-2"; want -1 (random) or 0 to 65535`}},
		{name: "two auth methods", edit: func(c *Config) { c.NATS = NATS{URL: "nats://h:4222", Creds: "x.creds", Token: "t"} },
			want: []string{`nats: creds, user/password and token are alternative ways to authenticate; set only one`}},
		{name: "user without password", edit: func(c *Config) { c.NATS = NATS{URL: "nats://h:4222", User: "u"} },
			want: []string{`nats.password: required with nats.user "u"`}},
		{name: "password without user", edit: func(c *Config) { c.NATS = NATS{URL: "nats://h:4222", Password: "p"} },
			want: []string{`nats.user: required with nats.password`}},
		{name: "creds on embedded", edit: func(c *Config) { c.NATS.Creds = "x.creds" },
			want: []string{`nats.creds: "x.creds" is only used with nats.url; protect the embedded server with user/password or token`}},
		{name: "tls cert without key", edit: func(c *Config) { c.NATS = NATS{URL: "tls://h:4222", TLS: TLS{Cert: "c.pem"}} },
			want: []string{`nats.tls.key: required with nats.tls.cert "c.pem"`}},
		{name: "tls key without cert", edit: func(c *Config) { c.NATS = NATS{URL: "tls://h:4222", TLS: TLS{Key: "k.pem"}} },
			want: []string{`nats.tls.cert: required with nats.tls.key "k.pem"`}},
		{name: "tls insecure with ca", edit: func(c *Config) {
			c.NATS = NATS{URL: "tls://h:4222", TLS: TLS{CA: "ca.pem", InsecureSkipVerify: true}}
		},
			want: []string{`nats.tls.insecure_skip_verify: true turns verification off, so nats.tls.ca "ca.pem" is never used; remove one`}},
		{name: "tls on embedded", edit: func(c *Config) { c.NATS.TLS.CA = "ca.pem" },
			want: []string{`nats.tls: only used with nats.url; the embedded server listens without TLS`}},
		{name: "bad domain", edit: func(c *Config) { c.NATS.Domain = "a.b" },
			want: []string{`nats.domain: "a.b": JetStream domains may contain only letters, digits, '_' and '-'`}},
		{name: "placement", edit: func(c *Config) {
			c.NATS = NATS{URL: "nats://h:4222", Placement: Placement{Cluster: "eu-west.1", Tags: []string{"region:eu", "!spot"}}}
		}},
		{name: "placement on embedded", edit: func(c *Config) { c.NATS.Placement.Cluster = "eu" },
			want: []string{`nats.placement: only used with nats.url: the embedded server is one server, not a cluster; remove it or set nats.url to the DC's cluster`}},
		{name: "bad placement", edit: func(c *Config) {
			c.NATS = NATS{URL: "nats://h:4222", Placement: Placement{Cluster: "eu west", Tags: []string{"a", "", "!", "b c", "x>", "A"}}}
		},
			want: []string{
				`nats.placement.cluster: "eu west": a NATS cluster name has no spaces and no '*' or '>'; give the cluster's name as in its nats-server config (cluster { name } and gateway { name })`,
				`nats.placement.tags[1]: "": a tag may not be empty; give a server tag such as region:eu-west, or !tag to exclude servers with it`,
				`nats.placement.tags[2]: "!": a tag may not be empty; give a server tag such as region:eu-west, or !tag to exclude servers with it`,
				`nats.placement.tags[3]: "b c": a server tag has no spaces and no '*' or '>'`,
				`nats.placement.tags[4]: "x>": a server tag has no spaces and no '*' or '>'`,
				`nats.placement.tags[5]: "A" is listed twice (also tags[0])`,
			}},

		// Resolvers.
		{name: "unknown default resolver", edit: func(c *Config) { c.Resolvers.Default = "newest" },
			want: []string{`resolvers.default: "newest" is not a resolver; want one of siblings, lww, priority, concat, union, record, external, counter, fields, set`}},
		{name: "default needs parameters", edit: func(c *Config) { c.Resolvers.Default = Priority },
			want: []string{`resolvers.default: "priority" needs parameters; add a rule with prefix "" and resolver priority instead`}},
		{name: "every resolver", edit: func(c *Config) {
			c.Resolvers.Rules = []Rule{
				{Prefix: "s/", Resolver: Siblings}, {Prefix: "l/", Resolver: LWW},
				{Prefix: "p/", Resolver: Priority, Priority: []string{"c", "a", "b"}},
				{Prefix: "c/", Resolver: Concat}, {Prefix: "u/", Resolver: Union}, {Prefix: "r/", Resolver: Record},
				{Prefix: "", Resolver: External, Subject: "app.resolve"},
			}
			c.Complete()
		}},
		{name: "rule without resolver", edit: func(c *Config) { c.Resolvers.Rules = []Rule{{Prefix: "x/"}} },
			want: []string{`resolvers.rules[0].resolver: required; want one of siblings, lww, priority, concat, union, record, external, counter, fields, set`}},
		{name: "rule with unknown resolver", edit: func(c *Config) { c.Resolvers.Rules = []Rule{{Prefix: "x/", Resolver: "max"}} },
			want: []string{`resolvers.rules[0].resolver: "max" is not a resolver; want one of siblings, lww, priority, concat, union, record, external, counter, fields, set`}},
		{name: "duplicate prefixes", edit: func(c *Config) {
			c.Resolvers.Rules = []Rule{{Prefix: "x/", Resolver: LWW}, {Prefix: "y/", Resolver: LWW}, {Prefix: "x/", Resolver: Union}}
		},
			want: []string{`resolvers.rules[2].prefix: "x/" is also the prefix of rules[0]; each prefix gets one rule`}},
		{name: "prefix longer than any key", edit: func(c *Config) {
			c.Limits.MaxKeyBytes = 2
			c.Resolvers.Rules = []Rule{{Prefix: "abc", Resolver: LWW}}
		},
			want: []string{`resolvers.rules[0].prefix: is 3 bytes, longer than limits.max_key_bytes 2, so it matches no key`}},
		{name: "priority without list", edit: func(c *Config) { c.Resolvers.Rules = []Rule{{Resolver: Priority}} },
			want: []string{`resolvers.rules[0].priority: required for resolver priority; list every DC, the winner first`}},
		{name: "priority list wrong", edit: func(c *Config) {
			c.Resolvers.Rules = []Rule{{Resolver: Priority, Priority: []string{"b", "x", "b"}}}
		},
			want: []string{
				`resolvers.rules[0].priority[1]: "x" is not in dcs [a b c]`,
				`resolvers.rules[0].priority[2]: "b" is listed twice (also priority[0])`,
				`resolvers.rules[0].priority: [b x b] leaves out [a c]; list every DC so the winner is never ambiguous`,
			}},
		{name: "parameters of other resolvers", edit: func(c *Config) {
			c.Resolvers.Rules = []Rule{{Resolver: LWW, Priority: []string{"a"}, Separator: "+", Subject: "s", Fallback: LWW, Timeout: Duration(time.Second)}}
		},
			want: []string{
				`resolvers.rules[0].subject: "s" is only used by resolver external (resolver is lww); remove it`,
				`resolvers.rules[0].fallback: "lww" is only used by resolver external (resolver is lww); remove it`,
				`resolvers.rules[0].timeout: "1s" is only used by resolver external (resolver is lww); remove it`,
				`resolvers.rules[0].separator: "+" is only used by resolver concat (resolver is lww); remove it`,
				`resolvers.rules[0].priority: [a] is only used by resolver priority (resolver is lww); remove it`,
			}},
		{name: "external without subject", edit: ext(Rule{Resolver: External}),
			want: []string{`resolvers.rules[0].subject: required for resolver external; the NATS subject your resolver service listens on`}},
		{name: "external bad subject", edit: ext(Rule{Resolver: External, Subject: "app.*"}),
			want: []string{`resolvers.rules[0].subject: "app.*" is not a NATS subject; want dot-separated tokens without spaces or wildcards`}},
		{name: "external falls back to itself", edit: ext(Rule{Resolver: External, Subject: "s", Fallback: External}),
			want: []string{`resolvers.rules[0].fallback: "external" cannot fall back to itself; want another resolver, e.g. siblings`}},
		{name: "external unknown fallback", edit: ext(Rule{Resolver: External, Subject: "s", Fallback: "max"}),
			want: []string{`resolvers.rules[0].fallback: "max" is not a resolver; want one of siblings, lww, priority, concat, union, record, external, counter, fields, set`}},
		{name: "external timeout too long", edit: ext(Rule{Resolver: External, Subject: "s", Timeout: Duration(2 * time.Minute)}),
			want: []string{`resolvers.rules[0].timeout: 2m0s is out of range; want more than 0 and at most 1m`}},
		{name: "external priority fallback needs list", edit: ext(Rule{Resolver: External, Subject: "s", Fallback: Priority}),
			want: []string{`resolvers.rules[0].priority: required for resolver priority; list every DC, the winner first`}},
		{name: "external concat fallback", edit: ext(Rule{Resolver: External, Subject: "s", Fallback: Concat})},
		{name: "concat without separator", edit: func(c *Config) { c.Resolvers.Rules = []Rule{{Resolver: Concat}} },
			want: []string{`resolvers.rules[0].separator: required for resolver concat; Complete sets the default "/"`}},

		// Durability and limits.
		{name: "durability out of range", edit: func(c *Config) {
			c.Durability.StreamReplicas = 6
			c.Durability.DuplicateWindow = Duration(500 * time.Millisecond)
			c.Durability.MaxClockDrift = 0
		},
			want: []string{
				`durability.stream_replicas: 6 is out of range; want 1 to 5`,
				`durability.duplicate_window: 500ms is too short; want at least 1s (every stream sets its dedup window explicitly)`,
				`durability.max_clock_drift: 0s must be positive`,
			}},
		{name: "fsync off is allowed", edit: func(c *Config) { c.Durability.Fsync = false }},
		{name: "key and value exceed event", edit: func(c *Config) { c.Limits.MaxValueBytes = c.Limits.MaxEventBytes },
			want: []string{`limits.max_value_bytes: 1048576 plus limits.max_key_bytes 4096 plus 16384 bytes for the event's context and path exceeds limits.max_event_bytes 1048576; want at most 1028096, or raise max_event_bytes`}},
		{name: "largest value that fits", edit: func(c *Config) { c.Limits.MaxValueBytes = 1028096 }},
		{name: "limits out of range", edit: func(c *Config) {
			c.Limits = Limits{MaxEventBytes: 100, MaxKeyBytes: 0, MaxValueBytes: -1, MaxTxnOps: 1000, MaxTxnBytes: 4 << 20, MaxSiblings: 1}
			c.HTTP.MaxBodyBytes = 1
		},
			want: []string{
				`limits.max_event_bytes: 100 is out of range; want 32768 (32 KiB) to 67108864 (64 MiB)`,
				`limits.max_key_bytes: 0 is out of range; want 1 to 65536`,
				`limits.max_value_bytes: -1 must be positive`,
				`limits.max_siblings: 1 is out of range; want 2 to 65536`,
			}},
		{name: "transaction limits out of range", edit: func(c *Config) { c.Limits.MaxTxnOps, c.Limits.MaxTxnBytes = 5000, 1<<10 },
			want: []string{
				`limits.max_txn_ops: 5000 is out of range; want 1 to 4096`,
				`limits.max_txn_bytes: 1024 is out of range; want 65536 (64 KiB) to 8388608 (8 MiB)`,
			}},

		// Every problem at once.
		{name: "several problems", edit: func(c *Config) {
			c.DC = "d"
			c.DCs = []string{"a", "b", "dc 3"}
			c.Topology = Star
			c.Hub = "x"
			c.HTTP.Listen = "0.0.0.0:7070"
		},
			want: []string{
				`dcs[2]: "dc 3": dc ids may contain only letters, digits, '_' and '-'`,
				`dc: "d" is not in dcs [a b dc 3]`,
				`hub: "x" is not in dcs [a b dc 3]`,
				`http.listen: "0.0.0.0:7070" is not loopback; set http.token so the API is not open to the network`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			got := problemsOf(t, c.Validate())
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Validate problems:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

func TestValidationErrorText(t *testing.T) {
	c := valid()
	c.Partitions = 0
	if got, want := c.Validate().Error(), `invalid config: partitions: 0 is out of range; want 1 to 1024, the same in every DC`; got != want {
		t.Errorf("one problem:\n got  %q\n want %q", got, want)
	}
	c.DC = "z"
	want := "invalid config, 2 problems:\n  dc: \"z\" is not in dcs [a b c]\n  partitions: 0 is out of range; want 1 to 1024, the same in every DC"
	err := c.Validate()
	if got := err.Error(); got != want {
		t.Errorf("two problems:\n got  %q\n want %q", got, want)
	}
	var fe FieldError
	if !errors.As(err, &fe) || fe.Field != "dc" {
		t.Errorf("errors.As(FieldError) = %+v, want the dc problem", fe)
	}
}

func TestDefault(t *testing.T) {
	want := Config{
		Topology:       "mesh",
		Partitions:     16,
		HealAfter:      Duration(30 * time.Second),
		ExpiryTakeover: Duration(30 * time.Second),
		ContextWait:    Duration(5 * time.Second),
		HTTP:           HTTP{Listen: "127.0.0.1:7070", MaxBodyBytes: 1 << 20},
		Resolvers:      Resolvers{Default: "siblings"},
		Durability:     Durability{Fsync: true, StreamReplicas: 1, DuplicateWindow: Duration(2 * time.Minute), MaxClockDrift: Duration(time.Minute), StreamRetention: Duration(24 * time.Hour)},
		Limits:         Limits{MaxEventBytes: 1 << 20, MaxKeyBytes: 4096, MaxValueBytes: 1<<20 - 32<<10, MaxTxnOps: 1000, MaxTxnBytes: 4 << 20, MaxSiblings: 100},
		ConflictLog:    ConflictLog{Retention: Duration(720 * time.Hour), MaxEntries: 1000000},
		Changes:        Changes{Retention: Duration(24 * time.Hour), MaxBytes: 1 << 30},
	}
	if got := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("Default() =\n %+v\nwant\n %+v", got, want)
	}
}

func TestParseMinimal(t *testing.T) {
	got, err := Parse([]byte("dc: a\ndcs: [a, b]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.DC, want.DCs = "a", []string{"a", "b"}
	want.DataDir = "./data/a"
	want.NATS = NATS{Embedded: ptr(true), Listen: "127.0.0.1:-1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse minimal =\n %+v\nwant\n %+v", got, want)
	}
	if !got.NATS.UseEmbedded() {
		t.Error("UseEmbedded() = false with no url, want true")
	}
}

func TestParseOverDefaults(t *testing.T) {
	got, err := Parse([]byte(`
dc: a
dcs: [a, b]
nats: {url: "nats://h:4222"}
durability:
  fsync: false
limits:
resolvers:
  rules:
    - {prefix: "t/", resolver: concat}
    - {prefix: "x/", resolver: external, subject: app.x}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := Default().Durability
	d.Fsync = false
	if got.Durability != d {
		t.Errorf("durability = %+v, want defaults with fsync false: %+v", got.Durability, d)
	}
	if got.Limits != Default().Limits {
		t.Errorf("empty limits: = %+v, want the defaults", got.Limits)
	}
	if got.NATS.UseEmbedded() || got.NATS.Listen != "" {
		t.Errorf("nats = %+v, want external without listen", got.NATS)
	}
	wantRules := []Rule{
		{Prefix: "t/", Resolver: Concat, Separator: "/"},
		{Prefix: "x/", Resolver: External, Subject: "app.x", Fallback: Siblings, Timeout: Duration(2 * time.Second)},
	}
	if !reflect.DeepEqual(got.Resolvers.Rules, wantRules) {
		t.Errorf("rules = %+v, want %+v", got.Resolvers.Rules, wantRules)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error, in order
	}{
		{"unknown top-level key", "dc: a\ndcs: [a, b]\ntopolgy: ring\n",
			[]string{`topolgy: line 3: unknown key; did you mean "topology"? (valid keys: changes, conflict_log, context_wait, data_dir, dc, dcs, durability, expiry_takeover, heal_after, home, http, hub, limits, nats, partitions, resolvers, shard, shard_partitions, standby_hub, topology)`}},
		{"unknown nested key", "dc: a\ndcs: [a, b]\nnats:\n  embeded: true\n",
			[]string{`nats.embeded: line 4: unknown key; did you mean "embedded"?`}},
		{"unknown key in a rule", "dc: a\ndcs: [a, b]\nresolvers:\n  rules:\n    - prefix: x\n      resolver: lww\n      prio: [a]\n",
			[]string{`resolvers.rules[0].prio: line 7: unknown key (valid keys: fallback, prefix, priority, resolver, separator, subject, timeout)`}},
		{"every unknown key at once", "dc: a\nfoo: 1\nhttp: {bar: 2}\n",
			[]string{"invalid config, 2 problems:", "foo: line 2: unknown key", "http.bar: line 3: unknown key"}},
		{"string for int", "dc: a\ndcs: [a, b]\npartitions: many\n",
			[]string{`partitions: line 3: "many" is not an integer`}},
		{"scalar for list", "dc: a\ndcs: a\n",
			[]string{`dcs: line 2: "a" is not a list`}},
		{"list for mapping", "nats: [a]\n",
			[]string{`nats: line 1: a list is not a mapping of keys to values`}},
		{"bad bool", "durability: {fsync: maybe}\n",
			[]string{`durability.fsync: line 1: "maybe" is not true or false`}},
		{"bad duration", "durability:\n  duplicate_window: 2 minutes\n",
			[]string{`durability.duplicate_window: line 2: "2 minutes" is not a duration such as "2m" or "1h30m"`}},
		{"number as duration", "durability:\n  max_clock_drift: 60\n",
			[]string{`durability.max_clock_drift: line 2: "60" is not a duration`}},
		{"duplicate key", "dc: a\ndc: b\n", []string{`mapping key "dc" already defined at line 1`}},
		{"yaml syntax", "dc: [a\n", []string{"yaml:"}},
		{"two documents", "dc: a\n---\ndc: b\n", []string{"more than one YAML document"}},
		{"empty", "", []string{"dcs: required", "dc: required"}},
		{"valid yaml, invalid config", "dc: a\ndcs: [a, b]\ntopology: ring\n",
			[]string{"topology ring needs at least 3 DCs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse(%q) = nil error, want %q", tt.yaml, tt.want)
			}
			rest := err.Error()
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("Parse error\n %s\ndoes not contain (in order) %q", err, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestParseMergeKeys(t *testing.T) {
	_, err := Parse([]byte(`
base: &base {resolver: lww}
`))
	if err == nil || !strings.Contains(err.Error(), "base: line 2: unknown key") {
		t.Fatalf("anchor at the top level: err = %v, want unknown key base", err)
	}
	cfg, err := Parse([]byte(`
dc: a
dcs: [a, b]
resolvers:
  rules:
    - &lww {prefix: "x/", resolver: lww}
    - {<<: *lww, prefix: "y/"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Resolvers.For("y/1").Resolver; got != LWW {
		t.Errorf("merged rule resolver = %q, want lww", got)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.HasPrefix(err.Error(), "read config: ") {
		t.Errorf("Load(missing) err = %v, want read config: ...", err)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("dc: a\ndcs: [a, b]\npartitions: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + ": invalid config: partitions: 0 is out of range"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load(bad) err = %v, want prefix %q", err, want)
	}
}

func TestResolversFor(t *testing.T) {
	r := Resolvers{Default: Concat, Rules: []Rule{
		{Prefix: "a/b/", Resolver: LWW},
		{Prefix: "a/", Resolver: Union},
		{Prefix: "a/b/c/", Resolver: Record},
	}}
	for key, want := range map[string]string{
		"a/b/c/d": Record, "a/b/x": LWW, "a/x": Union, "a": Concat, "": Concat,
	} {
		if got := r.For(key).Resolver; got != want {
			t.Errorf("For(%q) = %q, want %q", key, got, want)
		}
	}
	if got := r.For("zzz").Separator; got != "/" {
		t.Errorf("default concat separator = %q, want /", got)
	}
}

// TestExampleConfigs parses and validates every file in configs/, and checks
// that configs/README.md lists each file and documents every key.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found %d example configs in configs/, want at least 10", len(files))
	}
	readme, err := os.ReadFile("../../configs/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.DC == "" || len(cfg.DCs) < 2 {
				t.Errorf("dc %q, dcs %v: want a DC of a multi-DC deployment", cfg.DC, cfg.DCs)
			}
			if !strings.Contains(string(readme), "`"+filepath.Base(f)+"`") {
				t.Errorf("configs/README.md does not list `%s`", filepath.Base(f))
			}
		})
	}
	for _, key := range keyPaths(reflect.TypeFor[Config](), "") {
		if !strings.Contains(string(readme), "`"+key+"`") {
			t.Errorf("configs/README.md does not document `%s`", key)
		}
	}
}

// keyPaths lists every YAML key path of t, such as "nats.tls.ca" and
// "resolvers.rules[].prefix".
func keyPaths(t reflect.Type, prefix string) []string {
	var out []string
	for name, ft := range yamlFields(t) {
		path := prefix + name
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, keyPaths(ft, path+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, keyPaths(ft.Elem(), path+"[].")...)
		default:
			out = append(out, path)
		}
	}
	return out
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../../configs/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("dc: a\ndcs: [a, b]\nresolvers: {rules: [{<<: {resolver: lww}}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
	})
}

// TestParseAliasBomb checks that nested aliases are not expanded: the
// document below would name 9^8 rules if they were.
func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("dc: a\ndcs: [a, b]\nresolvers:\n  rules:\n    - &r0 {prefix: x, resolver: lww}\n")
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&b, "    - &r%d {<<: [", i)
		for j := 0; j < 9; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*r%d", i-1)
		}
		fmt.Fprintf(&b, "], prefix: p%d}\n", i)
	}
	done := make(chan error, 1)
	go func() { _, err := Parse([]byte(b.String())); done <- err }()
	select {
	case err := <-done:
		t.Logf("Parse: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Parse of nested aliases did not finish in 10s")
	}
}

// TestLimitsMatchEventDefaults keeps the config's default limits equal to
// the codec's, so a DC running with defaults accepts what it can decode.
func TestLimitsMatchEventDefaults(t *testing.T) {
	d, e := Default().Limits, event.DefaultLimits()
	got := [3]int{d.MaxEventBytes, d.MaxKeyBytes, d.MaxValueBytes}
	want := [3]int{e.MaxEventBytes, e.MaxKeyBytes, e.MaxValueBytes}
	if got != want {
		t.Errorf("config limits (event, key, value) = %v, event.DefaultLimits = %v", got, want)
	}
	if e.MaxDCs != MaxDCs {
		t.Errorf("MaxDCs = %d, event.DefaultLimits().MaxDCs = %d", MaxDCs, e.MaxDCs)
	}
}
