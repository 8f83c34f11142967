package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// FieldError is one problem with one field: its path in the YAML file
// (such as "resolvers.rules[2].priority[0]") and what is wrong with it.
type FieldError struct {
	Field string
	Msg   string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Msg }

// ValidationError lists every problem found in a config.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid config: " + e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid config, %d problems:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns each problem, for errors.As.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

type problems []FieldError

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Validate reports every problem with c at once, as a *ValidationError,
// or nil. Each problem names the field, the bad value and what is
// expected. Validate does no I/O: files such as nats.creds are opened
// when the sidecar starts. Run Complete first on a Config built in code.
func (c Config) Validate() error {
	var p problems
	c.validateDCs(&p)
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		p.add("partitions", "%d is out of range; want 1 to %d, the same in every DC", c.Partitions, MaxPartitions)
	}
	if c.DataDir == "" && vclock.ValidID(c.DC) == nil {
		p.add("data_dir", "required; Complete sets the default ./data/<dc>")
	}
	c.validateShard(&p)
	c.validateNATS(&p)
	c.validateHTTP(&p)
	c.validateResolvers(&p)
	c.validateHome(&p)
	c.validateDurability(&p)
	c.validateLimits(&p)
	c.validateConflictLog(&p)
	c.validateChanges(&p)
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// ReservedIDs are the second tokens of the sidecars' own NATS subjects
// (repl.ae.<dc>, repl.api.<dc>.*, ...); a DC with such an id would have
// its event stream repl.<dc>.<partition> overlap them. Package names owns
// them.
var ReservedIDs = names.Reserved()

func checkID(p *problems, field, id string) bool {
	if slices.Contains(ReservedIDs, id) {
		p.add(field, "%q is reserved: the sidecars' own NATS subjects repl.%s.* would overlap its event stream; choose another dc id (reserved: %s)", id, id, strings.Join(ReservedIDs, ", "))
		return false
	}
	if vclock.ValidID(id) == nil {
		return true
	}
	if id == "" || len(id) > vclock.MaxIDLen {
		p.add(field, "%q: dc ids must be 1 to %d characters", id, vclock.MaxIDLen)
	} else {
		p.add(field, "%q: dc ids may contain only letters, digits, '_' and '-'", id)
	}
	return false
}

func (c Config) validateDCs(p *problems) {
	switch n := len(c.DCs); {
	case n == 0:
		p.add("dcs", "required; list every DC of the deployment, in the same order in every DC's config")
	case n > MaxDCs:
		p.add("dcs", "%d DCs; at most %d are supported", n, MaxDCs)
	}
	seen := make(map[string]int, len(c.DCs))
	for i, dc := range c.DCs {
		field := fmt.Sprintf("dcs[%d]", i)
		if !checkID(p, field, dc) {
			continue
		}
		if j, dup := seen[dc]; dup {
			p.add(field, "%q is listed twice (also dcs[%d])", dc, j)
			continue
		}
		seen[dc] = i
	}
	inDCs := func(field, dc string) {
		if len(c.DCs) > 0 && !slices.Contains(c.DCs, dc) {
			p.add(field, "%q is not in dcs %v", dc, c.DCs)
		}
	}

	if c.DC == "" {
		p.add("dc", "required; set it to this sidecar's DC, one of dcs")
	} else if checkID(p, "dc", c.DC) {
		inDCs("dc", c.DC)
	}

	minDCs := 0
	switch c.Topology {
	case Mesh:
		minDCs = 2
	case Ring, Star:
		minDCs = 3
	default:
		p.add("topology", "%q is not a topology; want mesh, ring or star", c.Topology)
	}
	if n := len(c.DCs); n > 0 && n < minDCs {
		hint := ""
		if c.Topology != Mesh && n == 2 {
			hint = "; use topology mesh for 2 DCs"
		}
		p.add("dcs", "%v: topology %s needs at least %d DCs, got %d%s", c.DCs, c.Topology, minDCs, n, hint)
	}

	if w := time.Duration(c.ContextWait); w < 0 || w > MaxContextWait {
		p.add("context_wait", "%s: want 0 (no wait) to %s", w, MaxContextWait)
	}
	if e := time.Duration(c.ExpiryTakeover); e < 2*time.Second {
		p.add("expiry_takeover", "%s: want at least 2s; DCs report every second, and a shorter wait takes live DCs for dead, so two DCs would delete one expired value", e)
	}
	if h := time.Duration(c.HealAfter); h < 0 || h > 0 && h < 2*time.Second {
		p.add("heal_after", "%s: want 0 (healing off) or at least 2s; DCs report every second, and a shorter wait takes live DCs for dead", h)
	}
	if c.Topology == Star {
		if c.Hub == "" {
			p.add("hub", "required for topology star; name the DC that relays between the others")
		} else {
			inDCs("hub", c.Hub)
		}
		if c.StandbyHub != "" {
			if c.StandbyHub == c.Hub {
				p.add("standby_hub", "%q is the hub itself; name another DC or remove it", c.StandbyHub)
			} else {
				inDCs("standby_hub", c.StandbyHub)
			}
		}
	} else {
		if c.Hub != "" {
			p.add("hub", "%q is only used by topology star (topology is %s); remove it", c.Hub, c.Topology)
		}
		if c.StandbyHub != "" {
			p.add("standby_hub", "%q is only used by topology star (topology is %s); remove it", c.StandbyHub, c.Topology)
		}
	}
}

