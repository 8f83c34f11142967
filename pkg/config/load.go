package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads the YAML file at path over Default, completes it and
// validates it. Errors name the file, and each problem its field.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML over Default, rejecting unknown keys and values of
// the wrong kind, then completes and validates the result. An empty
// document decodes to Default (which does not validate: dc and dcs are
// required).
func Parse(data []byte) (Config, error) {
	cfg := Default()
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("config holds more than one YAML document; use one file per sidecar")
	}
	if doc.Kind != 0 {
		w := walker{seen: make(map[aliasUse]bool)}
		w.node(&doc, reflect.TypeFor[Config](), "")
		if len(w.probs) > 0 {
			return Config{}, &ValidationError{Problems: w.probs}
		}
		// checkNode has caught unknown keys and wrong kinds with field
		// names; the strict decoder is the safety net.
		strict := yaml.NewDecoder(bytes.NewReader(data))
		strict.KnownFields(true)
		if err := strict.Decode(&cfg); err != nil {
			return Config{}, err
		}
	}
	cfg.Complete()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	durationType    = reflect.TypeFor[Duration]()
)

// walker checks a YAML tree against the Go type it will be decoded into and
// records every unknown key and every value of the wrong kind, naming the
// field path and the line.
type walker struct {
	probs []FieldError
	// seen holds the anchored nodes already checked as a type, so that
	// aliases (and merge keys) are checked once, not expanded: a document
	// of nested aliases would otherwise take exponential time.
	seen map[aliasUse]bool
}

type aliasUse struct {
	node *yaml.Node
	t    reflect.Type
}

func (w *walker) node(node *yaml.Node, t reflect.Type, path string) {
	if node.Kind == yaml.AliasNode {
		use := aliasUse{node.Alias, t}
		if node.Alias == nil || w.seen[use] {
			return
		}
		w.seen[use] = true
		w.node(node.Alias, t, path)
		return
	}
	if node.Kind == yaml.DocumentNode {
		if len(node.Content) == 1 {
			w.node(node.Content[0], t, path)
		}
		return
	}
	probs := &w.probs
	if node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		return // leaves the default in place
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(want string) {
		field := path
		if field == "" {
			field = "(top level)"
		}
		*probs = append(*probs, FieldError{Field: field,
			Msg: fmt.Sprintf("line %d: %s is not %s", node.Line, describe(node), want)})
	}
	switch {
	case t == durationType:
		if node.Kind != yaml.ScalarNode {
			bad("a duration such as \"2m\" or \"1h30m\"")
		} else if _, err := parseDuration(node.Value); err != nil {
			bad("a duration such as \"2m\" or \"1h30m\"")
		}
		return
	case reflect.PointerTo(t).Implements(unmarshalerType):
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			bad("a mapping of keys to values")
			return
		}
		w.mapping(node, t, path)
	case reflect.Slice:
		if node.Kind != yaml.SequenceNode {
			bad("a list")
			return
		}
		for i, item := range node.Content {
			w.node(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.String:
		if node.Kind != yaml.ScalarNode {
			bad("a string")
		}
	case reflect.Bool:
		if node.Kind != yaml.ScalarNode || node.Tag != "!!bool" {
			bad("true or false")
		}
	case reflect.Int, reflect.Int64:
		if node.Kind != yaml.ScalarNode || node.Tag != "!!int" {
			bad("an integer")
		}
	}
}

func (w *walker) mapping(node *yaml.Node, t reflect.Type, path string) {
	fields := yamlFields(t)
	for i := 0; i+1 < len(node.Content); i += 2 {
		key, val := node.Content[i], node.Content[i+1]
		if key.Value == "<<" && key.Tag == "!!merge" {
			if val.Kind == yaml.SequenceNode {
				for _, m := range val.Content {
					w.node(m, t, path)
				}
			} else {
				w.node(val, t, path)
			}
			continue
		}
		field := key.Value
		if path != "" {
			field = path + "." + key.Value
		}
		ft, ok := fields[key.Value]
		if !ok {
			w.probs = append(w.probs, FieldError{Field: field, Msg: unknownKey(key, fields)})
			continue
		}
		w.node(val, ft, field)
	}
}

// yamlFields maps the yaml key of each field of struct t to its type.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

func unknownKey(key *yaml.Node, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	best, bestDist := "", 3 // suggest only close matches
	for name := range fields {
		names = append(names, name)
		if d := editDistance(key.Value, name); d < bestDist {
			best, bestDist = name, d
		}
	}
	slices.Sort(names)
	msg := fmt.Sprintf("line %d: unknown key", key.Line)
	if best != "" {
		msg += fmt.Sprintf("; did you mean %q?", best)
	}
	return msg + " (valid keys: " + strings.Join(names, ", ") + ")"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Duration is a time.Duration written in Go syntax ("2m", "1h30m") in YAML.
type Duration time.Duration

// UnmarshalYAML decodes a Go duration string.
func (d *Duration) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as \"2m\"", node.Line)
	}
	v, err := parseDuration(node.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as \"2m\" or \"1h30m\"", node.Line, node.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML encodes d in Go syntax.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String returns d in Go syntax.
func (d Duration) String() string { return time.Duration(d).String() }

// parseDuration accepts Go duration syntax; a bare "0" is zero.
func parseDuration(s string) (time.Duration, error) {
	return time.ParseDuration(strings.TrimSpace(s))
}