func (c Config) validateNATS(p *problems) {
	n := c.NATS
	embedded := n.UseEmbedded()
	if n.Embedded != nil && *n.Embedded && n.URL != "" {
		p.add("nats.embedded", "true conflicts with nats.url %q; set url to use an external server or embedded: true to run one in-process, not both", n.URL)
	}
	if n.Embedded != nil && !*n.Embedded && n.URL == "" {
		p.add("nats.url", "required when nats.embedded is false; give the address of the NATS server, e.g. nats://127.0.0.1:4222")
	}
	if n.URL != "" {
		for _, u := range strings.Split(n.URL, ",") {
			checkNATSURL(p, strings.TrimSpace(u))
		}
	}

	if !embedded && n.Listen != "" {
		p.add("nats.listen", "%q is only used by the embedded server (nats.url is set); remove it", n.Listen)
	}
	if embedded && n.Listen != "" {
		if host, ok := checkAddr(p, "nats.listen", n.Listen, true); ok && !isLoopback(host) && n.Token == "" && n.User == "" {
			p.add("nats.listen", "%q is not loopback; set nats.user and nats.password, or nats.token, so the embedded server is not open to the network", n.Listen)
		}
	}

	methods := 0
	for _, set := range []bool{n.Creds != "", n.User != "" || n.Password != "", n.Token != ""} {
		if set {
			methods++
		}
	}
	if methods > 1 {
		p.add("nats", "creds, user/password and token are alternative ways to authenticate; set only one")
	}
	if n.User != "" && n.Password == "" {
		p.add("nats.password", "required with nats.user %q", n.User)
	}
	if n.Password != "" && n.User == "" {
		p.add("nats.user", "required with nats.password")
	}
	if embedded && n.Creds != "" {
		p.add("nats.creds", "%q is only used with nats.url; protect the embedded server with user/password or token", n.Creds)
	}

	t := n.TLS
	if t.Cert != "" && t.Key == "" {
		p.add("nats.tls.key", "required with nats.tls.cert %q", t.Cert)
	}
	if t.Key != "" && t.Cert == "" {
		p.add("nats.tls.cert", "required with nats.tls.key %q", t.Key)
	}
	if t.InsecureSkipVerify && t.CA != "" {
		p.add("nats.tls.insecure_skip_verify", "true turns verification off, so nats.tls.ca %q is never used; remove one", t.CA)
	}
	if embedded && t.Enabled() {
		p.add("nats.tls", "only used with nats.url; the embedded server listens without TLS")
	}

	if n.Domain != "" && !isToken(n.Domain) {
		p.add("nats.domain", "%q: JetStream domains may contain only letters, digits, '_' and '-'", n.Domain)
	}
	n.Placement.validate(p, embedded)
}

// validate checks a stream placement: a cluster name and tags as
// nats-server accepts them, each tag once.
func (pl Placement) validate(p *problems, embedded bool) {
	if embedded && !pl.IsZero() {
		p.add("nats.placement", "only used with nats.url: the embedded server is one server, not a cluster; remove it or set nats.url to the DC's cluster")
	}
	if pl.Cluster != "" && strings.ContainsFunc(pl.Cluster, isSpaceOrWildcard) {
		p.add("nats.placement.cluster", "%q: a NATS cluster name has no spaces and no '*' or '>'; give the cluster's name as in its nats-server config (cluster { name } and gateway { name })", pl.Cluster)
	}
	seen := make(map[string]int, len(pl.Tags))
	for i, tag := range pl.Tags {
		field := fmt.Sprintf("nats.placement.tags[%d]", i)
		bare := strings.TrimPrefix(tag, "!")
		switch {
		case bare == "":
			p.add(field, "%q: a tag may not be empty; give a server tag such as region:eu-west, or !tag to exclude servers with it", tag)
			continue
		case strings.ContainsFunc(bare, isSpaceOrWildcard):
			p.add(field, "%q: a server tag has no spaces and no '*' or '>'", tag)
			continue
		}
		// nats-server compares tags without regard to case.
		key := strings.ToLower(tag)
		if j, dup := seen[key]; dup {
			p.add(field, "%q is listed twice (also tags[%d])", tag, j)
			continue
		}
		seen[key] = i
	}
}

func isSpaceOrWildcard(r rune) bool { return unicode.IsSpace(r) || r == '*' || r == '>' }

func checkNATSURL(p *problems, s string) {
	u, err := url.Parse(s)
	switch {
	case s == "":
		p.add("nats.url", "has an empty entry; separate server URLs with single commas")
	case err != nil || u.Host == "":
		p.add("nats.url", "%q is not a server URL; want e.g. nats://host:4222", s)
	case u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss":
		p.add("nats.url", "%q has scheme %q; want nats, tls, ws or wss", s, u.Scheme)
	}
}

// checkAddr checks a host:port listen address and returns its host. Port
// -1 (a random port) is allowed when random is set.
func checkAddr(p *problems, field, addr string, random bool) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add(field, "%q is not host:port, e.g. 127.0.0.1:7070", addr)
		return "", false
	}
	n, err := strconv.Atoi(port)
	if err != nil || n > 65535 || n < 0 && !(random && n == -1) {
		want := "0 to 65535"
		if random {
			want = "-1 (random) or 0 to 65535"
		}
		p.add(field, "%q has port %q; want %s", addr, port, want)
		return "", false
	}
	return host, true
}

// isLoopback reports whether host only accepts local connections. An empty
// host listens on every interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

func (c Config) validateHTTP(p *problems) {
	h := c.HTTP
	if host, ok := checkAddr(p, "http.listen", h.Listen, false); ok && !isLoopback(host) && h.Token == "" {
		p.add("http.listen", "%q is not loopback; set http.token so the API is not open to the network", h.Listen)
	}
	if h.MaxBodyBytes <= 0 {
		p.add("http.max_body_bytes", "%d must be positive", h.MaxBodyBytes)
	} else if h.MaxBodyBytes < c.Limits.MaxValueBytes {
		p.add("http.max_body_bytes", "%d is less than limits.max_value_bytes %d, so the largest values could not be written; raise it", h.MaxBodyBytes, c.Limits.MaxValueBytes)
	}
}

func resolverList() string { return strings.Join(resolverNames, ", ") }

func (c Config) validateResolvers(p *problems) {
	r := c.Resolvers
	switch {
	case !slices.Contains(resolverNames, r.Default):
		p.add("resolvers.default", "%q is not a resolver; want one of %s", r.Default, resolverList())
	case r.Default == Priority || r.Default == External:
		p.add("resolvers.default", "%q needs parameters; add a rule with prefix \"\" and resolver %s instead", r.Default, r.Default)
	}
	prefixes := make(map[string]int, len(r.Rules))
	for i, rule := range r.Rules {
		c.validateRule(p, fmt.Sprintf("resolvers.rules[%d]", i), rule)
		if j, dup := prefixes[rule.Prefix]; dup {
			p.add(fmt.Sprintf("resolvers.rules[%d].prefix", i), "%q is also the prefix of rules[%d]; each prefix gets one rule", rule.Prefix, j)
		} else {
			prefixes[rule.Prefix] = i
		}
	}
}

func (c Config) validateRule(p *problems, at string, r Rule) {
	if len(r.Prefix) > c.Limits.MaxKeyBytes {
		p.add(at+".prefix", "is %d bytes, longer than limits.max_key_bytes %d, so it matches no key", len(r.Prefix), c.Limits.MaxKeyBytes)
	}
	switch {
	case r.Resolver == "":
		p.add(at+".resolver", "required; want one of %s", resolverList())
		return
	case !slices.Contains(resolverNames, r.Resolver):
		p.add(at+".resolver", "%q is not a resolver; want one of %s", r.Resolver, resolverList())
		return
	}
	onlyFor := func(field, value, resolver string) {
		p.add(at+"."+field, "%q is only used by resolver %s (resolver is %s); remove it", value, resolver, r.Resolver)
	}

	if r.Resolver == External {
		switch {
		case r.Subject == "":
			p.add(at+".subject", "required for resolver external; the NATS subject your resolver service listens on")
		case !validSubject(r.Subject):
			p.add(at+".subject", "%q is not a NATS subject; want dot-separated tokens without spaces or wildcards", r.Subject)
		}
		switch {
		case !slices.Contains(resolverNames, r.Fallback):
			p.add(at+".fallback", "%q is not a resolver; want one of %s", r.Fallback, resolverList())
		case r.Fallback == External:
			p.add(at+".fallback", "%q cannot fall back to itself; want another resolver, e.g. siblings", r.Fallback)
		case r.Fallback == Counter || r.Fallback == Fields || r.Fallback == Set:
			p.add(at+".fallback", "%q is a typed resolver, whose keys take typed operations; an external rule's keys do not: want another resolver, e.g. siblings", r.Fallback)
		}
		if d := time.Duration(r.Timeout); d <= 0 || d > time.Minute {
			p.add(at+".timeout", "%s is out of range; want more than 0 and at most 1m", d)
		}
	} else {
		if r.Subject != "" {
			onlyFor("subject", r.Subject, External)
		}
		if r.Fallback != "" {
			onlyFor("fallback", r.Fallback, External)
		}
		if r.Timeout != 0 {
			onlyFor("timeout", r.Timeout.String(), External)
		}
	}

	if r.uses(Concat) {
		if r.Separator == "" {
			p.add(at+".separator", "required for resolver concat; Complete sets the default %q", DefaultSeparator)
		}
	} else if r.Separator != "" {
		onlyFor("separator", r.Separator, Concat)
	}

	if !r.uses(Priority) {
		if len(r.Priority) > 0 {
			p.add(at+".priority", "%v is only used by resolver priority (resolver is %s); remove it", r.Priority, r.Resolver)
		}
		return
	}
	if len(r.Priority) == 0 {
		p.add(at+".priority", "required for resolver priority; list every DC, the winner first")
		return
	}
	seen := c.checkDCList(p, at, "priority", r.Priority)
	var missing []string
	for _, dc := range c.DCs {
		if _, ok := seen[dc]; !ok {
			missing = append(missing, dc)
		}
	}
	if len(missing) > 0 {
		p.add(at+".priority", "%v leaves out %v; list every DC so the winner is never ambiguous", r.Priority, missing)
	}
}

// validSubject reports whether s is a NATS subject a request can be sent to.
func validSubject(s string) bool {
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
}

func (c Config) validateDurability(p *problems) {
	d := c.Durability
	if d.StreamReplicas < 1 || d.StreamReplicas > MaxStreamReplicas {
		p.add("durability.stream_replicas", "%d is out of range; want 1 to %d", d.StreamReplicas, MaxStreamReplicas)
	}
	if r := time.Duration(d.StreamRetention); r < time.Minute {
		p.add("durability.stream_retention", "%s is too short; want at least 1m, so a DC restored from a recent copy can take back its own writes", r)
	}
	if w := time.Duration(d.DuplicateWindow); w < time.Second {
		p.add("durability.duplicate_window", "%s is too short; want at least 1s (every stream sets its dedup window explicitly)", w)
	}
	if m := time.Duration(d.MaxClockDrift); m <= 0 {
		p.add("durability.max_clock_drift", "%s must be positive", m)
	}
}

func (c Config) validateLimits(p *problems) {
	l := c.Limits
	ok := true
	if l.MaxEventBytes < 32*kib || l.MaxEventBytes > 64*mib {
		p.add("limits.max_event_bytes", "%d is out of range; want %d (32 KiB) to %d (64 MiB)", l.MaxEventBytes, 32*kib, 64*mib)
		ok = false
	}
	if l.MaxKeyBytes < 1 || l.MaxKeyBytes > 64*kib {
		p.add("limits.max_key_bytes", "%d is out of range; want 1 to %d", l.MaxKeyBytes, 64*kib)
		ok = false
	}
	if l.MaxValueBytes < 1 {
		p.add("limits.max_value_bytes", "%d must be positive", l.MaxValueBytes)
		ok = false
	}
	if l.MaxSiblings < 2 || l.MaxSiblings > 65536 {
		p.add("limits.max_siblings", "%d is out of range; want 2 to 65536", l.MaxSiblings)
	}
	if l.MaxTxnOps < 1 || l.MaxTxnOps > 4096 {
		p.add("limits.max_txn_ops", "%d is out of range; want 1 to 4096", l.MaxTxnOps)
	}
	if l.MaxTxnBytes < 64*kib || l.MaxTxnBytes > 8*mib {
		p.add("limits.max_txn_bytes", "%d is out of range; want %d (64 KiB) to %d (8 MiB)", l.MaxTxnBytes, 64*kib, 8*mib)
	}
	if ok && l.MaxKeyBytes+l.MaxValueBytes+EnvelopeBytes > l.MaxEventBytes {
		p.add("limits.max_value_bytes", "%d plus limits.max_key_bytes %d plus %d bytes for the event's context and path exceeds limits.max_event_bytes %d; want at most %d, or raise max_event_bytes",
			l.MaxValueBytes, l.MaxKeyBytes, EnvelopeBytes, l.MaxEventBytes, l.MaxEventBytes-l.MaxKeyBytes-EnvelopeBytes)
	}
}
